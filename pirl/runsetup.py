"""Where a run is built: mesh, model config, initial params (a checkpoint or random), norm stats,
tokenizer and actor, the same for pirl.train, pirl.eval, pirl.sft and pirl.plan.

Params are ``{"model": π0 params (openpi's tree), **heads}`` (``rl.flow.init_heads``: the critic
and any other policy heads), on the host until a caller places them on the mesh (``place``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pirl import checkpoints, envsetup, experiment, rollout, runstate, sharding
from pirl.models import pi0
from pirl.models import tokenizer as tok
from pirl.rl import flow
from pirl.rl import update as upd

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Setup:
    """Everything built once per run from an Experiment.

    ``exp`` is the experiment as run: with model.checkpoint, its model section follows what the
    checkpoint's files say (sizes, horizon and prompt conventions where recorded)."""

    exp: experiment.Experiment
    mesh: jax.sharding.Mesh
    model: pi0.Pi0Config
    params: dict  # {"model", heads}: host or device arrays, before sharding
    norm_stats: Mapping
    tokenizer: tok.PaligemmaTokenizer
    # What model.checkpoint held, less its params (in ``params``); None for a random start.
    start: checkpoints.Checkpoint | None = None


# Compiled once per config: eager initialization dispatches thousands of small ops (~3× slower
# on CPU, and every process of a multi-host job pays it).
_init_model = jax.jit(pi0.init_params, static_argnums=0)
_init_heads = jax.jit(flow.init_heads, static_argnums=(0, 1))
# The model fields a checkpoint's files can set (ModelSpec names).
_FROM_CHECKPOINT = (
    "pi05",
    "paligemma_variant",
    "action_expert_variant",
    "vision_variant",
    "image_size",
    "action_horizon",
    "max_token_len",
    "vocab_size",
    "action_dim",
    "discrete_state_input",
)
IDENTITY_ASSET = "identity"  # the asset id a random start's (identity) norm stats are recorded under


def init_heads(exp: experiment.Experiment, model: pi0.Pi0Config, key: jax.Array) -> dict:
    """The policy's heads for ``model``, random (float32) from ``fold_in(key, 2)``."""
    return _init_heads(exp.policy, model, jax.random.fold_in(key, 2))


def init_params(exp: experiment.Experiment, model: pi0.Pi0Config, key: jax.Array) -> dict:
    """Random float32 ``{"model", heads}``: the model from ``fold_in(key, 1)``, heads as init_heads."""
    return {"model": _init_model(model, jax.random.fold_in(key, 1))} | init_heads(exp, model, key)


