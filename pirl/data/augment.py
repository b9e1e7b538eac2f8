"""SFT-time image augmentation, on device (JAX).

As openpi trains: cameras whose slot name lacks "wrist" get a random crop of 95% of each side
resized back to full size and a random rotation within ±5°; every camera gets color jitter
(brightness 0.3, contrast 0.4, saturation 0.5). Jitter factors are drawn uniformly from
[1 - s, 1 + s] (torchvision's convention) and applied in that order; rotation fills with black.

Axis letters: B batch, H/W height/width, C channels (3).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    crop_fraction: float = 0.95
    max_rotation_deg: float = 5.0
    brightness: float = 0.3
    contrast: float = 0.4
    saturation: float = 0.5


def crop_resize(
    image: Float[Array, "H W C"], top: jax.Array, left: jax.Array, crop_h: int, crop_w: int
) -> Float[Array, "H W C"]:
    """Crops [top:top+crop_h, left:left+crop_w] and resizes it back to H×W (bilinear)."""
    height, width, channels = image.shape
    patch = jax.lax.dynamic_slice(image, (top, left, 0), (crop_h, crop_w, channels))
    return jax.image.resize(patch, (height, width, channels), method="bilinear")


def rotate(image: Float[Array, "H W C"], angle: jax.Array) -> Float[Array, "H W C"]:
    """Rotates by `angle` radians counter-clockwise (as displayed, row 0 on top) about the image
    center; bilinear sampling, black outside the source."""
    height, width, _ = image.shape
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    # Inverse map: each output pixel reads the source pixel rotated back by -angle. Rows grow
    # downwards, so a counter-clockwise turn on screen is clockwise in (x, y) array coordinates.
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_x = cx + cos * (xs - cx) - sin * (ys - cy)
    src_y = cy + sin * (xs - cx) + cos * (ys - cy)

    def channel(c):
        return jax.scipy.ndimage.map_coordinates(c, [src_y, src_x], order=1, mode="constant", cval=0.0)

    return jnp.stack([channel(image[..., i]) for i in range(image.shape[-1])], axis=-1)


def _gray(image: Float[Array, "H W C"]) -> Float[Array, "H W 1"]:
    # ITU-R 601 luma weights, the usual definition of "grayscale" for saturation/contrast.
    return (image @ jnp.array([0.299, 0.587, 0.114], image.dtype))[..., None]


def color_jitter(rng: PRNGKeyArray, image: Float[Array, "H W C"], cfg: AugmentConfig) -> Float[Array, "H W C"]:
    """Brightness, contrast, saturation jitter of an image in [0, 1]; result clipped to [0, 1]."""
    kb, kc, ks = jax.random.split(rng, 3)

    def factor(key, s):
        return jax.random.uniform(key, (), minval=max(0.0, 1.0 - s), maxval=1.0 + s)

    image = jnp.clip(image * factor(kb, cfg.brightness), 0.0, 1.0)
    mean = _gray(image).mean()
    image = jnp.clip((image - mean) * factor(kc, cfg.contrast) + mean, 0.0, 1.0)
    gray = _gray(image)
    return jnp.clip((image - gray) * factor(ks, cfg.saturation) + gray, 0.0, 1.0)


def _augment_one(
    rng: PRNGKeyArray, image: Float[Array, "H W C"], geometric: bool, cfg: AugmentConfig
) -> Float[Array, "H W C"]:
    k_top, k_left, k_angle, k_color = jax.random.split(rng, 4)
    height, width, _ = image.shape
    if geometric:
        crop_h, crop_w = int(height * cfg.crop_fraction), int(width * cfg.crop_fraction)
        top = jax.random.randint(k_top, (), 0, height - crop_h + 1)
        left = jax.random.randint(k_left, (), 0, width - crop_w + 1)
        image = crop_resize(image, top, left, crop_h, crop_w)
        max_angle = math.radians(cfg.max_rotation_deg)
        image = rotate(image, jax.random.uniform(k_angle, (), minval=-max_angle, maxval=max_angle))
    return color_jitter(k_color, image, cfg)


def augment_images(
    rng: PRNGKeyArray, images: dict[str, Float[Array, "B H W C"]], cfg: AugmentConfig = AugmentConfig()
) -> dict[str, Float[Array, "B H W C"]]:
    """Augments model-ready images in [-1, 1] (one independent draw per image and camera)."""
    out = {}
    for key, rng_key in zip(sorted(images), jax.random.split(rng, len(images)), strict=True):
        batch = images[key]
        unit = batch / 2.0 + 0.5
        keys = jax.random.split(rng_key, batch.shape[0])
        augmented = jax.vmap(lambda k, x, g="wrist" not in key: _augment_one(k, x, g, cfg))(keys, unit)
        out[key] = augmented * 2.0 - 1.0
    return out
