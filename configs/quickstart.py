"""The quickstart: few-shot SFT of a small π0 on MetaWorld scripted demos, then PPO with Flow-SDE.

    python -m pirl.train --config=configs/quickstart.py --workdir=runs/quickstart

Runs on a 2-core CPU with no downloads (random-init small model, embedded tokenizer): collects
scripted-expert demos of handle-press-v3, fits the model to them (the "few-shot SFT"), evaluates, then
improves it online with PPO; eval success, TensorBoard logs, the learning curve and eval videos land
in the workdir. On a GPU the same command runs faster; `:gpu` uses a larger model and more envs.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from configs import common
from pirl import experiment


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"gpu": ()})
    c = common.defaults()
    c.sft = ml_collections.ConfigDict(dataclasses.asdict(experiment.SFTSection()))
    c.model.update(
        paligemma_variant="tiny",
        action_expert_variant="tiny",
        vision_variant="tiny/14",
        image_size=56,
        action_horizon=10,
        max_token_len=24,
        vocab_size=1024,
        action_dim=4,  # MetaWorld's own: no padded dims for a small model to spend its loss on
        dtype="float32",
        remat=False,
        tokenizer="embedded",
    )
    # handle-press: the handle sits at one of 50 places on the table; the scripted expert (and the
    # policy fitted to it) slows down near each waypoint, so the SFT policy presses the handle in
    # 14-40 steps (median 34). A 30-step limit leaves it at ~40 % success, and PPO raises it by
    # learning to move faster and more directly to where the handle is.
    c.env.update(
        sim="metaworld",
        task="handle-press-v3",
        num_envs=32,
        num_workers=2,
        max_steps=30,
        num_trials=50,
        image_size=(64, 64),
        fast_render=True,  # no shadows: ~10x faster renders on a CPU
    )
    c.policy.update(num_steps=4, noise_level=0.5, num_action_chunks=5, action_env_dim=4, value_hidden=(64, 64))
    # 32 envs × 6 chunk steps = 192 samples per rollout: two minibatches of 96, 4 epochs. Only the
    # action expert and heads train: full fine-tuning of the small VLM unlearned the SFT.
    c.rl.update(
        trainable="expert_only",
        lr=3e-4,
        value_lr=1e-3,
        weight_decay=0.0,
        update_epochs=4,
        minibatch_size=96,
        micro_batch_size=96,
    )
    c.train.update(iterations=120, eval_every=10, save_every=10, videos=True, video_every=0)
    # Every one of the 50 goals once, deterministically; 10 envs keep the workers' memory small.
    c.eval.update(num_envs=10, num_workers=2, num_trials=50, videos=True)
    c.sft.update(
        num_demos=16,
        holdout_demos=2,
        action_noise=0.1,
        demo_max_steps=100,  # the experts' own pace, not the RL time limit
        steps=600,
        batch_size=32,
        lr=1e-3,
        warmup_steps=20,
        augment=False,
        log_every=100,
        asset_id="metaworld",
    )
    if args.get("gpu"):
        c.model.update(paligemma_variant="dummy", action_expert_variant="dummy", vision_variant="mu/14", image_size=112)
        c.env.update(num_envs=64, num_workers=8)
        c.rl.update(minibatch_size=192, micro_batch_size=96)  # 64 envs × 6 chunk steps = 2 minibatches
    return c
