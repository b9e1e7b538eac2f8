"""Host-side image operations on uint8 camera frames (numpy + Pillow, no JAX).

Axis letters: B batch (any number of leading axes), H/W height/width, C channels (3).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image


def _check_uint8(images: np.ndarray, name: str = "images") -> None:
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 [..., H, W, 3], got {images.dtype} {images.shape}")


def resize_with_pad(images: UInt8[np.ndarray, "*b H W C"], height: int, width: int) -> UInt8[np.ndarray, "*b h w C"]:
    """Resizes to fit inside (height, width) keeping the aspect ratio, then pads with black (0).

    The scale is the one that makes the tighter side fit: ratio = max(W/width, H/height), new size
    (int(H/ratio), int(W/ratio)), bilinear (Pillow, as openpi's serving client does). Padding is
    split evenly with the odd pixel at the bottom/right. Frames already at the target size are
    returned unchanged.
    """
    images = np.asarray(images)
    _check_uint8(images)
    cur_h, cur_w = images.shape[-3:-1]
    if (cur_h, cur_w) == (height, width):
        return images
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    flat = images.reshape(-1, cur_h, cur_w, 3)
    out = np.zeros((flat.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(flat):
        resized = Image.fromarray(frame).resize((new_w, new_h), resample=Image.BILINEAR)
        out[i, top : top + new_h, left : left + new_w] = np.asarray(resized)
    return out.reshape(*images.shape[:-3], height, width, 3)


def to_float(images: UInt8[np.ndarray, "*b H W C"]) -> Float[np.ndarray, "*b H W C"]:
    """uint8 [0, 255] → float32 [-1, 1] as x / 255 * 2 - 1 (the models' input range)."""
    _check_uint8(np.asarray(images))
    return np.asarray(images, np.float32) / 255.0 * 2.0 - 1.0


def rotate_180(images: UInt8[np.ndarray, "*b H W C"]) -> UInt8[np.ndarray, "*b H W C"]:
    """Rotates by 180° (flips both axes): LIBERO's and MetaWorld's corner cameras render upside
    down and mirrored (openpi examples/libero/main.py, RLinf's MetaWorld env, LeRobot's)."""
    return images[..., ::-1, ::-1, :]


def flip_vertical(images: UInt8[np.ndarray, "*b H W C"]) -> UInt8[np.ndarray, "*b H W C"]:
    """Flips rows only (an image stored bottom row first; not MetaWorld's renders, which need
    ``rotate_180``)."""
    return images[..., ::-1, :, :]


ORIENTATIONS = {"none": lambda x: x, "rot180": rotate_180, "flip_vertical": flip_vertical}
