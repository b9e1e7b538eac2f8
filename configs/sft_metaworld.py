"""Few-shot SFT of π0 (or π0.5) on MetaWorld scripted-expert demos, the checkpoint RL starts from.

    python -m pirl.sft --config=configs/sft_metaworld.py --workdir=runs/sft_mt50
    python -m pirl.sft --config=configs/sft_metaworld.py:task=reach-v3,pi05 --workdir=runs/sft_reach
    python -m pirl.sft --config=configs/sft_metaworld.py:shrink --workdir=/tmp/sft_tiny   # laptop CPU

Arguments: task=<MetaWorld benchmark or task> (default MT50), pi05, shrink. The output directory
is an openpi checkpoint: pass it to pirl.train as --config.model.checkpoint=<workdir>.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from configs import common
from pirl import experiment


def _fit_minibatch(c: ml_collections.ConfigDict) -> None:
    """Whole-rollout minibatches, so the section checks hold whatever the episode length."""
    samples = c.train.rollout_epochs * c.env.num_envs * math.ceil(c.env.max_steps / c.policy.num_action_chunks)
    c.rl.update(minibatch_size=samples, micro_batch_size=samples)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"task": (), "pi05": (), "shrink": ()})
    c = common.defaults()
    c.sft = ml_collections.ConfigDict(dataclasses.asdict(experiment.SFTSection()))
    pi05 = bool(args.get("pi05"))
    common.set_model(c, pi05)
    c.model.checkpoint = f"gs://openpi-assets/checkpoints/{'pi05' if pi05 else 'pi0'}_base"
    c.model.action_horizon = 10 if pi05 else 50
    # The observations of configs/metaworld_ppo.py, which starts from this checkpoint: 16 no-op steps.
    c.env.update(sim="metaworld", task=args.get("task", "MT50"), max_steps=150, image_size=(224, 224), warmup_steps=16)
    c.sft.update(num_demos=250, holdout_demos=10, steps=3000, batch_size=32, asset_id="metaworld")
    if args.get("shrink"):
        common.shrink(c)
        # Scripted experts need more than shrink's 20 steps; reach is the quickest task to demo.
        c.env.update(task=args.get("task", "reach-v3"), max_steps=100)
        if pi05 and c.model.discrete_state_input == "on":  # room for the binned state
            c.model.max_token_len = 64
        c.sft.update(num_demos=4, holdout_demos=1, steps=100, batch_size=16, lr=1e-3, warmup_steps=10, log_every=20)
    _fit_minibatch(c)
    return c
