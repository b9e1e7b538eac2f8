"""PyTorch safetensors ⇄ pirl params (openpi's Flax tree), in both directions; load_pytorch reads
a checkpoint directory (local or remote) for a model config.

Understands openpi's PyTorch naming (also used by RLinf's Hugging Face checkpoints), LeRobot's
(the same names under a `model.` prefix), and the pre-4.52 transformers PaliGemma layout
(`paligemma.language_model.model.*`, `paligemma.vision_tower.*`). Single files and sharded
checkpoints (`model.safetensors.index.json`) load; keys with no counterpart in the model (an RL
value head, the expert's unused `lm_head`) come back as extras, never silently dropped.

Layout facts (PyTorch Linear stores [out, in]; Flax kernels [in, out]); per layer i:
  Gemma  q_proj [N·H, D]      ↔ q_einsum/w [N, D, H]        reshape(N, H, D), swap last two
         k_proj/v_proj [K·H, D] ↔ kv_einsum/w [2, K, D, H]   same per K, stacked k then v
         o_proj [D, N·H]      ↔ attn_vec_einsum/w [N, H, D]  transpose, reshape
         gate/up_proj [F, D]  ↔ gating_einsum [2, D, F];  down_proj [D, F] ↔ linear [F, D]
         input/post_attention_layernorm ↔ pre_attention/pre_ffw_norm (both store w of 1 + w);
         π0.5 expert norms `.dense` [3D, Dc] ↔ `Dense_0/kernel` [Dc, 3D]
  SigLIP {q,k,v}_proj [N·H, D] ↔ kernel [D, N, H]; out_proj [D, N·H] ↔ out kernel [N, H, D];
         patch_embedding [D, 3, P, P] ↔ embedding/kernel [P, P, 3, D]; position [T, D] ↔ [1, T, D]
Layers are stacked on a leading axis in pirl and numbered `layers.{i}` in PyTorch.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from pirl.checkpoints import remote, validation
from pirl.models import pi0

logger = logging.getLogger(__name__)

VLM = "paligemma_with_expert.paligemma.model."
VISION = VLM + "vision_tower.vision_model."
LANGUAGE = VLM + "language_model."
EXPERT = "paligemma_with_expert.gemma_expert.model."
EMBED = LANGUAGE + "embed_tokens.weight"
TIED_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
# The action expert's LM head: unused by π0, but in the state dict of openpi's PI0Pytorch.
EXPERT_HEAD = "paligemma_with_expert.gemma_expert.lm_head.weight"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Older transformers nested PaliGemma differently; renaming to the current layout first lets one
# table serve both.
_LEGACY = (
    ("paligemma_with_expert.paligemma.language_model.model.", LANGUAGE),
    ("paligemma_with_expert.paligemma.language_model.lm_head.", "paligemma_with_expert.paligemma.lm_head."),
    ("paligemma_with_expert.paligemma.vision_tower.", VLM + "vision_tower."),
    ("paligemma_with_expert.paligemma.multi_modal_projector.", VLM + "multi_modal_projector."),
)


# ---------------------------------------------------------------- per-layer conversions
# Each kind: (torch tensors of one layer → pirl slice of `shape`, pirl slice → torch tensors).


def _heads_in(w, shape):  # [N·H, D] → [N, D, H] (also K for kv)
    n, d, h = shape
    return w.reshape(n, h, d).transpose(0, 2, 1)


def _heads_out(x):
    n, d, h = x.shape
    return x.transpose(0, 2, 1).reshape(n * h, d)


_KINDS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda ws, shape: ws[0], lambda x: [x]),
    "dense": (lambda ws, shape: ws[0].T, lambda x: [x.T]),
    "q": (lambda ws, shape: _heads_in(ws[0], shape), lambda x: [_heads_out(x)]),
    "kv": (
        lambda ws, shape: np.stack([_heads_in(w, shape[1:]) for w in ws]),
        lambda x: [_heads_out(x[0]), _heads_out(x[1])],
    ),
    "o": (lambda ws, shape: ws[0].T.reshape(shape), lambda x: [x.reshape(-1, x.shape[-1]).T]),
    "gating": (lambda ws, shape: np.stack([ws[0].T, ws[1].T]), lambda x: [x[0].T, x[1].T]),
    # SigLIP attention: kernel [D, N, H] from [N·H, D]; bias [N, H]; out kernel [N, H, D] from [D, N·H].
    "vis_qkv": (lambda ws, shape: ws[0].T.reshape(shape), lambda x: [x.reshape(x.shape[0], -1).T]),
    "vis_out": (lambda ws, shape: ws[0].T.reshape(shape), lambda x: [x.reshape(-1, x.shape[-1]).T]),
    "bias_heads": (lambda ws, shape: ws[0].reshape(shape), lambda x: [x.reshape(-1)]),
    "patch": (lambda ws, shape: ws[0].transpose(2, 3, 1, 0), lambda x: [x.transpose(3, 2, 0, 1)]),
    "pos": (lambda ws, shape: ws[0][None], lambda x: [x[0]]),
}

_GEMMA_LAYER = {
    "attn/q_einsum/w": (("self_attn.q_proj.weight",), "q"),
    "attn/kv_einsum/w": (("self_attn.k_proj.weight", "self_attn.v_proj.weight"), "kv"),
    "attn/attn_vec_einsum/w": (("self_attn.o_proj.weight",), "o"),
    "mlp/gating_einsum": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "gating"),
    "mlp/linear": (("mlp.down_proj.weight",), "dense"),
    "pre_attention_norm/scale": (("input_layernorm.weight",), "copy"),
    "pre_ffw_norm/scale": (("post_attention_layernorm.weight",), "copy"),
    "pre_attention_norm/Dense_0/kernel": (("input_layernorm.dense.weight",), "dense"),
    "pre_attention_norm/Dense_0/bias": (("input_layernorm.dense.bias",), "copy"),
    "pre_ffw_norm/Dense_0/kernel": (("post_attention_layernorm.dense.weight",), "dense"),
    "pre_ffw_norm/Dense_0/bias": (("post_attention_layernorm.dense.bias",), "copy"),
}
_GEMMA_TOP = {
    "final_norm/scale": (("norm.weight",), "copy"),
    "final_norm/Dense_0/kernel": (("norm.dense.weight",), "dense"),
    "final_norm/Dense_0/bias": (("norm.dense.bias",), "copy"),
}
_VISION_LAYER = {
    "LayerNorm_0/scale": (("layer_norm1.weight",), "copy"),
    "LayerNorm_0/bias": (("layer_norm1.bias",), "copy"),
    "LayerNorm_1/scale": (("layer_norm2.weight",), "copy"),
    "LayerNorm_1/bias": (("layer_norm2.bias",), "copy"),
    "MlpBlock_0/Dense_0/kernel": (("mlp.fc1.weight",), "dense"),
    "MlpBlock_0/Dense_0/bias": (("mlp.fc1.bias",), "copy"),
    "MlpBlock_0/Dense_1/kernel": (("mlp.fc2.weight",), "dense"),
    "MlpBlock_0/Dense_1/bias": (("mlp.fc2.bias",), "copy"),
    **{
        f"MultiHeadDotProductAttention_0/{name}/{leaf}": ((f"self_attn.{short}_proj.{t}",), kind)
        for name, short in (("query", "q"), ("key", "k"), ("value", "v"))
        for leaf, t, kind in (("kernel", "weight", "vis_qkv"), ("bias", "bias", "bias_heads"))
    },
    "MultiHeadDotProductAttention_0/out/kernel": (("self_attn.out_proj.weight",), "vis_out"),
    "MultiHeadDotProductAttention_0/out/bias": (("self_attn.out_proj.bias",), "copy"),
}
_VISION_TOP = {
    "embedding/kernel": ((VISION + "embeddings.patch_embedding.weight",), "patch"),
    "embedding/bias": ((VISION + "embeddings.patch_embedding.bias",), "copy"),
    "pos_embedding": ((VISION + "embeddings.position_embedding.weight",), "pos"),
    "Transformer/encoder_norm/scale": ((VISION + "post_layernorm.weight",), "copy"),
    "Transformer/encoder_norm/bias": ((VISION + "post_layernorm.bias",), "copy"),
    "head/kernel": ((VLM + "multi_modal_projector.linear.weight",), "dense"),
    "head/bias": ((VLM + "multi_modal_projector.linear.bias",), "copy"),
}


def torch_rule(path: str) -> tuple[tuple[str, ...], str, bool] | None:
    """For a pirl param path ("/"-joined): (PyTorch key templates with `{i}` for the layer, kind,
    stacked over layers). None for leaves PyTorch checkpoints do not hold (LoRA)."""
    if "lora" in path:
        return None
    if path == "PaliGemma/llm/embedder/input_embedding":
        return (EMBED,), "copy", False
    if m := re.fullmatch(r"PaliGemma/llm/(layers/)?(.+)", path):
        stacked, rest = bool(m.group(1)), m.group(2)
        expert = re.search(r"[a-z_]+_1(?=/|$)", rest) is not None
        generic = re.sub(r"(?<=[a-z])_1(?=/|$)", "", rest)
        table = _GEMMA_LAYER if stacked else _GEMMA_TOP
        if generic in table:
            keys, kind = table[generic]
            base = EXPERT if expert else LANGUAGE
            prefix = base + "layers.{i}." if stacked else base
            return tuple(prefix + k for k in keys), kind, stacked
    if path.startswith("PaliGemma/img/Transformer/encoderblock/"):
        rest = path.removeprefix("PaliGemma/img/Transformer/encoderblock/")
        if rest in _VISION_LAYER:
            keys, kind = _VISION_LAYER[rest]
            return tuple(VISION + "encoder.layers.{i}." + k for k in keys), kind, True
    if path.startswith("PaliGemma/img/") and path.removeprefix("PaliGemma/img/") in _VISION_TOP:
        keys, kind = _VISION_TOP[path.removeprefix("PaliGemma/img/")]
        return keys, kind, False
    if not path.startswith("PaliGemma/"):
        # Heads (action_in_proj, state_proj, time MLPs, a value head): Flax Dense ↔ torch Linear.
        *module, leaf = path.split("/")
        name = ".".join(module)
        if leaf == "kernel":
            return (f"{name}.weight",), "dense", False
        if leaf in ("bias", "scale"):
            return (f"{name}.{'bias' if leaf == 'bias' else 'weight'}",), "copy", False
    raise validation.CheckpointError(f"no PyTorch name is known for param {path}")


def _flat(tree) -> dict[str, object]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


# ---------------------------------------------------------------- pirl → torch


def to_torch(params) -> dict[str, np.ndarray]:
    """pirl params → openpi-PyTorch state dict (numpy). LoRA leaves are left out; the embedding
    is written once, under `embed_tokens` (the VLM's lm_head is tied to it)."""
    out = {}
    for path, value in _flat(params).items():
        rule = torch_rule(path)
        if rule is None:
            continue
        keys, kind, stacked = rule
        value = np.asarray(value)
        slices = list(enumerate(value)) if stacked else [(None, value)]
        for i, piece in slices:
            for key, tensor in zip(keys, _KINDS[kind][1](piece), strict=True):
                out[key.format(i=i)] = np.ascontiguousarray(tensor)
    return out


def torch_shapes(template) -> dict[str, tuple[int, ...]]:
    """The PyTorch names and shapes `to_torch` would write for a params tree or `param_shapes`
    tree, without materializing it (each layer slice is a zero-stride view)."""
    out = {}
    for path, spec in _flat(template).items():
        rule = torch_rule(path)
        if rule is None:
            continue
        keys, kind, stacked = rule
        probe = np.broadcast_to(np.zeros((), np.float32), spec.shape[1:] if stacked else spec.shape)
        shapes = [t.shape for t in _KINDS[kind][1](probe)]
        for i in range(spec.shape[0]) if stacked else [None]:
            out.update({key.format(i=i): shape for key, shape in zip(keys, shapes, strict=True)})
    return out


def save_torch(params, directory: str | os.PathLike, max_shard_bytes: int | None = None) -> pathlib.Path:
    """Writes params as PyTorch-named safetensors: one `model.safetensors`, or shards plus
    `model.safetensors.index.json` when they exceed `max_shard_bytes`."""
    tensors = to_torch(params)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    total = sum(t.nbytes for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        safetensors.numpy.save_file(tensors, directory / SINGLE_FILE)
        return directory / SINGLE_FILE
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += tensor.nbytes
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return directory / INDEX_FILE


# ---------------------------------------------------------------- torch → pirl


def _read_file(file: pathlib.Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise validation.CheckpointError(f"safetensors file not found: {file}")
    try:
        return safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise validation.CheckpointError(
            f"{file} is not a readable safetensors file (truncated or mislabeled?): {e}"
        ) from None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a .safetensors file, a sharded checkpoint's index, or a directory holding either."""
    path = pathlib.Path(path)
    if path.is_dir():
        if (path / INDEX_FILE).is_file():
            path = path / INDEX_FILE
        elif (path / SINGLE_FILE).is_file():
            path = path / SINGLE_FILE
        else:
            raise validation.CheckpointError(f"{path} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
    if not path.name.endswith(".json"):
        return _read_file(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise validation.CheckpointError(f"{path} is not a safetensors index with a 'weight_map': {e}") from None
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        content = _read_file(path.parent / shard)
        if missing := sorted(k for k, s in weight_map.items() if s == shard and k not in content):
            raise validation.CheckpointError(
                f"{path.parent / shard} lacks {missing[0]}, which {path.name} places there"
            )
        tensors.update(content)
    return tensors


def canonical_names(tensors: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Maps each key to openpi-PyTorch naming: drops LeRobot's `model.` prefix and renames the
    legacy transformers layout. Returns {canonical name: original name}."""
    lerobot = any(k.startswith("model.paligemma_with_expert.") for k in tensors)
    names = {}
    for key in tensors:
        name = key.removeprefix("model.") if lerobot else key
        for old, new in _LEGACY:
            if name.startswith(old):
                name = new + name.removeprefix(old)
        names[name] = key
    return names


def from_torch(tensors: Mapping[str, np.ndarray], template) -> tuple[dict, dict[str, np.ndarray]]:
    """PyTorch state dict → (pirl params shaped like `template`, extras).

    `template` is a params tree or `param_shapes(config)` (only shapes and dtypes are read);
    leaves are cast to the template's dtype. LoRA leaves are not in PyTorch checkpoints and are
    left out of the result (merge with freshly initialized ones). Extras are the tensors no param
    used, keyed by their original names, and are logged.
    """
    names = canonical_names(tensors)
    used: set[str] = set()
    flat = {}
    for path, spec in _flat(template).items():
        rule = torch_rule(path)
        if rule is None:
            continue
        keys, kind, stacked = rule
        layers = range(spec.shape[0]) if stacked else [None]
        slice_shape = tuple(spec.shape[1:]) if stacked else tuple(spec.shape)
        pieces = []
        for i in layers:
            wanted = [k.format(i=i) for k in keys]
            if wanted == [EMBED] and EMBED not in names and TIED_HEAD in names:
                wanted = [TIED_HEAD]  # tied: either name holds the embedding
            if absent := [k for k in wanted if k not in names]:
                raise validation.CheckpointError(
                    f"checkpoint has no tensor {names.get(absent[0], absent[0])} for {path}"
                )
            arrays = [np.asarray(tensors[names[k]]) for k in wanted]
            try:
                piece = _KINDS[kind][0](arrays, slice_shape)
            except ValueError:
                piece = None
            if piece is None or piece.shape != slice_shape:
                found = ", ".join(f"{names[k]} {list(a.shape)}" for k, a in zip(wanted, arrays, strict=True))
                raise validation.CheckpointError(f"{path}: expected {list(slice_shape)} per slice, found {found}")
            pieces.append(piece)
            used.update(wanted)
        value = np.stack(pieces) if stacked else pieces[0]
        if not jnp.issubdtype(value.dtype, jnp.floating):  # numpy alone does not know bfloat16
            raise validation.CheckpointError(f"{path}: expected a floating tensor, found {value.dtype}")
        flat[tuple(path.split("/"))] = value.astype(spec.dtype)
    if TIED_HEAD in names and EMBED in used:
        used.add(TIED_HEAD)
        head, embed = tensors[names[TIED_HEAD]], tensors[names[EMBED]]
        if head.shape != embed.shape or not np.array_equal(head, embed):
            logger.warning("%s differs from %s; the model ties them and uses the latter", TIED_HEAD, EMBED)
    extras = {names[k]: np.asarray(tensors[names[k]]) for k in names if k not in used}
    if extras:
        logger.warning("PyTorch checkpoint keys with no model param (returned as extras): %s", sorted(extras))
    return traverse_util.unflatten_dict(flat), extras


def load_torch(path: str | os.PathLike, template) -> tuple[dict, dict[str, np.ndarray]]:
    """load_safetensors + from_torch."""
    return from_torch(load_safetensors(path), template)


def params_from_torch(tensors: Mapping[str, np.ndarray], config: pi0.Pi0Config, *, seed: int = 0, check_dtype=True):
    """PyTorch-named tensors → (params for `config`, extras). PyTorch checkpoints hold no LoRA
    weights: for a LoRA config those start fresh, normal(0.01) as openpi initializes them (from
    `seed`). Raises CheckpointError for a missing tensor or a shape that does not fit."""
    template = pi0.param_shapes(config)
    converted, extras = from_torch(tensors, template)
    flat = traverse_util.flatten_dict(converted)
    rng = np.random.default_rng(seed)
    for key, spec in traverse_util.flatten_dict(template).items():
        if key not in flat and any("lora" in part for part in key):
            flat[key] = (0.01 * rng.standard_normal(spec.shape)).astype(spec.dtype)
    params = traverse_util.unflatten_dict(flat)
    validation.validate_params(params, template, check_dtype=check_dtype)
    return params, extras


def load_pytorch(
    path: str | os.PathLike, config: pi0.Pi0Config, *, seed: int = 0
) -> tuple[dict, dict[str, np.ndarray]]:
    """PyTorch safetensors (local, hf://, gs://; single or sharded) → (params for `config`, extras).

    Extras are checkpoint tensors the model has no place for (e.g. an RL value head); LoRA weights
    start fresh (``params_from_torch``).
    """
    return params_from_torch(load_safetensors(remote.resolve_path(path)), config, seed=seed)
