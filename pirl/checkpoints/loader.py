"""One loader for every checkpoint layout pirl starts from, recognised by its files (no format flag).

    openpi       `params/` (orbax) + `assets/<asset_id>/norm_stats.json`: openpi's JAX checkpoints
                 (gs://openpi-assets/checkpoints/pi05_libero, ...), pirl.sft's output, openpi exports.
    safetensors  `model.safetensors` or `model.safetensors.index.json` (shards) in openpi-PyTorch /
                 reference naming, norm stats at `<dir>/<asset_id>/norm_stats.json` (the reference's
                 Hugging Face checkpoints, e.g. RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT with
                 physical-intelligence/libero/norm_stats.json) or `<dir>/assets/<asset_id>/...`
                 (openpi's PyTorch conversions); RL checkpoints add the critic (see heads).
    lerobot      the same weights under `model.` with LeRobot's config.json and processor files
                 (see pirl.checkpoints.lerobot).
    run          a pirl run directory: its latest run checkpoint (or a given iteration), with the
                 norm stats and conventions the run trained with (see pirl.checkpoints.run).

The architecture comes from the weights' shapes (π0 vs π0.5, widths, depths, vision tower, image
size, action width, vocabulary) and from the files that record more (action horizon, prompt
length, discrete state input: a LeRobot config.json and its preprocessor, the config.json of an
openpi PyTorch conversion or a pirl export, a run's run.json). What no file records comes from the
caller's settings. PyTorch weights do not record attention heads apart from the head size: the
Gemma / SigLIP size whose other dims match is taken, the caller's own first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from pirl.checkpoints import heads as heads_lib
from pirl.checkpoints import lerobot, openpi, pytorch, remote, run, validation
from pirl.data import norm_stats as ns
from pirl.models import gemma, pi0, siglip

logger = logging.getLogger(__name__)

LAYOUTS = ("openpi", "safetensors", "lerobot", "run")
HEAD_NAMES = ("value_head", "noise_head")
CONFIG = "config.json"
# Pi0Config fields that a config file may record, beyond what the weights' shapes give.
RECORDABLE = ("action_horizon", "max_token_len", "discrete_state_input")
# Tensors PyTorch π0 checkpoints carry that the model never uses: the action expert's LM head
# (GemmaForCausalLM keeps one after its embedding is dropped; openpi's PyTorch loader wants it).
UNUSED = (pytorch.EXPERT_HEAD,)


@dataclasses.dataclass
class Checkpoint:
    """A loaded starting point. ``params`` is the π0 tree (openpi's paths, numpy, the stored
    dtypes); ``heads`` the RL heads the files carry (pirl trees, maybe none); ``recorded`` the
    Pi0Config fields the files record beyond shapes, with the file that says so."""

    source: str
    path: pathlib.Path
    layout: str
    config: pi0.Pi0Config
    params: dict
    heads: dict
    norm_stats: dict[str, ns.NormStats]
    asset_id: str
    recorded: dict[str, tuple[object, str]]
    record: dict | None = None  # a run directory's run.json
    step: int | None = None  # a run directory's iteration


def detect(path: pathlib.Path) -> str:
    """The layout of a local checkpoint directory, from its files."""
    if not path.exists():
        raise validation.CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise validation.CheckpointError(f"{path}: a checkpoint is a directory, not a file")
    if run.is_run(path):
        return "run"
    if (path / "params").is_dir():
        return "openpi"
    if (path / pytorch.SINGLE_FILE).is_file() or (path / pytorch.INDEX_FILE).is_file():
        if lerobot.read_config(path) is not None:
            return "lerobot"
        return "safetensors"
    found = sorted(p.name for p in path.iterdir())[:8]
    raise validation.CheckpointError(
        f"{path}: no params/ (openpi), {pytorch.SINGLE_FILE} or {pytorch.INDEX_FILE} (PyTorch, LeRobot) "
        f"or {run.RECORD} + {run.CHECKPOINTS}/ (pirl run); found {found or 'an empty directory'}"
    )


# ---------------------------------------------------------------- norm stats


def find_norm_stats(path: pathlib.Path, asset_id: str = "") -> tuple[str, dict[str, ns.NormStats]]:
    """(asset id, norm stats) from `<path>/assets/<id>/norm_stats.json` or `<path>/<id>/norm_stats.json`;
    without ``asset_id`` the directory must hold exactly one."""
    if asset_id:
        for base in (path / "assets", path):
            if (base / asset_id / ns.FILENAME).is_file():
                return asset_id, validation.load_norm_stats(base / asset_id)
    found = {}
    for file in sorted(path.rglob(ns.FILENAME)):
        rel = file.parent.relative_to(path)
        if rel.parts[:1] == ("assets",):
            rel = pathlib.Path(*rel.parts[1:])
        if rel.parts:
            found.setdefault(str(rel), file.parent)
    if asset_id:
        raise validation.CheckpointError(
            f"{path}: no norm stats for asset id {asset_id!r}; norm stats exist for {sorted(found) or 'no asset'}"
        )
    if len(found) != 1:
        what = f"several asset ids {sorted(found)}: set model.asset_id" if found else f"no {ns.FILENAME} under it"
        raise validation.CheckpointError(f"{path}: no norm stats chosen ({what})")
    ((asset, directory),) = found.items()
    return asset, validation.load_norm_stats(directory)


# ---------------------------------------------------------------- architecture from PyTorch shapes


def _count(names, prefix: str) -> int:
    return sum(1 for n in names if n.startswith(prefix) and n.endswith(".self_attn.q_proj.weight"))


def _match(kind: str, table, first: list, dims: dict, resolve, shape_of) -> object:
    """The first size (``first`` then the registered ``table``) whose shape_of(size) is ``dims``."""
    for name in [*first, *table]:
        try:
            size = resolve(name)
        except ValueError:
            continue
        if shape_of(size) == dims:
            return name
    raise validation.CheckpointError(
        f"no {kind} size has {dims} (weights do not record heads apart from head size): name it in the config"
    )


def config_from_torch(tensors: Mapping[str, np.ndarray], hint: pi0.Pi0Config, recorded: Mapping) -> dict:
    """Pi0Config size fields of PyTorch-named weights: pi05, the Gemma and SigLIP sizes, action
    width, image size, vocabulary."""
    names = pytorch.canonical_names(tensors)

    def shape(name: str) -> tuple[int, ...]:
        if name not in names:
            raise validation.CheckpointError(f"checkpoint has no tensor {name} (needed to tell the architecture)")
        return tuple(np.shape(tensors[names[name]]))

    def gemma_dims(base: str) -> dict:
        layer = base + "layers.0."
        return {
            "depth": _count(names, base + "layers."),
            "width": shape(layer + "self_attn.q_proj.weight")[1],
            "mlp_dim": shape(layer + "mlp.gate_proj.weight")[0],
            "heads×head_dim": shape(layer + "self_attn.q_proj.weight")[0],
            "kv_heads×head_dim": shape(layer + "self_attn.k_proj.weight")[0],
        }

    def gemma_of(c: gemma.GemmaConfig) -> dict:
        return {
            "depth": c.depth,
            "width": c.width,
            "mlp_dim": c.mlp_dim,
            "heads×head_dim": c.num_heads * c.head_dim,
            "kv_heads×head_dim": c.num_kv_heads * c.head_dim,
        }

    vis = pytorch.VISION
    patch = shape(vis + "embeddings.patch_embedding.weight")
    vision_dims = {
        "depth": _count(names, vis + "encoder.layers."),
        "width": patch[0],
        "mlp_dim": shape(vis + "encoder.layers.0.mlp.fc1.weight")[0],
        "patch": patch[2],
    }
    embed = pytorch.EMBED if pytorch.EMBED in names else pytorch.TIED_HEAD

    def first(field: str) -> list:
        return [v for v in (getattr(hint, field), recorded.get(field)) if v is not None]

    return dict(
        pi05="time_mlp_in.weight" in names,
        paligemma_variant=_match(
            "Gemma (VLM)",
            gemma.VARIANTS,
            first("paligemma_variant"),
            gemma_dims(pytorch.LANGUAGE),
            gemma.get_gemma_config,
            gemma_of,
        ),
        action_expert_variant=_match(
            "Gemma (action expert)",
            gemma.VARIANTS,
            first("action_expert_variant"),
            gemma_dims(pytorch.EXPERT),
            gemma.get_gemma_config,
            gemma_of,
        ),
        vision_variant=_match(
            "SigLIP",
            siglip.VARIANTS,
            first("vision_variant"),
            vision_dims,
            siglip.get_siglip_config,
            lambda c: {"depth": c.depth, "width": c.width, "mlp_dim": c.mlp_dim, "patch": c.patch_size},
        ),
        action_dim=shape("action_in_proj.weight")[1],
        image_size=math.isqrt(shape(vis + "embeddings.position_embedding.weight")[0]) * patch[2],
        vocab_size=shape(embed)[0],
    )


# ---------------------------------------------------------------- recorded conventions


def _config_file(path: pathlib.Path) -> dict[str, tuple[object, str]]:
    """What a config.json beside the weights records: openpi's PyTorch conversion writes
    action_horizon and the Gemma variants (examples/convert_jax_model_to_pytorch.py); pirl's
    exports add max_token_len and discrete_state_input."""
    file = path / CONFIG
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise validation.CheckpointError(f"{file} is not JSON: {e}") from None
    keys = (*RECORDABLE, "paligemma_variant", "action_expert_variant", "vision_variant")
    return {k: (data[k], str(file)) for k in keys if isinstance(data, dict) and data.get(k) is not None}


def _build_config(sizes: dict, recorded: Mapping, settings: Mapping) -> pi0.Pi0Config:
    kw = {k: v for k, v in settings.items() if v is not None}
    kw.update({k: v for k, (v, _) in recorded.items() if k in RECORDABLE})
    kw.update(sizes)
    try:
        return pi0.Pi0Config(**kw)
    except (TypeError, ValueError) as e:
        raise validation.CheckpointError(f"the checkpoint's model is not a valid π0 config: {e}") from None


def _split_heads(tree: dict) -> tuple[dict, dict]:
    return {k: v for k, v in tree.items() if k not in HEAD_NAMES}, {k: v for k, v in tree.items() if k in HEAD_NAMES}


def _from_weights(tensors: dict, config: pi0.Pi0Config, seed: int) -> dict:
    return pytorch.params_from_torch(tensors, config, seed=seed, check_dtype=False)[0]


# ---------------------------------------------------------------- the loader


def load(
    source: str | os.PathLike,
    hint: pi0.Pi0Config,
    *,
    settings: Mapping[str, object] | None = None,
    asset_id: str = "",
    step: int | None = None,
    seed: int = 0,
) -> Checkpoint:
    """Loads any supported layout (local, hf://, gs://).

    ``hint``: the configured model; its sizes are tried first where weights leave a choice (LoRA
    variants, heads). ``settings``: Pi0Config fields to use where no file records them
    (action_horizon, max_token_len, discrete_state_input, dtype, remat; None = Pi0Config default).
    ``asset_id`` picks the norm stats when several exist; ``step`` a run's iteration.
    Raises CheckpointError (one line naming the file and what is missing or does not fit)."""
    settings = dict(settings or {})
    path = remote.resolve_path(source)
    layout = detect(path)
    record = None
    found_step = None
    if layout == "run":
        record = run.read_record(path)
        found_step, tree = run.restore_params(path, step)
        if "model" not in tree:
            raise validation.CheckpointError(f"{path}: run checkpoint {found_step} holds no 'model' params")
        params, heads = tree["model"], {k: v for k, v in tree.items() if k != "model"}
        recorded = {k: (v, str(path / run.RECORD)) for k, v in record["model"].items() if k in RECORDABLE}
        config = _build_config(_shape_fields(params), recorded, settings)
        norm, asset = run.norm_stats(path, record), record["start"]["asset_id"]
    elif layout == "openpi":
        params, heads = _split_heads(openpi.restore_params(path))
        recorded = _config_file(path)
        config = _build_config(_shape_fields(params), recorded, settings)
        asset, norm = find_norm_stats(path, asset_id)
    else:
        tensors = pytorch.load_safetensors(path)
        norm = None
        if layout == "lerobot":
            cfg = lerobot.read_config(path)
            recorded = {k: (v, str(path / lerobot.CONFIG)) for k, v in lerobot.recorded(path, cfg).items()}
            norm = lerobot.norm_stats(path, tensors)
            asset = "lerobot"
            tensors = {k: v for k, v in tensors.items() if k not in lerobot.buffer_keys(tensors)}
            tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
        else:
            recorded = _config_file(path)
            tensors |= _other_safetensors(path)
        heads, tensors = heads_lib.heads_from_torch(tensors)
        tensors = {k: v for k, v in tensors.items() if k not in UNUSED}
        sizes = config_from_torch(tensors, hint, {k: v for k, (v, _) in recorded.items()})
        recorded = {k: v for k, v in recorded.items() if k in RECORDABLE}
        config = _build_config(sizes, recorded, settings)
        try:
            params = _from_weights(tensors, config, seed)
        except validation.CheckpointError as e:
            raise validation.CheckpointError(f"{path}: {e}") from None
        if norm is None:
            asset, norm = find_norm_stats(path, asset_id)
    if layout in ("run", "openpi"):
        validation.validate_params(params, pi0.param_shapes(config), check_dtype=False)
    return Checkpoint(os.fspath(source), path, layout, config, params, heads, norm, asset, recorded, record, found_step)


def _other_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors of the directory's *.safetensors files beside the model's (an RL critic in its own
    file): the reference loads every *.safetensors of a checkpoint directory together."""
    model_files = {pytorch.SINGLE_FILE}
    if (path / pytorch.INDEX_FILE).is_file():
        model_files |= set(json.loads((path / pytorch.INDEX_FILE).read_text()).get("weight_map", {}).values())
    out: dict[str, np.ndarray] = {}
    for file in sorted(path.glob("*.safetensors")):
        if file.name not in model_files:
            out |= pytorch.load_safetensors(file)
    return out


def _shape_fields(params: dict) -> dict:
    """Pi0Config size fields of an openpi params tree (see openpi.infer_config)."""
    c = openpi.infer_config(params)
    fields = ("pi05", "paligemma_variant", "action_expert_variant", "vision_variant", "action_dim")
    return {f: getattr(c, f) for f in (*fields, "image_size", "vocab_size")}
