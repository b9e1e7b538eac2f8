"""Pieces shared by the config files: every section with its defaults, the model sizes, and the
shrink switch that makes any recipe run on a laptop CPU.

A config file builds on ``defaults()`` so that every field of every section exists and can be
overridden from the command line (``--config.rl.lr=1e-5``); ``pirl.cli`` turns the sections into
frozen dataclasses.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from pirl import cli


def _section(cls) -> ml_collections.ConfigDict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return ml_collections.ConfigDict(out)


def defaults() -> ml_collections.ConfigDict:
    """Every section of an experiment with its dataclass defaults."""
    return ml_collections.ConfigDict({name: _section(cls) for name, cls in cli.SECTIONS.items()})


def parse_arg(arg: str | None, allowed: dict[str, tuple]) -> dict[str, str | bool]:
    """'suite=spatial,pi05,shrink' → {"suite": "spatial", "pi05": True, "shrink": True}; every key
    must be in ``allowed`` (key → valid values, () for a flag or any value)."""
    out: dict[str, str | bool] = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if key not in allowed:
            raise ValueError(f"unknown config argument {key!r}; valid: {sorted(allowed)}")
        if value and allowed[key] and value not in allowed[key]:
            raise ValueError(f"config argument {key}={value!r} not in {allowed[key]}")
        out[key] = value or True
    return out


def set_model(c: ml_collections.ConfigDict, pi05: bool) -> None:
    """Full-size π0 / π0.5 (PaliGemma 2B + Gemma 300M expert, SigLIP So400m/14, 224² images)."""
    c.model.pi05 = pi05
    c.model.tokenizer = "paligemma"
    # π0.5's prompt without the binned state, BOS + instruction + "\n", as the starting checkpoints
    # were trained: openpi's pi05_libero (src/openpi/training/config.py) and the reference's
    # pi05_libero, pi05_maniskill and pi05_metaworld (RLinf rlinf/models/embodiment/openpi/
    # dataconfig/__init__.py) all set discrete_state_input=False. "on" puts it back.
    c.model.discrete_state_input = "off" if pi05 else ""
    if pi05:
        # π0.5 reads the critic off the VLM's prefix outputs (the reference's π0.5 PPO files set
        # actor.model.openpi.value_after_vlm: True). Each recipe sets the critic's hidden sizes.
        c.policy.value_source = "vlm" if c.policy.value_source != "none" else "none"


def reference_ppo_update(c: ml_collections.ConfigDict) -> None:
    """The update settings every reference PPO recipe shares (RLinf examples/embodiment/config/
    {libero,metaworld,maniskill}_*_ppo_openpi*.yaml); each recipe sets its own rates, batch sizes,
    epochs and grad clip."""
    c.rl.update(
        trainable="expert_only",  # model/pi0*.yaml openpi.train_expert_only: True
        clip_eps=0.2,  # algorithm.clip_ratio_low / clip_ratio_high: 0.2
        value_clip=0.2,  # algorithm.value_clip: 0.2
        huber_delta=10.0,  # algorithm.huber_delta: 10.0
        b1=0.9,  # actor.optim.adam_beta1: 0.9
        b2=0.95,  # actor.optim.adam_beta2: 0.95
        eps=1e-8,  # actor.optim.adam_eps: 1.0e-08
        # actor.optim.weight_decay: 0.01 (the ManiSkill files omit it: RLinf's FSDP manager defaults it to 1e-2)
        weight_decay=0.01,
    )


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same recipe at laptop scale: tiny model (random init, embedded tokenizer, 28² images),
    2 envs per worker on 2 workers, 64² renders (MetaWorld's without shadows), 20-step episodes,
    whole-rollout minibatches."""
    c.model.update(
        paligemma_variant="tiny",
        action_expert_variant="tiny",
        vision_variant="tiny/14",
        image_size=28,
        action_horizon=max(8, c.policy.num_action_chunks),
        max_token_len=32,
        vocab_size=1024,
        dtype="float32",
        remat=False,
        checkpoint="",
        tokenizer="embedded",
    )
    c.policy.value_hidden = (32, 32)
    group = max(c.env.group_size, 1)
    c.env.update(num_envs=max(4, 2 * group), num_workers=2, image_size=(64, 64), max_steps=20, num_trials=2)
    c.env.fast_render = c.env.sim == "metaworld"  # no shadows: a CPU renders ~10x faster
    c.env.num_stages = min(c.env.num_stages, 2)
    c.train.update(rollout_epochs=1, iterations=2, save_every=1, eval_every=0, progress=False)
    chunks = -(-c.env.max_steps // c.policy.num_action_chunks)
    samples = c.env.num_envs * chunks
    c.rl.update(minibatch_size=samples, micro_batch_size=samples, update_epochs=1)
    c.eval.update(num_envs=4, num_workers=2, num_trials=1, max_steps=20)
    c.mesh.update(data=-1, fsdp=1)
    return c
