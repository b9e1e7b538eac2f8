"""LeRobot π0 / π0.5 policy directories: what their files record, and writing one.

A LeRobot policy directory (`PreTrainedPolicy.save_pretrained`, lerobot ≥ 0.4; facts from lerobot
0.6.1's source) holds
  config.json                 draccus dump of PI0Config / PI05Config: "type" ("pi0" | "pi05"),
                              paligemma_variant, action_expert_variant, chunk_size (openpi's
                              action_horizon), n_action_steps, max_state_dim / max_action_dim (the
                              padded width), tokenizer_max_length, num_inference_steps,
                              input_features / output_features, normalization_mapping
                              (lerobot/policies/pi0/configuration_pi0.py);
  model.safetensors           openpi-PyTorch names under `model.` (PI0Policy.model is PI0Pytorch);
  policy_preprocessor.json    the input pipeline by registry name (lerobot/processor/pipeline.py,
                              DataProcessorPipeline.get_config); its `normalizer_processor` step's
                              stats are in `policy_preprocessor_step_<i>_normalizer_processor.
                              safetensors` as `<feature>.<stat>` (normalize_processor.py, state_dict);
  policy_postprocessor.json   likewise, with the `unnormalizer_processor` step.
Before processors (lerobot ≤ 0.3) the stats were buffers in the weights file,
`normalize_inputs.buffer_observation_state.mean` and the like
(lerobot/processor/migrate_policy_normalization.py, extract_normalization_stats).

The prompt/state convention is the preprocessor's: a `pi05_prepare_state_tokenizer_processor_step`
writes the binned state into the prompt (π0.5 with discrete state); `pi0_new_line_processor` is
the plain prompt (lerobot/policies/pi05/processor_pi05.py, pi0/processor_pi0.py).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import safetensors.numpy

from pirl.checkpoints import validation
from pirl.data import norm_stats as ns

CONFIG = "config.json"
PREPROCESSOR = "policy_preprocessor"
POSTPROCESSOR = "policy_postprocessor"
STATE, ACTION = "observation.state", "action"
IMAGE_PREFIX = "observation.images."
TYPES = ("pi0", "pi05")
# pirl's names for the two keys of norm_stats.json ⇄ LeRobot's feature names.
_FEATURES = {"state": STATE, "actions": ACTION}
_STATS = ("mean", "std", "q01", "q99")
_BUFFER_PREFIXES = ("normalize_inputs.buffer_", "normalize_targets.buffer_", "unnormalize_outputs.buffer_")
TOKENIZER = "google/paligemma-3b-pt-224"  # LeRobot's PaliGemma tokenizer (processor_pi0.py)


def read_config(directory: pathlib.Path) -> dict | None:
    """config.json of a LeRobot π0/π0.5 policy, or None when the directory is not one."""
    file = directory / CONFIG
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise validation.CheckpointError(f"{file} is not JSON: {e}") from None
    return config if isinstance(config, dict) and config.get("type") in TYPES else None


def _steps(directory: pathlib.Path, name: str) -> list[dict] | None:
    file = directory / f"{name}.json"
    if not file.is_file():
        return None
    try:
        return list(json.loads(file.read_text())["steps"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise validation.CheckpointError(f"{file} is not a LeRobot processor pipeline with 'steps': {e}") from None


def recorded(directory: pathlib.Path, config: Mapping) -> dict:
    """What a LeRobot policy directory records beyond the weights' shapes, in pirl's Pi0Config
    names: pi05, paligemma_variant, action_expert_variant, action_horizon, max_token_len,
    discrete_state_input (the preprocessor's, else LeRobot's default for the policy type)."""
    out: dict = {"pi05": config["type"] == "pi05"}
    for theirs, ours in (
        ("paligemma_variant", "paligemma_variant"),
        ("action_expert_variant", "action_expert_variant"),
        ("chunk_size", "action_horizon"),
        ("tokenizer_max_length", "max_token_len"),
    ):
        if config.get(theirs) is not None:
            out[ours] = config[theirs]
    names = [s.get("registry_name") for s in _steps(directory, PREPROCESSOR) or []]
    if "pi05_prepare_state_tokenizer_processor_step" in names:
        out["discrete_state_input"] = True
    elif "pi0_new_line_processor" in names:
        out["discrete_state_input"] = False
    else:
        out["discrete_state_input"] = out["pi05"]
    return out


def _to_norm_stats(flat: Mapping[str, np.ndarray], source: str) -> dict[str, ns.NormStats]:
    out = {}
    for ours, theirs in _FEATURES.items():
        stats = {
            s: np.asarray(flat[f"{theirs}.{s}"], np.float32).reshape(-1) for s in _STATS if f"{theirs}.{s}" in flat
        }
        if "mean" not in stats or "std" not in stats:
            found = sorted(k for k in flat if k.startswith(theirs + "."))
            raise validation.CheckpointError(f"{source}: no {theirs} mean/std (found {found or 'nothing'})")
        if ("q01" in stats) != ("q99" in stats):
            stats.pop("q01", None), stats.pop("q99", None)
        out[ours] = ns.NormStats(**stats)
    return out


def norm_stats(directory: pathlib.Path, tensors: Mapping[str, np.ndarray]) -> dict[str, ns.NormStats] | None:
    """The normalization stats of a LeRobot policy: its preprocessor's normalizer state, else the
    weights file's normalization buffers (older LeRobot); None when it has neither."""
    for i, step in enumerate(_steps(directory, PREPROCESSOR) or []):
        if step.get("registry_name") != "normalizer_processor":
            continue
        file = directory / step.get("state_file", f"{PREPROCESSOR}_step_{i}_normalizer_processor.safetensors")
        if not file.is_file():
            raise validation.CheckpointError(
                f"{directory / (PREPROCESSOR + '.json')} names {file.name}, which is missing"
            )
        return _to_norm_stats(safetensors.numpy.load_file(file), str(file))
    flat = {}
    for key, value in tensors.items():
        for prefix in _BUFFER_PREFIXES:
            if key.startswith(prefix):
                feature, _, stat = key.removeprefix(prefix).rpartition(".")
                flat.setdefault(f"{feature.replace('_', '.')}.{stat}", value)
    return _to_norm_stats(flat, "normalization buffers in the weights file") if flat else None


