"""openpi's JAX checkpoint layout: orbax params and norm stats.

An openpi checkpoint directory holds `params/` (an orbax PyTree checkpoint of `{"params": tree}`,
where older writers end every leaf path with a `value` key) and `assets/<asset_id>/norm_stats.json`.
pirl's parameter tree IS openpi's, so loading is a restore plus a shape check. Paths may be local
or remote (see pirl.checkpoints.remote).
"""

from __future__ import annotations

import math
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from pirl.checkpoints import remote, validation
from pirl.data import norm_stats as _norm_stats
from pirl.models import gemma, pi0, siglip


def _params_dir(path: str | pathlib.Path) -> pathlib.Path:
    return validation.openpi_params_dir(remote.resolve_path(path).resolve())


def restore_item(
    path: pathlib.Path,
    key: str,
    *,
    dtype: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> dict:
    """The ``key`` item of the orbax PyTree checkpoint at ``path``, read alone (other items, e.g. a
    run checkpoint's optimizer state, are not read). numpy arrays, or jax arrays placed with
    ``sharding``; ``dtype`` casts on read."""
    with ocp.PyTreeCheckpointer() as ckptr, validation.reading(path):
        meta = ckptr.metadata(path)
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
        if tree is None:
            raise validation.CheckpointError(
                f"checkpoint {path} is incomplete or corrupt: its tree metadata cannot be read"
            )
        if key not in tree:
            raise validation.CheckpointError(f"{path} holds no {key!r} item (found {sorted(tree)})")
        item = {key: tree[key]}
        if sharding is None:
            args = ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=dtype)
        else:
            args = ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=sharding, dtype=dtype)
        restore = ocp.args.PyTreeRestore(
            item=item, restore_args=jax.tree.map(lambda _: args, item), partial_restore=len(tree) > 1
        )
        return ckptr.restore(path, restore)[key]


def restore_params(
    path: str | pathlib.Path,
    *,
    dtype: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> dict:
    """Restores an openpi params tree from `<path>` or `<path>/params`.

    Returns numpy arrays, or jax arrays placed with `sharding` when given (each host reads only
    its shards). `dtype` casts on read (e.g. "bfloat16" for serving); None keeps the stored dtype.
    """
    restored = restore_item(_params_dir(path), "params", dtype=dtype, sharding=sharding)
    flat = traverse_util.flatten_dict(restored)
    if flat and all(k[-1] == "value" for k in flat):
        flat = {k[:-1]: v for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat)


def _gemma_from_layers(layers: dict, suffix: str) -> gemma.GemmaConfig:
    q = layers["attn"][f"q_einsum{suffix}"]
    depth, heads, width, head_dim = q["w"].shape
    kv_heads = layers["attn"][f"kv_einsum{suffix}"]["w"].shape[2]
    mlp_dim = layers[f"mlp{suffix}"]["gating_einsum"].shape[-1]
    rank = q["lora_a"].shape[-1] if "lora_a" in q else 0
    # The alpha of a LoRA is not stored; openpi's variants all use alpha = rank.
    return gemma.GemmaConfig(width, depth, mlp_dim, heads, kv_heads, head_dim, rank, float(rank))


def infer_config(params: dict, **overrides) -> pi0.Pi0Config:
    """The Pi0Config whose parameter shapes are those of `params`.

    Sizes, π0 vs π0.5, LoRA ranks, vocabulary and image size come from the shapes. What no
    parameter records (action horizon, prompt length, dtype) takes the Pi0Config default unless
    given in `overrides`, e.g. `infer_config(p, action_horizon=10)` for pi05_libero.
    """
    try:
        llm, img = params["PaliGemma"]["llm"], params["PaliGemma"]["img"]
        vlm = _gemma_from_layers(llm["layers"], "")
        expert = _gemma_from_layers(llm["layers"], "_1")
        patch, _, _, v_width = img["embedding"]["kernel"].shape
        block = img["Transformer"]["encoderblock"]
        v_depth, _, v_heads, _ = block["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape
        v_mlp = block["MlpBlock_0"]["Dense_0"]["kernel"].shape[-1]
        n_patches = img["pos_embedding"].shape[1]
        vocab = llm["embedder"]["input_embedding"].shape[0]
        action_dim = params["action_in_proj"]["kernel"].shape[0]
    except KeyError as e:
        raise validation.CheckpointError(f"not a π0/π0.5 parameter tree: missing {e}") from None
    vision = siglip.SiglipConfig(v_width, v_depth, v_mlp, v_heads, patch)
    kw = dict(
        pi05="time_mlp_in" in params,
        paligemma_variant=gemma.variant_name(vlm),
        action_expert_variant=gemma.variant_name(expert),
        vision_variant=siglip.variant_name(vision),
        action_dim=action_dim,
        image_size=math.isqrt(n_patches) * patch,
        vocab_size=vocab,
    )
    return pi0.Pi0Config(**{**kw, **overrides})


def load_openpi(path: str | pathlib.Path, **overrides) -> tuple[pi0.Pi0Config, dict]:
    """Loads an openpi checkpoint directory: returns (model config inferred from its shapes, params).

    Example (actions for given noise, openpi's sampler in float32)::

        config, params = load_openpi("checkpoints/pi05_libero", action_horizon=10, dtype="float32")
        actions = pi0.sample_actions(config, params, observation, noise, num_steps=10)
    """
    params = restore_params(path)
    try:
        config = infer_config(params, **overrides)
    except validation.CheckpointError as e:
        raise validation.CheckpointError(f"checkpoint {path}: {e}") from None
    # Stored dtypes vary (float32, bfloat16): only paths and shapes must match the architecture.
    validation.validate_params(params, pi0.param_shapes(config), check_dtype=False)
    return config, params


# ---------------------------------------------------------------- norm stats, writing


def load_norm_stats(path: str | os.PathLike, asset_id: str | None = None) -> dict[str, _norm_stats.NormStats]:
    """Reads `<checkpoint>/assets/<asset_id>/norm_stats.json`; without `asset_id` the checkpoint
    must hold exactly one asset directory with norm stats (e.g. physical-intelligence/libero)."""
    assets = remote.resolve_path(path) / "assets"
    if asset_id is None:
        found = sorted(str(f.parent.relative_to(assets)) for f in assets.rglob(_norm_stats.FILENAME))
        if len(found) != 1:
            raise validation.CheckpointError(f"{assets}: pass asset_id, norm stats exist for {found or 'no asset'}")
        asset_id = found[0]
    return validation.load_norm_stats(assets / asset_id)


def save_openpi(
    path: str | os.PathLike,
    params: dict,
    *,
    norm_stats: dict[str, _norm_stats.NormStats] | None = None,
    asset_id: str | None = None,
) -> pathlib.Path:
    """Writes params in openpi's checkpoint layout (`<path>/params`, orbax, `{"params": tree}`)
    and, when given, `<path>/assets/<asset_id>/norm_stats.json`; openpi and load_openpi read it."""
    path = pathlib.Path(path).expanduser().resolve()
    if norm_stats is not None and not asset_id:
        raise ValueError("norm_stats need an asset_id (e.g. 'physical-intelligence/libero')")
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(path / "params", args=ocp.args.PyTreeSave({"params": params}))
    if norm_stats is not None:
        _norm_stats.save(path / "assets" / asset_id, norm_stats)
    return path
