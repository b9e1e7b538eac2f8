"""Where a run is built: mesh, model config, initial params (a checkpoint or random), norm stats,
tokenizer and actor, the same for pirl.train, pirl.eval, pirl.sft and pirl.plan.

Params are ``{"model": π0 params (openpi's tree), **heads}`` (``rl.flow.init_heads``: the critic
and any other policy heads), on the host until a caller places them on the mesh (``place``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

import jax
import numpy as np

from pirl import checkpoints, experiment, rollout, runstate, sharding
from pirl.models import pi0
from pirl.models import tokenizer as tok
from pirl.rl import flow
from pirl.rl import update as upd


@dataclasses.dataclass
class Setup:
    """Everything built once per run from an Experiment."""

    exp: experiment.Experiment
    mesh: jax.sharding.Mesh
    model: pi0.Pi0Config
    params: dict  # {"model", heads}: host or device arrays, before sharding
    norm_stats: Mapping
    tokenizer: tok.PaligemmaTokenizer


# Compiled once per config: eager initialization dispatches thousands of small ops (~3× slower
# on CPU, and every process of a multi-host job pays it).
_init_model = jax.jit(pi0.init_params, static_argnums=0)
_init_heads = jax.jit(flow.init_heads, static_argnums=(0, 1))


def init_heads(exp: experiment.Experiment, model: pi0.Pi0Config, key: jax.Array) -> dict:
    """The policy's heads for ``model``, random (float32) from ``fold_in(key, 2)``."""
    return _init_heads(exp.policy, model, jax.random.fold_in(key, 2))


def init_params(exp: experiment.Experiment, model: pi0.Pi0Config, key: jax.Array) -> dict:
    """Random float32 ``{"model", heads}``: the model from ``fold_in(key, 1)``, heads as init_heads."""
    return {"model": _init_model(model, jax.random.fold_in(key, 1))} | init_heads(exp, model, key)


def build(exp: experiment.Experiment, devices=None) -> Setup:
    """Mesh, model config, initial params (checkpoint or random), norm stats, tokenizer.

    With model.checkpoint (an openpi checkpoint, local or remote) the model config's sizes come
    from the checkpoint's shapes and the rest from model.*; the params keep the stored dtype, and
    the norm stats are the checkpoint's (model.asset_id, or its only asset). Without one, params
    are random from train.seed and the norm stats the identity."""
    mesh = sharding.make_mesh(exp.mesh, devices)
    model = exp.model.pi0_config()
    key = jax.random.key(exp.train.seed)
    if exp.model.checkpoint:
        overrides = {f: getattr(model, f) for f in ("pi05", "action_horizon", "max_token_len", "dtype", "remat")}
        model, model_params = checkpoints.load_openpi(exp.model.checkpoint, **overrides)
        norm_stats = checkpoints.load_norm_stats(exp.model.checkpoint, exp.model.asset_id or None)
        params = {"model": model_params} | init_heads(exp, model, key)
    else:
        params = init_params(exp, model, key)
        # Env states and actions never exceed the model's padded width.
        norm_stats = rollout.identity_norm_stats(model.action_dim, model.action_dim)
    tokenizer = tok.load_tokenizer(exp.model.tokenizer, model.vocab_size)
    return Setup(exp, mesh, model, params, norm_stats, tokenizer)


def make_actor(setup: Setup, spec, *, action_chunk: int | None = None) -> rollout.Actor:
    """The rollout Actor for envs of ``spec`` (their cameras and action size); ``action_chunk``
    overrides how many actions of each sampled chunk the envs execute."""
    transform = experiment.env_transform(setup.exp, tuple(c.name for c in spec.cameras), spec.action_dim)
    if action_chunk:
        transform = dataclasses.replace(transform, action_chunk=action_chunk)
    return rollout.Actor(setup.exp.policy, setup.model, transform, setup.norm_stats, setup.tokenizer, setup.mesh)


def float32_model_params(exp: experiment.Experiment, seed: int) -> tuple[pi0.Pi0Config, dict]:
    """(model config, float32 π0 params) for supervised fitting: random from ``key(seed)`` without
    model.checkpoint, else the checkpoint's, checked against model.*'s architecture.

    Raises checkpoints.CheckpointError naming the first parameter whose path or shape differs."""
    config = exp.model.pi0_config()
    if not exp.model.checkpoint:
        return config, _init_model(config, jax.random.key(seed))
    _, params = checkpoints.load_openpi(exp.model.checkpoint)
    checkpoints.validate_params(params, pi0.param_shapes(config), check_dtype=False)
    # AdamW updates are far below bfloat16's resolution: train a float32 copy.
    return config, jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def place(setup: Setup, tree):
    """``tree`` (params or a TrainState) on the run's mesh, laid out by the FSDP rule."""
    return jax.device_put(tree, sharding.param_shardings(setup.mesh, tree, setup.exp.mesh.fsdp_min_bytes))


def restore_run_params(setup: Setup, workdir: str | os.PathLike) -> tuple[dict, dict] | None:
    """(params, metadata) of the latest run checkpoint in <workdir>/checkpoints, restored onto the
    mesh's shardings; None when the run has saved none. The metadata holds the iteration."""
    ckpt_dir = pathlib.Path(workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    ckpt = runstate.Checkpointer(ckpt_dir)
    try:
        if ckpt.latest() is None:
            return None
        # Restored onto the mesh's shardings directly: on several hosts a committed single-device
        # copy could not be moved onto the global mesh afterwards.
        state, meta = ckpt.restore(place(setup, upd.init_train_state(setup.exp.rl, setup.params)))
        return state.params, meta
    finally:
        ckpt.close()
