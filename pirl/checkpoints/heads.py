"""RL heads beside π0 in PyTorch checkpoints ⇄ pirl's head trees, and fitting found heads to the
configured ones (whole or not at all).

The reference system's RL checkpoints carry its critic and Flow-Noise std head next to the π0
weights (rlinf/models/embodiment/openpi/openpi_action_model.py, OpenPi0ForRLActionPrediction):
  value_head  ValueHead: nn.Sequential of Linear/activation pairs, so its Linears are
              `value_head.mlp.{0,2,4,...}` and the last one has a bias (bias_last=True)
              (rlinf/models/embodiment/modules/value_head.py);
  noise_head  ExploreNoiseNet: `noise_head.mlp_logvar.moduleList.{i}.linear_1` per layer, plus the
              buffers `noise_head.logvar_min` / `logvar_max` (from noise_logvar_range, not weights)
              (rlinf/models/embodiment/modules/explore_noise_net.py).
pirl's heads (pirl.rl.critic.MLPHead) are Flax Dense stacks `dense_0 … dense_{n−1}`, `out`, each
`{kernel [in, out], bias [out]}`: kernel = weight.T.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

logger = logging.getLogger(__name__)

# head name → (regex of a Linear's torch prefix with the layer number as group 1, index → torch prefix)
_TORCH = {
    "value_head": (re.compile(r"value_head\.mlp\.(\d+)"), lambda i: f"value_head.mlp.{2 * i}"),
    "noise_head": (
        re.compile(r"noise_head\.mlp_logvar\.moduleList\.(\d+)\.linear_1"),
        lambda i: f"noise_head.mlp_logvar.moduleList.{i}.linear_1",
    ),
}
# Tensors that belong to a head but are not weights (configuration kept as buffers).
_BUFFERS = ("noise_head.logvar_min", "noise_head.logvar_max")


def _layer_names(n: int) -> list[str]:
    return [f"dense_{i}" for i in range(n - 1)] + ["out"]


def heads_from_torch(tensors: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(heads found as pirl trees, the tensors no head used).

    A head is returned when its Linears are numbered without gaps; a Linear without a bias
    keeps only its kernel (fit_heads then reports the missing bias)."""
    heads: dict[str, dict] = {}
    used: set[str] = set(k for k in tensors if k in _BUFFERS)
    for name, (pattern, _) in _TORCH.items():
        layers: dict[int, dict] = {}
        for key in tensors:
            prefix, _, leaf = key.rpartition(".")
            m = pattern.fullmatch(prefix)
            if m and leaf in ("weight", "bias"):
                layers.setdefault(int(m.group(1)), {})[leaf] = key
        if not layers:
            continue
        order = sorted(layers)
        tree = {}
        for layer, index in zip(_layer_names(len(order)), order, strict=True):
            keys = layers[index]
            entry = {}
            if "weight" in keys:
                entry["kernel"] = np.asarray(tensors[keys["weight"]]).T
            if "bias" in keys:
                entry["bias"] = np.asarray(tensors[keys["bias"]])
            tree[layer] = entry
            used.update(keys.values())
        heads[name] = tree
    return heads, {k: v for k, v in tensors.items() if k not in used}


def heads_to_torch(heads: Mapping[str, dict]) -> dict[str, np.ndarray]:
    """pirl head trees → the reference's PyTorch names (weight = kernel.T)."""
    out = {}
    for name, tree in heads.items():
        if name not in _TORCH:
            raise ValueError(f"no PyTorch name is known for head {name!r}")
        to_prefix = _TORCH[name][1]
        for i, layer in enumerate(_layer_names(len(tree))):
            if layer not in tree:
                raise ValueError(f"{name}: expected layers {_layer_names(len(tree))}, found {sorted(tree)}")
            out[f"{to_prefix(i)}.weight"] = np.ascontiguousarray(np.asarray(tree[layer]["kernel"]).T)
            out[f"{to_prefix(i)}.bias"] = np.asarray(tree[layer]["bias"])
    return out


def _misfit(found: dict, want: dict) -> str | None:
    """The first difference between two head trees (paths and shapes), or None."""
    got = traverse_util.flatten_dict(found, sep="/")
    exp = traverse_util.flatten_dict(want, sep="/")
    for key in sorted(got.keys() | exp.keys()):
        if key not in got:
            return f"{key} missing (expected {tuple(np.shape(exp[key]))})"
        if key not in exp:
            return f"{key} unexpected (found {tuple(np.shape(got[key]))})"
        if tuple(np.shape(got[key])) != tuple(np.shape(exp[key])):
            return f"{key} has shape {tuple(np.shape(got[key]))}, the configured head {tuple(np.shape(exp[key]))}"
    return None


def fit_heads(found: Mapping[str, dict], configured: Mapping[str, dict], source: str) -> dict:
    """The configured heads, each replaced by the checkpoint's when its paths and shapes all match.

    One log line per head found: loaded, or why it was skipped (a fresh head then stands in: a
    head is never half-loaded). A found head the policy config has no place for is reported too.
    Loaded leaves are float32 (trainable state never takes a file's dtype)."""
    out = dict(configured)
    for name, tree in found.items():
        if name not in configured:
            logger.warning("%s: %s is not used by this policy config (skipped)", source, name)
            continue
        problem = _misfit(tree, configured[name])
        if problem is None:
            out[name] = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(tree).items()}
            out[name] = traverse_util.unflatten_dict(out[name])
            shapes = [tuple(np.shape(v["kernel"])) for v in tree.values()]
            logger.info("%s: loaded %s from the checkpoint (kernels %s)", source, name, shapes)
        else:
            logger.warning("%s: %s does not fit the configured one (%s): starting it fresh", source, name, problem)
    return out