def buffer_keys(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Weights-file keys that are normalization buffers, not model weights."""
    return [k for k in tensors if k.startswith(_BUFFER_PREFIXES)]


# ---------------------------------------------------------------- writing


def _feature(kind: str, shape: Sequence[int]) -> dict:
    return {"type": kind, "shape": list(shape)}


def write(
    directory: pathlib.Path,
    *,
    pi05: bool,
    paligemma_variant: str,
    action_expert_variant: str,
    action_horizon: int,
    n_action_steps: int,
    num_inference_steps: int,
    max_token_len: int,
    model_action_dim: int,
    image_size: int,
    cameras: Sequence[str],
    stats: Mapping[str, ns.NormStats],
    env_action_dim: int,
    norm: str,
    discrete_state_input: bool,
    dtype: str,
    delta_action_mask: Sequence[bool] = (),
) -> None:
    """config.json and the pre/post-processor files of a LeRobot policy directory (the weights are
    written by the caller as `model.safetensors`).

    Delta actions (``delta_action_mask``: action minus state on those dims) use LeRobot's relative
    actions (use_relative_actions, lerobot ≥ 0.5: processor/relative_action_processor.py); the dims
    kept absolute are named "gripper", the others "a<i>", so its name-based mask is pirl's."""
    mode = "QUANTILES" if norm == "quantile" else "MEAN_STD"
    inputs = {IMAGE_PREFIX + cam: _feature("VISUAL", (3, image_size, image_size)) for cam in cameras}
    inputs[STATE] = _feature("STATE", (stats["state"].dim,))
    outputs = {ACTION: _feature("ACTION", (env_action_dim,))}
    norm_map = {"VISUAL": "IDENTITY", "STATE": mode, "ACTION": mode}
    config = {
        "type": "pi05" if pi05 else "pi0",
        "n_obs_steps": 1,
        "input_features": inputs,
        "output_features": outputs,
        "device": "cpu",
        "use_amp": False,
        "push_to_hub": False,
        "paligemma_variant": paligemma_variant,
        "action_expert_variant": action_expert_variant,
        "dtype": dtype,
        "chunk_size": action_horizon,
        "n_action_steps": n_action_steps,
        "max_state_dim": model_action_dim,
        "max_action_dim": model_action_dim,
        "num_inference_steps": num_inference_steps,
        "image_resolution": [image_size, image_size],
        "tokenizer_max_length": max_token_len,
        "normalization_mapping": norm_map,
    }
    relative = []
    if any(delta_action_mask):
        mask = list(delta_action_mask) + [False] * (env_action_dim - len(delta_action_mask))
        names = [f"a{i}" if m else "gripper" for i, m in enumerate(mask[:env_action_dim])]
        config |= {"use_relative_actions": True, "relative_exclude_joints": ["gripper"], "action_feature_names": names}
        relative = [
            {
                "registry_name": "relative_actions_processor",
                "config": {"enabled": True, "exclude_joints": ["gripper"], "action_names": names},
            }
        ]
    (directory / CONFIG).write_text(json.dumps(config, indent=4))

    flat = {}
    for ours, theirs in _FEATURES.items():
        for stat in _STATS:
            value = getattr(stats[ours], stat)
            if value is not None:
                flat[f"{theirs}.{stat}"] = np.asarray(value, np.float32)
    features = {**inputs, **outputs}
    tokenizer = {
        "registry_name": "tokenizer_processor",
        "config": {
            "max_length": max_token_len,
            "task_key": "task",
            "padding_side": "right",
            "padding": "max_length",
            "truncation": True,
            "tokenizer_name": TOKENIZER,
        },
    }
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    rename = {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}}
    batch = {"registry_name": "to_batch_processor", "config": {}}

    def normalizer(index: int, name: str, feats: dict) -> dict:
        state_file = (
            f"{PREPROCESSOR if name == 'normalizer_processor' else POSTPROCESSOR}_step_{index}_{name}.safetensors"
        )
        keep = {k: v for k, v in flat.items() if k.rsplit(".", 1)[0] in feats}
        safetensors.numpy.save_file(keep, directory / state_file)
        return {
            "registry_name": name,
            "config": {"eps": 1e-8, "features": feats, "norm_map": norm_map},
            "state_file": state_file,
        }

    # The step orders of LeRobot's own pipelines (make_pi05_pre_post_processors: normalize before
    # binning the state into the prompt; make_pi0_pre_post_processors: prompt first).
    if discrete_state_input:
        state_step = {
            "registry_name": "pi05_prepare_state_tokenizer_processor_step",
            "config": {"max_state_dim": model_action_dim, "task_key": "task"},
        }
        norm_at = 2 + len(relative)
        pre = [rename, batch, *relative, normalizer(norm_at, "normalizer_processor", features), state_step, tokenizer]
        pre.append(device)
    else:
        newline = {"registry_name": "pi0_new_line_processor", "config": {}}
        pre = [rename, batch, newline, tokenizer, device, *relative]
        pre.append(normalizer(len(pre), "normalizer_processor", features))
    post = [normalizer(0, "unnormalizer_processor", outputs)]
    if relative:
        post.append({"registry_name": "absolute_actions_processor", "config": {"enabled": True}})
    post.append(device)
    (directory / f"{PREPROCESSOR}.json").write_text(json.dumps({"name": PREPROCESSOR, "steps": pre}, indent=2))
    (directory / f"{POSTPROCESSOR}.json").write_text(json.dumps({"name": POSTPROCESSOR, "steps": post}, indent=2))
