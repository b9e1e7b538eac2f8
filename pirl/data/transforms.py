"""Raw simulator observations → model input batch, and model outputs → simulator actions.

These two functions (`make_model_inputs`, `to_env_actions`, plus their training-time inverse
`to_model_actions`) are the only place the observation / action conventions live: camera slots,
image orientation and size, state and action normalization, delta actions, padding and slicing,
and prompt tokenization. Host-side numpy only; the result crosses to the device in one place.

Axis letters: B batch, H/W image height/width, S env state dims, E env action dims,
A model action dims (32), Ha action horizon, C executed chunk, L prompt tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np
from jaxtyping import Float, UInt8

from pirl.data import images as img
from pirl.data import norm_stats as ns

# Camera slots in the models' prefix order (pirl.models.pi0.IMAGE_KEYS; repeated here so that host
# code never imports the JAX model).
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


class Tokenizer(Protocol):
    def tokenize(
        self, prompts: Sequence[str], max_len: int, state: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """How one simulator's observations and actions map to a model's.

    cameras: (env camera name, model slot) pairs; slots without a camera are black and masked.
    orientation: applied to raw frames first ("rot180": LIBERO's and MetaWorld's raw renders).
    norm: "zscore" (π0) or "quantile" (π0.5) for both state and actions.
    delta_action_mask: dims whose actions are relative to the state (training subtracted the
      state; inference adds it back); empty = absolute actions.
    action_chunk: how many of the Ha predicted actions the env executes (None = all).
    discrete_state_input: π0.5 prompt with the binned state ("Task: ..., State: ...;\\nAction: ");
      False gives openpi's plain prompt BOS + instruction + "\\n" (pi05_libero's, and the
      reference's π0.5 checkpoints'). The model config decides it (``ModelSpec``).
    """

    cameras: tuple[tuple[str, str], ...]
    env_action_dim: int
    image_size: tuple[int, int] = (224, 224)
    orientation: Literal["none", "rot180", "flip_vertical"] = "none"
    norm: ns.NormType = "zscore"
    delta_action_mask: tuple[bool, ...] = ()
    model_action_dim: int = 32
    action_chunk: int | None = None
    max_token_len: int = 48
    discrete_state_input: bool = False
    image_keys: tuple[str, ...] = IMAGE_KEYS

    def __post_init__(self):
        slots = [slot for _, slot in self.cameras]
        if unknown := [s for s in slots if s not in self.image_keys]:
            raise ValueError(f"camera slots {unknown} are not model slots {self.image_keys}")
        if len(set(slots)) != len(slots):
            raise ValueError(f"two cameras map to the same slot: {slots}")
        if self.orientation not in img.ORIENTATIONS:
            raise ValueError(f"orientation {self.orientation!r} not in {tuple(img.ORIENTATIONS)}")
        if self.env_action_dim > self.model_action_dim or len(self.delta_action_mask) > self.model_action_dim:
            raise ValueError("env action dims and the delta mask must fit in model_action_dim")


def bool_mask(*dims: int) -> tuple[bool, ...]:
    """(6, -1) → six True then one False: positive counts are True runs, negative False runs."""
    return tuple(d > 0 for d in dims for _ in range(abs(d)))


def libero(pi05: bool = False, image_size: tuple[int, int] = (224, 224)) -> TransformConfig:
    """openpi's LIBERO setup: agentview → base, wrist camera → left wrist, frames rotated 180°.

    pi0_libero: z-score, delta actions on the 6 arm dims, 48 prompt tokens. pi05_libero: quantile
    norm, absolute actions, 200 tokens, no discrete state in the prompt.
    """
    return TransformConfig(
        cameras=(("agentview_image", "base_0_rgb"), ("robot0_eye_in_hand_image", "left_wrist_0_rgb")),
        env_action_dim=7,
        image_size=image_size,
        orientation="rot180",
        norm="quantile" if pi05 else "zscore",
        delta_action_mask=() if pi05 else bool_mask(6, -1),
        max_token_len=200 if pi05 else 48,
    )


def metaworld(camera: str = "corner2", pi05: bool = False, image_size=(224, 224)) -> TransformConfig:
    """MetaWorld: one raw camera render (rotated 180°, as the reference and LeRobot turn it) → base
    slot, 4-d absolute actions, no discrete state in π0.5's prompt (the reference's pi05_metaworld)."""
    return TransformConfig(
        cameras=((camera, "base_0_rgb"),),
        env_action_dim=4,
        image_size=image_size,
        orientation="rot180",
        norm="quantile" if pi05 else "zscore",
        max_token_len=200 if pi05 else 48,
    )


def quat_to_axis_angle(quat: Float[np.ndarray, "*b 4"]) -> Float[np.ndarray, "*b 3"]:
    """Quaternion (x, y, z, w) → axis · angle, robosuite's convention (LIBERO's state).

    angle = 2 acos(w) with w clipped to [-1, 1], axis = xyz / sqrt(1 - w²); no sign
    canonicalization, so w < 0 gives angles in (π, 2π) exactly as the training data has them.
    The identity (sin(angle/2) = 0) maps to zeros.
    """
    quat = np.asarray(quat, np.float64)
    w = np.clip(quat[..., 3:], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    safe = np.where(den > 0.0, den, 1.0)
    return np.where(den > 0.0, quat[..., :3] * 2.0 * np.arccos(w) / safe, 0.0)


def libero_state(
    eef_pos: Float[np.ndarray, "*b 3"],
    eef_quat: Float[np.ndarray, "*b 4"],
    gripper_qpos: Float[np.ndarray, "*b 2"],
) -> Float[np.ndarray, "*b 8"]:
    """LIBERO's 8-d state: end-effector position, axis-angle orientation, two gripper fingers."""
    parts = [
        np.asarray(eef_pos, np.float64),
        quat_to_axis_angle(eef_quat),
        np.asarray(gripper_qpos, np.float64),
    ]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def pad_to_dim(x: Float[np.ndarray, "*b D"], dim: int) -> Float[np.ndarray, "*b P"]:
    """Zero-pads the last axis to `dim` (model padding of state and actions)."""
    if x.shape[-1] > dim:
        raise ValueError(f"cannot pad {x.shape[-1]} dims down to {dim}")
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])])


