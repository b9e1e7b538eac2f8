"""SigLIP vision tower (ViT without pooling) whose parameter tree is PaliGemma's `img` subtree.

Axis letters: B batch · I/J image height/width · P patches (tokens) · W width · M mlp dim · L layers.
Every patch token goes through the final `head` projection to the language model's width.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from pirl import sharding


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 14


_VARIANTS = {
    "So400m/14": SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    # big_vision's smallest ViT ("mu").
    "mu/14": SiglipConfig(width=32, depth=1, mlp_dim=128, num_heads=2),
    "tiny/14": SiglipConfig(width=32, depth=1, mlp_dim=64, num_heads=2),
}
VARIANTS = tuple(_VARIANTS)


def get_siglip_config(variant: str | SiglipConfig) -> SiglipConfig:
    if isinstance(variant, SiglipConfig):
        return variant
    if variant not in _VARIANTS:
        raise ValueError(f"unknown SigLIP variant {variant!r}; known: {', '.join(VARIANTS)}")
    return _VARIANTS[variant]


def variant_name(config: SiglipConfig) -> str | SiglipConfig:
    for name, known in _VARIANTS.items():
        if known == config:
            return name
    return config


def _layer_norm(name: str | None, dtype) -> nn.LayerNorm:
    # E[x²] − E[x]² variance, eps 1e-6, as the checkpoints were trained.
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=True, dtype=dtype, name=name)


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: str

    @nn.compact
    def __call__(self, x):
        init = {"kernel_init": nn.initializers.xavier_uniform(), "bias_init": nn.initializers.normal(1e-6)}
        h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, **init)(x))
        return nn.Dense(x.shape[-1], dtype=self.dtype, **init)(h)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; returns (x, None) to fit `nn.scan`."""

    mlp_dim: int
    num_heads: int
    dtype: str

    @nn.compact
    def __call__(self, x, _):
        x = sharding.activation_sharding_constraint(x)
        y = _layer_norm(None, self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype
        )(y, y)
        x = x + y
        y = _layer_norm(None, self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, self.dtype)(y)
        return sharding.activation_sharding_constraint(x), None


class Encoder(nn.Module):
    """`depth` scanned blocks (parameters stacked on a leading axis) and the final LayerNorm."""

    config: SiglipConfig
    dtype: str
    remat: bool

    @nn.compact
    def __call__(self, x):
        c = self.config
        block = EncoderBlock
        if self.remat:
            block = nn.remat(EncoderBlock, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        x, _ = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=c.depth,
        )(c.mlp_dim, c.num_heads, self.dtype, name="encoderblock")(x, None)
        return _layer_norm("encoder_norm", self.dtype)(x)


class Siglip(nn.Module):
    """Images in [-1, 1] → one token per patch, projected to `out_width` by `head`."""

    config: SiglipConfig
    out_width: int
    dtype: str = "bfloat16"
    remat: bool = True

    @nn.compact
    def __call__(self, image: Float[Array, "B I J 3"]) -> Float[Array, "B P D"]:
        c = self.config
        # Patch stem and position embedding stay in float32 whatever the compute dtype.
        image = jnp.asarray(image, jnp.float32)
        x = nn.Conv(
            c.width,
            (c.patch_size, c.patch_size),
            strides=(c.patch_size, c.patch_size),
            padding="VALID",
            dtype=jnp.float32,
            name="embedding",
        )(image)
        b, h, w, _ = x.shape
        x = x.reshape(b, h * w, c.width)
        pos = self.param("pos_embedding", nn.initializers.normal(1 / np.sqrt(c.width)), (1, h * w, c.width))
        x = (x + pos).astype(self.dtype)
        x = Encoder(c, self.dtype, self.remat, name="Transformer")(x)
        return nn.Dense(self.out_width, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="head")(x)
