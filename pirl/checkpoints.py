"""Model parameters from openpi checkpoints (and PyTorch ones, through pirl.torch_convert).

An openpi checkpoint directory holds `params/` (an orbax PyTree checkpoint of `{"params": tree}`,
where older writers end every leaf path with a `value` key) and `assets/<asset_id>/norm_stats.json`.
pirl's parameter tree IS openpi's, so loading is a restore plus a shape check.

Paths may be local, `hf://org/name[@revision]` (Hugging Face hub, cached by huggingface_hub) or
any fsspec URL such as `gs://openpi-assets/checkpoints/pi05_libero` (copied once into
$PIRL_CACHE/checkpoints; gs:// needs the optional `gcsfs` package).
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import shutil
import socket
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from pirl import checkpoint_checks, torch_convert
from pirl.data import norm_stats as _norm_stats
from pirl.models import gemma, pi0, siglip
from pirl.models.tokenizer import default_cache_dir

logger = logging.getLogger(__name__)
CheckpointError = torch_convert.CheckpointError


def _params_dir(path: str | pathlib.Path) -> pathlib.Path:
    return checkpoint_checks.openpi_params_dir(resolve_path(path).resolve())


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
    path = _params_dir(path)
    with ocp.PyTreeCheckpointer() as ckptr, checkpoint_checks.reading(path):
        meta = ckptr.metadata(path)
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
        if tree is None:
            raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: its tree metadata cannot be read")
        if "params" not in tree:
            raise CheckpointError(f"checkpoint {path} holds no 'params' item (found {sorted(tree)})")
        item = {"params": tree["params"]}
        if sharding is None:
            args = ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=dtype)
        else:
            args = ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=sharding, dtype=dtype)
        restored = ckptr.restore(
            path, ocp.args.PyTreeRestore(item=item, restore_args=jax.tree.map(lambda _: args, item))
        )["params"]
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
        raise KeyError(f"not a π0/π0.5 parameter tree: missing {e}") from None
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
    except KeyError as e:
        raise CheckpointError(f"checkpoint {path}: {e.args[0]}") from None
    # Stored dtypes vary (float32, bfloat16): only paths and shapes must match the architecture.
    validate_params(params, pi0.param_shapes(config), check_dtype=False)
    return config, params


# ---------------------------------------------------------------- remote paths


def _hf_snapshot(url: str) -> pathlib.Path:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    repo, _, revision = url.removeprefix("hf://").partition("@")
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(repo, revision=revision or None))
    except (hf_errors.HfHubHTTPError, hf_errors.HFValidationError, OSError) as e:
        rev = f" --revision {revision}" if revision else ""
        raise CheckpointError(
            f"cannot get {url} ({type(e).__name__}; offline?): on a machine with internet run "
            f"`hf download {repo}{rev} --local-dir DIR`, copy DIR here and pass its path instead"
        ) from None


# Object stores whose client retries for minutes when the host cannot be resolved: check first.
_STORE_HOSTS = {"gs": "storage.googleapis.com", "gcs": "storage.googleapis.com"}


def _check_reachable(url: str, scheme: str) -> None:
    host = _STORE_HOSTS.get(scheme)
    if host is None:
        return
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise CheckpointError(
            f"cannot reach {host} for {url} ({e}; offline?): copy the directory locally and pass its path"
        ) from None


def _fsspec_copy(url: str) -> pathlib.Path:
    """Copies a remote directory once into the cache (a marker file says the copy finished)."""
    import fsspec

    scheme, _, rest = url.partition("://")
    dest = default_cache_dir() / "checkpoints" / scheme / rest.strip("/")
    if (dest / ".complete").is_file():
        return dest
    _check_reachable(url, scheme)
    try:
        # openpi's bucket is public: anonymous access needs no credentials.
        fs, root = fsspec.core.url_to_fs(url, **({"token": "anon"} if scheme in ("gs", "gcs") else {}))
        files = fs.find(root)
        if not files:
            raise FileNotFoundError(f"nothing under {url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Copy next to the destination, then rename: an interrupted copy never looks complete.
        tmp = pathlib.Path(tempfile.mkdtemp(dir=dest.parent))
        for remote in files:
            local = tmp / remote[len(root.rstrip("/")) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
    except ImportError as e:
        raise CheckpointError(
            f"reading {url} needs an fsspec backend ({e}); install it (gs://: `pip install gcsfs`) or copy "
            f"the directory locally and pass its path"
        ) from None
    except OSError as e:
        raise CheckpointError(
            f"cannot copy {url} ({type(e).__name__}: {e}); offline? copy it locally and pass its path"
        ) from None
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    (dest / ".complete").touch()
    return dest


def resolve_path(path: str | os.PathLike) -> pathlib.Path:
    """A local directory for `path`: local paths as they are, `hf://org/name[@rev]` through the
    Hugging Face cache, other URLs (gs://, s3://, ...) copied into $PIRL_CACHE/checkpoints."""
    text = os.fspath(path)
    if text.startswith("hf://"):
        return _hf_snapshot(text)
    if "://" in text and not text.startswith("file://"):
        return _fsspec_copy(text)
    return pathlib.Path(text.removeprefix("file://")).expanduser()


# ---------------------------------------------------------------- validation, assets, writing


def validate_params(params: dict, expected: dict, *, check_dtype: bool = True) -> None:
    """Raises CheckpointError naming the first path (sorted) that is missing, unexpected, or
    differs in shape (or dtype) from `expected` (a params or `param_shapes` tree)."""
    want = traverse_util.flatten_dict(expected, sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    for key in sorted(want.keys() | got.keys()):
        if key not in got:
            raise CheckpointError(f"parameter {key}: missing (expected shape {tuple(want[key].shape)})")
        if key not in want:
            raise CheckpointError(f"parameter {key}: unexpected (found shape {np.shape(got[key])})")
        w_shape, g_shape = tuple(want[key].shape), tuple(np.shape(got[key]))
        if w_shape != g_shape:
            raise CheckpointError(f"parameter {key}: expected shape {w_shape}, found {g_shape}")
        if check_dtype and np.dtype(want[key].dtype) != np.dtype(got[key].dtype):
            raise CheckpointError(f"parameter {key}: expected dtype {want[key].dtype}, found {got[key].dtype}")


def load_norm_stats(path: str | os.PathLike, asset_id: str | None = None) -> dict[str, _norm_stats.NormStats]:
    """Reads `<checkpoint>/assets/<asset_id>/norm_stats.json`; without `asset_id` the checkpoint
    must hold exactly one asset directory with norm stats (e.g. physical-intelligence/libero)."""
    assets = resolve_path(path) / "assets"
    if asset_id is None:
        found = sorted(str(f.parent.relative_to(assets)) for f in assets.rglob(_norm_stats.FILENAME))
        if len(found) != 1:
            raise CheckpointError(f"{assets}: pass asset_id, norm stats exist for {found or 'no asset'}")
        asset_id = found[0]
    return checkpoint_checks.load_norm_stats(assets / asset_id)


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


def load_pytorch(
    path: str | os.PathLike, config: pi0.Pi0Config, *, seed: int = 0
) -> tuple[dict, dict[str, np.ndarray]]:
    """PyTorch safetensors (local, hf://, gs://; single or sharded) → (params for `config`, extras).

    Extras are checkpoint tensors the model has no place for (e.g. an RL value head). PyTorch
    checkpoints hold no LoRA weights: for a LoRA config those start fresh, normal(0.01) as
    openpi initializes them (from `seed`).
    """
    template = pi0.param_shapes(config)
    converted, extras = torch_convert.load_torch(resolve_path(path), template)
    flat = traverse_util.flatten_dict(converted)
    rng = np.random.default_rng(seed)
    for key, spec in traverse_util.flatten_dict(template).items():
        if key not in flat and any("lora" in part for part in key):
            flat[key] = (0.01 * rng.standard_normal(spec.shape)).astype(spec.dtype)
    params = traverse_util.unflatten_dict(flat)
    validate_params(params, template)
    return params, extras