def _stats(norm_stats: Mapping[str, ns.NormStats], key: str) -> ns.NormStats:
    if key not in norm_stats:
        raise KeyError(f"norm stats have no {key!r} entry (found {sorted(norm_stats)})")
    return norm_stats[key]


def _delta(cfg: TransformConfig, state: np.ndarray) -> np.ndarray:
    """The per-dim offset [B, 1, len(mask)] that delta actions are relative to."""
    d = len(cfg.delta_action_mask)
    if state.shape[-1] < d:
        raise ValueError(f"delta_action_mask covers {d} dims but the state has {state.shape[-1]}")
    return np.where(np.asarray(cfg.delta_action_mask), state[:, None, :d], 0.0)


def make_model_inputs(
    cfg: TransformConfig,
    images: Mapping[str, UInt8[np.ndarray, "B H W 3"]],
    state: Float[np.ndarray, "B S"],
    prompts: Sequence[str],
    norm_stats: Mapping[str, ns.NormStats],
    tokenizer: Tokenizer,
    *,
    uint8_images: bool = False,
) -> dict:
    """A batch of raw env observations → the model's input batch (pirl.models.pi0.Observation's fields).

    Returns {"images": {slot: f32[B, h, w, 3] in [-1, 1]}, "image_masks": {slot: bool[B]},
    "state": f32[B, A], "tokenized_prompt": i32[B, L], "tokenized_prompt_mask": bool[B, L]}.
    ``uint8_images`` keeps the resized frames as uint8 (4× smaller, for rollout buffers); the
    device side maps them to [-1, 1] with the same x / 255 · 2 − 1 (``images.to_float``).
    """
    state = np.asarray(state, np.float32)
    if state.ndim != 2 or len(prompts) != state.shape[0]:
        raise ValueError(f"state must be [B, S] with one prompt per row; got {state.shape}, {len(prompts)} prompts")
    batch = state.shape[0]
    height, width = cfg.image_size
    orient = img.ORIENTATIONS[cfg.orientation]
    out_images, masks = {}, {}
    by_slot = {slot: cam for cam, slot in cfg.cameras}
    for slot in cfg.image_keys:
        if slot in by_slot:
            cam = by_slot[slot]
            if cam not in images:
                raise KeyError(f"observation has no camera {cam!r} (found {sorted(images)})")
            frames = np.asarray(images[cam])
            if frames.shape[0] != batch:
                raise ValueError(f"camera {cam!r} has batch {frames.shape[0]}, state has {batch}")
            resized = img.resize_with_pad(orient(frames), height, width)
            out_images[slot] = resized if uint8_images else img.to_float(resized)
            masks[slot] = np.ones(batch, bool)
        else:
            # Black in uint8 is -1 after scaling, as openpi feeds missing cameras; masked anyway.
            out_images[slot] = (
                np.zeros((batch, height, width, 3), np.uint8)
                if uint8_images
                else np.full((batch, height, width, 3), -1.0, np.float32)
            )
            masks[slot] = np.zeros(batch, bool)
    normed = ns.normalize(state, _stats(norm_stats, "state"), cfg.norm)
    # π0.5's prompt bins the normalized state before it is padded.
    ids, ids_mask = tokenizer.tokenize(prompts, cfg.max_token_len, normed if cfg.discrete_state_input else None)
    return {
        "images": out_images,
        "image_masks": masks,
        "state": pad_to_dim(normed, cfg.model_action_dim).astype(np.float32),
        "tokenized_prompt": np.asarray(ids, np.int32),
        "tokenized_prompt_mask": np.asarray(ids_mask, bool),
    }