def float32(tree):
    """Every floating leaf as a float32 numpy array: trainable state never takes a file's dtype
    (AdamW steps are far below bfloat16's resolution near 1: 0.5 − 5e-6 rounds back to 0.5)."""
    # jnp's issubdtype knows bfloat16 (numpy's does not).
    return jax.tree.map(lambda x: np.asarray(x, np.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def load_checkpoint(exp: experiment.Experiment, *, step: int | None = None) -> checkpoints.Checkpoint:
    """model.checkpoint loaded whatever its layout; where no file records a field, model.*'s
    value is used."""
    spec = exp.model
    settings = {
        "action_horizon": spec.action_horizon,
        "max_token_len": spec.max_token_len or None,
        "discrete_state_input": {"on": True, "off": False}.get(spec.discrete_state_input),
        "dtype": spec.dtype,
        "remat": spec.remat,
    }
    return checkpoints.load(
        spec.checkpoint, spec.pi0_config(), settings=settings, asset_id=spec.asset_id, step=step, seed=exp.train.seed
    )


def checkpoint_model(exp: experiment.Experiment, start: checkpoints.Checkpoint) -> experiment.Experiment:
    """``exp`` with the model section the checkpoint's files give; one log line per field that
    differs from the config (the file wins: it says what the weights were trained as)."""
    c = start.config
    found = {f: getattr(c, f) for f in _FROM_CHECKPOINT}
    found["discrete_state_input"] = "on" if c.discrete_state_input else "off"
    configured = exp.model
    for field, value in found.items():
        old = getattr(configured, field)
        if field == "discrete_state_input" and old == "":
            old = "on" if configured.pi0_config().discrete_state_input else "off"
        if field == "max_token_len" and not old:
            old = configured.pi0_config().max_token_len
        if field == "vocab_size" and not old:
            old = configured.pi0_config().vocab_size
        if old != value:
            by = start.recorded.get(field, (None, "its weights' shapes"))[1]
            logger.info("model.%s = %s from %s (%s; the config said %s)", field, value, start.source, by, old)
    model = dataclasses.replace(configured, **found, asset_id=start.asset_id)
    return dataclasses.replace(exp, model=model)


def build(exp: experiment.Experiment, devices=None) -> Setup:
    """Mesh, model config, initial params (checkpoint or random), norm stats, tokenizer.

    With model.checkpoint (any layout pirl.checkpoints.load recognises, local or remote) the model
    follows the checkpoint (``checkpoint_model``), its params are cast to float32, the heads it
    carries replace the configured ones where they fit (``checkpoints.fit_heads``), and the norm
    stats are the checkpoint's. Without one, params are random from train.seed and the norm stats
    the identity."""
    mesh = sharding.make_mesh(exp.mesh, devices)
    key = jax.random.key(exp.train.seed)
    start = None
    if exp.model.checkpoint:
        start = load_checkpoint(exp)
        exp = checkpoint_model(exp, start)
        model = exp.model.pi0_config()
        heads = checkpoints.fit_heads(start.heads, jax.device_get(init_heads(exp, model, key)), start.source)
        params = {"model": float32(start.params)} | heads
        norm_stats = start.norm_stats
        start = dataclasses.replace(start, params={}, heads={})  # the stored-dtype copy need not live on
    else:
        model = exp.model.pi0_config()
        params = init_params(exp, model, key)
        # Env states and actions never exceed the model's padded width.
        norm_stats = rollout.identity_norm_stats(model.action_dim, model.action_dim)
    tokenizer = tok.load_tokenizer(exp.model.tokenizer, model.vocab_size)
    return Setup(exp, mesh, model, params, norm_stats, tokenizer, start)


def run_record(setup: Setup, transform) -> dict:
    """What pirl.checkpoints.run keeps of a run: its start, model, transform and policy."""
    exp, start = setup.exp, setup.start
    model = {f: getattr(setup.model, f) for f in _FROM_CHECKPOINT}
    model |= {"dtype": setup.model.dtype}
    return {
        "start": {
            "checkpoint": exp.model.checkpoint,
            "layout": start.layout if start else "random",
            "asset_id": start.asset_id if start else IDENTITY_ASSET,
            "step": start.step if start else None,
        },
        "model": model,
        "transform": dataclasses.asdict(transform),
        "policy": dataclasses.asdict(exp.policy),
        "env": {"sim": exp.env.sim, "task": exp.env.task},
    }


def write_run_record(setup: Setup, workdir: str | os.PathLike, transform) -> None:
    """<workdir>/run.json and the run's norm stats, once (a resumed run keeps its first record)."""
    if not (pathlib.Path(workdir) / checkpoints.run.RECORD).is_file():
        checkpoints.run.write_record(workdir, run_record(setup, transform), setup.norm_stats)


def make_actor(setup: Setup, spec, *, action_chunk: int | None = None) -> rollout.Actor:
    """The rollout Actor for envs of ``spec`` (their cameras and action size); ``action_chunk``
    overrides how many actions of each sampled chunk the envs execute."""
    transform = envsetup.env_transform(setup.exp, tuple(c.name for c in spec.cameras), spec.action_dim)
    if action_chunk:
        transform = dataclasses.replace(transform, action_chunk=action_chunk)
    return rollout.Actor(setup.exp.policy, setup.model, transform, setup.norm_stats, setup.tokenizer, setup.mesh)


def float32_model_params(exp: experiment.Experiment, seed: int) -> tuple[pi0.Pi0Config, dict]:
    """(model config, float32 π0 params) for supervised fitting: random from ``key(seed)`` without
    model.checkpoint, else the checkpoint's (any layout), checked against model.*'s architecture.

    Raises checkpoints.CheckpointError naming the first parameter whose path or shape differs."""
    config = exp.model.pi0_config()
    if not exp.model.checkpoint:
        return config, _init_model(config, jax.random.key(seed))
    params = load_checkpoint(exp).params
    checkpoints.validate_params(params, pi0.param_shapes(config), check_dtype=False)
    return config, float32(params)


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
