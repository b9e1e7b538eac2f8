"""A run's policy written as a checkpoint other tools load, with the norm stats and conventions it
was trained with.

    openpi   `params/` (orbax, `{"params": tree}`) + `assets/<asset_id>/norm_stats.json`: what
             openpi's policy loader reads (openpi src/openpi/policies/policy_config.py,
             create_trained_policy: restore_params(dir / "params"), load_norm_stats(dir / "assets",
             asset_id)), so `scripts/serve_policy.py policy:checkpoint --policy.dir=<out>` serves it.
             The heads ride along at the top of the tree; openpi's model.load drops keys its model
             lacks (remove_extra_params, src/openpi/models/model.py).
    pytorch  `model.safetensors` in openpi-PyTorch naming, with the action expert's unused LM head
             that openpi's strict loader expects (safetensors.torch.load_model on PI0Pytorch,
             src/openpi/models/model.py load_pytorch); the critic / noise head in
             `rl_heads.safetensors` (the reference merges every *.safetensors of the directory,
             rlinf/models/embodiment/openpi/__init__.py, get_model); norm stats at
             `assets/<asset_id>/` (openpi) and `<asset_id>/` (the reference).
    lerobot  `model.safetensors` under `model.`, config.json and processor files
             (see pirl.checkpoints.lerobot).
Every format also gets `config.json` with the conventions pirl reads back (action horizon, prompt
length, discrete state input, normalization, Gemma sizes; openpi's PyTorch conversion writes the
first of these the same way, examples/convert_jax_model_to_pytorch.py).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from pirl.checkpoints import heads as heads_lib
from pirl.checkpoints import lerobot, loader, openpi, pytorch, validation
from pirl.data import norm_stats as ns
from pirl.models import gemma

logger = logging.getLogger(__name__)

FORMATS = ("openpi", "pytorch", "lerobot")
DTYPES = ("float32", "bfloat16")
HEADS_FILE = "rl_heads.safetensors"
LEROBOT_VARIANTS = ("gemma_300m", "gemma_2b")  # the sizes LeRobot's PI0Config accepts


def _cast(tree, dtype: str):
    want = jnp.dtype(dtype)
    return jax.tree.map(lambda x: np.asarray(x).astype(want) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _name(variant) -> object:
    return variant if isinstance(variant, str) else gemma.variant_name(variant)


def config_json(ckpt: loader.Checkpoint, dtype: str) -> dict:
    """The conventions the policy runs with, as config.json records them."""
    c, record = ckpt.config, ckpt.record or {}
    transform, policy = record.get("transform", {}), record.get("policy", {})
    out = {
        "action_dim": c.action_dim,
        "action_horizon": c.action_horizon,
        "paligemma_variant": _name(c.paligemma_variant),
        "action_expert_variant": _name(c.action_expert_variant),
        "vision_variant": c.vision_variant,
        "precision": dtype,
        "pi05": c.pi05,
        "max_token_len": c.max_token_len,
        "discrete_state_input": c.discrete_state_input,
        "image_size": c.image_size,
        "asset_id": ckpt.asset_id,
        "norm": transform.get("norm", "quantile" if c.pi05 else "zscore"),
    }
    for key in ("delta_action_mask", "env_action_dim", "action_chunk", "cameras"):
        if key in transform:
            out[key] = transform[key]
    if "num_steps" in policy:
        out["num_steps"] = policy["num_steps"]
    return out


def _write_json(file: pathlib.Path, data: Mapping) -> None:
    def default(v):
        if hasattr(v, "__dataclass_fields__"):
            return {f: getattr(v, f) for f in v.__dataclass_fields__}
        raise TypeError(f"{type(v).__name__} is not JSON serializable")

    file.write_text(json.dumps(data, indent=2, default=default))


def _torch_model(params: dict, dtype: str) -> dict[str, np.ndarray]:
    tensors = pytorch.to_torch(_cast(params, dtype))
    embed = tensors[pytorch.EMBED]
    width = params["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum_1"]["w"].shape[2]
    # Never read by the model; its presence lets strict loaders (openpi, LeRobot) load the file.
    tensors[pytorch.EXPERT_HEAD] = np.zeros((embed.shape[0], width), embed.dtype)
    return tensors


def write_openpi(ckpt: loader.Checkpoint, out: pathlib.Path, dtype: str) -> None:
    tree = _cast({**ckpt.params, **ckpt.heads}, dtype)
    openpi.save_openpi(out, tree, norm_stats=ckpt.norm_stats, asset_id=ckpt.asset_id)
    _write_json(out / loader.CONFIG, config_json(ckpt, dtype))


def write_pytorch(ckpt: loader.Checkpoint, out: pathlib.Path, dtype: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(_torch_model(ckpt.params, dtype), out / pytorch.SINGLE_FILE)
    if ckpt.heads:
        safetensors.numpy.save_file(heads_lib.heads_to_torch(_cast(ckpt.heads, dtype)), out / HEADS_FILE)
    for base in (out / "assets", out):
        ns.save(base / ckpt.asset_id, ckpt.norm_stats)
    _write_json(out / loader.CONFIG, config_json(ckpt, dtype))


def write_lerobot(ckpt: loader.Checkpoint, out: pathlib.Path, dtype: str) -> None:
    c = ckpt.config
    transform = (ckpt.record or {}).get("transform")
    if transform is None:
        raise validation.CheckpointError(
            f"{ckpt.path}: a LeRobot export needs a pirl run (its cameras and action size)"
        )
    names = [_name(c.paligemma_variant), _name(c.action_expert_variant)]
    if any(n not in LEROBOT_VARIANTS for n in names) or c.vision_variant != "So400m/14":
        logger.warning(
            "LeRobot builds π0 only from %s with SigLIP So400m/14; this model (%s, %s, %s) loads in pirl, not LeRobot",
            LEROBOT_VARIANTS,
            *names,
            c.vision_variant,
        )
    out.mkdir(parents=True, exist_ok=True)
    tensors = _torch_model(ckpt.params, dtype)
    # LeRobot's loader fills embed_tokens from the tied lm_head name, not the other way round
    # (PI0Policy._fix_pytorch_state_dict_keys).
    tensors[pytorch.TIED_HEAD] = tensors.pop(pytorch.EMBED)
    safetensors.numpy.save_file({"model." + k: v for k, v in tensors.items()}, out / pytorch.SINGLE_FILE)
    policy = ckpt.record.get("policy", {})
    lerobot.write(
        out,
        pi05=c.pi05,
        paligemma_variant=names[0],
        action_expert_variant=names[1],
        action_horizon=c.action_horizon,
        n_action_steps=transform.get("action_chunk") or c.action_horizon,
        num_inference_steps=policy.get("num_steps", 10),
        max_token_len=c.max_token_len,
        model_action_dim=c.action_dim,
        image_size=c.image_size,
        cameras=[cam for cam, _ in transform["cameras"]],
        stats=ckpt.norm_stats,
        env_action_dim=transform["env_action_dim"],
        norm=transform["norm"],
        discrete_state_input=c.discrete_state_input,
        delta_action_mask=tuple(transform.get("delta_action_mask") or ()),
        dtype=dtype,
    )


WRITERS = {"openpi": write_openpi, "pytorch": write_pytorch, "lerobot": write_lerobot}


def export(ckpt: loader.Checkpoint, fmt: str, out: str | os.PathLike, dtype: str = "float32") -> pathlib.Path:
    """Writes ``ckpt`` (a loaded run: params, heads, norm stats, conventions) to ``out`` in ``fmt``
    with its float params cast to ``dtype``. ``out`` must not exist or be empty."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out = pathlib.Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new output directory")
    WRITERS[fmt](ckpt, out, dtype)
    return out