def to_env_actions(
    cfg: TransformConfig,
    model_actions: Float[np.ndarray, "B Ha A"],
    state: Float[np.ndarray, "B S"],
    norm_stats: Mapping[str, ns.NormStats],
) -> Float[np.ndarray, "B C E"]:
    """Model output → env actions: unnormalize, add the state back on delta dims, keep the first
    `action_chunk` steps and `env_action_dim` dims."""
    model_actions = np.asarray(model_actions, np.float32)
    if model_actions.ndim != 3 or model_actions.shape[-1] != cfg.model_action_dim:
        raise ValueError(f"model actions must be [B, Ha, {cfg.model_action_dim}], got {model_actions.shape}")
    actions = ns.unnormalize(model_actions, _stats(norm_stats, "actions"), cfg.norm)
    if cfg.delta_action_mask:
        d = len(cfg.delta_action_mask)
        actions[..., :d] += _delta(cfg, np.asarray(state, np.float32))
    return actions[:, : cfg.action_chunk, : cfg.env_action_dim]


def to_model_actions(
    cfg: TransformConfig,
    env_actions: Float[np.ndarray, "B Ha E"],
    state: Float[np.ndarray, "B S"],
    norm_stats: Mapping[str, ns.NormStats],
) -> Float[np.ndarray, "B Ha A"]:
    """Demonstrated env actions → training targets (inverse of to_env_actions on the kept dims):
    subtract the state on delta dims, normalize, zero-pad to the model's action dim."""
    actions = np.array(env_actions, np.float32)
    if actions.ndim != 3:
        raise ValueError(f"env actions must be [B, Ha, E], got {actions.shape}")
    if cfg.delta_action_mask:
        d = len(cfg.delta_action_mask)
        actions[..., :d] -= _delta(cfg, np.asarray(state, np.float32))
    normed = ns.normalize(actions, _stats(norm_stats, "actions"), cfg.norm)
    return pad_to_dim(normed, cfg.model_action_dim).astype(np.float32)
