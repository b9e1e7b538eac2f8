"""Gemma as a mixture of transformers: several token streams ("experts") share one attention per layer.

π0 runs two streams: the PaliGemma VLM on the prefix (images + prompt) and the action expert on the
suffix (state/action tokens). Each stream has its own weights in every layer; the second stream's
modules carry the suffix `_1` so that the first stream's tree is exactly PaliGemma's.

Axis letters used in einsums and shape docstrings:
  B batch · T query length · S key length · N query heads · K kv heads · G query heads per kv head
  H head dim · D width · F mlp dim · L layers · R LoRA rank
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from pirl import sharding

PALIGEMMA_VOCAB_SIZE = 257_152
# Masked attention logits take this value rather than -inf: a fully masked row then gets a uniform
# softmax instead of NaNs, and the checkpoints were trained with exactly this constant.
_BIG_NEG = -2.3819763e38


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    lora_rank: int = 0
    lora_alpha: float = 0.0

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0


_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    # openpi's test size.
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    # Smaller still, for fast unit tests.
    "tiny": GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16),
}
# openpi's LoRA variants: rank == alpha, so the LoRA branch is added with scale 1.
_VARIANTS["gemma_2b_lora"] = dataclasses.replace(_VARIANTS["gemma_2b"], lora_rank=16, lora_alpha=16.0)
_VARIANTS["gemma_300m_lora"] = dataclasses.replace(_VARIANTS["gemma_300m"], lora_rank=32, lora_alpha=32.0)
_VARIANTS["dummy_lora"] = dataclasses.replace(_VARIANTS["dummy"], lora_rank=4, lora_alpha=4.0)
_VARIANTS["tiny_lora"] = dataclasses.replace(_VARIANTS["tiny"], lora_rank=2, lora_alpha=2.0)
VARIANTS = tuple(_VARIANTS)


def get_gemma_config(variant: str | GemmaConfig) -> GemmaConfig:
    """Resolves a variant name (see VARIANTS) or passes a GemmaConfig through."""
    if isinstance(variant, GemmaConfig):
        return variant
    if variant not in _VARIANTS:
        raise ValueError(f"unknown Gemma variant {variant!r}; known: {', '.join(VARIANTS)}")
    return _VARIANTS[variant]


def variant_name(config: GemmaConfig) -> str | GemmaConfig:
    """The registered name of `config`, or the config itself when it matches no variant."""
    for name, known in _VARIANTS.items():
        if known == config:
            return name
    return config


def _expert_name(name: str, i: int) -> str:
    # The VLM stream keeps PaliGemma's names; later streams get a suffix so both trees coexist.
    return name if i == 0 else f"{name}_{i}"


class RMSNorm(nn.Module):
    """RMSNorm, or adaptive RMSNorm (scale, shift and a residual gate from a condition vector).

    Statistics and the affine part run in float32; the output is cast back to the input dtype.
    """

    @nn.compact
    def __call__(
        self, x: Float[Array, "B T D"], cond: Float[Array, "B C"] | None
    ) -> tuple[Float[Array, "B T D"], Float[Array, "B 1 D"] | None]:
        dtype = x.dtype
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x * jnp.reciprocal(jnp.sqrt(var + 1e-6))
        if cond is None:
            scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
            return (normed * (1 + scale)).astype(dtype), None
        # Zero-initialized modulation: at init the norm is plain RMSNorm and the gate is 0, so every
        # adaptive block starts as the identity map on its residual stream.
        mod = nn.Dense(3 * x.shape[-1], kernel_init=nn.initializers.zeros, dtype=dtype)(cond)
        scale, shift, gate = jnp.split(mod[:, None, :], 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(dtype), gate


class Embedder(nn.Module):
    vocab_size: int
    width: int

    def setup(self):
        self.input_embedding = self.param("input_embedding", nn.initializers.normal(), (self.vocab_size, self.width))

    def encode(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        x = self.input_embedding[(tokens,)]
        # Only text embeddings are scaled by sqrt(width); image and suffix tokens are not.
        return x * jnp.sqrt(self.width).astype(x.dtype)


def _lora_equations(eqn: str) -> tuple[str, str]:
    """Splits `x,W->y` into `x,A->z` and `z,B->y` where A/B replace W's last/second-last axis by R."""
    m = re.fullmatch(r"(.*),(.*)->(.*)", eqn)
    if not m or "R" in eqn:
        raise ValueError(f"unsupported einsum for LoRA: {eqn}")
    lhs, rhs, out = m.groups()
    a_in, b_out = rhs[-2], rhs[-1]
    eqn_a = f"{lhs},{rhs.replace(b_out, 'R')}->{out.replace(b_out, 'R')}"
    eqn_b = f"{out.replace(b_out, 'R')},{rhs.replace(a_in, 'R')}->{out}"
    return eqn_a, eqn_b


class Einsum(nn.Module):
    """A weight `w` applied by einsum, plus an optional LoRA branch on its last two axes."""

    shape: tuple[int, ...]
    init_fn: nn.initializers.Initializer
    lora_rank: int = 0
    lora_scale: float = 0.0

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", self.init_fn, self.shape)
        y = jnp.einsum(eqn, x, w.astype(x.dtype))
        if self.lora_rank:
            shape_a = (*self.shape[:-1], self.lora_rank)
            shape_b = (*self.shape[:-2], self.lora_rank, self.shape[-1])
            a = self.param("lora_a", nn.initializers.normal(0.01), shape_a)
            b = self.param("lora_b", nn.initializers.normal(0.01), shape_b)
            eqn_a, eqn_b = _lora_equations(eqn)
            z = jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a.astype(x.dtype)), b.astype(x.dtype))
            y = y + z * self.lora_scale
        return y


class FeedForward(nn.Module):
    """GeGLU MLP: gelu_tanh(x W_gate) * (x W_up), then W_down; weights [2, D, F] and [F, D]."""

    width: int
    mlp_dim: int
    lora_rank: int = 0
    lora_scale: float = 0.0

    def _lora(self, name: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...]):
        if not self.lora_rank:
            return None
        init = nn.initializers.normal(0.01)
        return self.param(f"{name}_lora_a", init, shape_a), self.param(f"{name}_lora_b", init, shape_b)

    def _dot(self, x, w, lora):
        y = jnp.dot(x, w.astype(x.dtype))
        if lora is None:
            return y
        a, b = lora
        return y + jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * self.lora_scale

    @nn.compact
    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        d, f, r = self.width, self.mlp_dim, self.lora_rank
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        w_gating = self.param("gating_einsum", init, (2, d, f))
        w_linear = self.param("linear", nn.initializers.lecun_normal(in_axis=-2, out_axis=-1), (f, d))
        gating_lora = self._lora("gating_einsum", (2, d, r), (2, r, f))
        linear_lora = self._lora("linear", (f, r), (r, d))
        gate = self._dot(x, w_gating[0], None if gating_lora is None else (gating_lora[0][0], gating_lora[1][0]))
        up = self._dot(x, w_gating[1], None if gating_lora is None else (gating_lora[0][1], gating_lora[1][1]))
        return self._dot(nn.gelu(gate) * up, w_linear, linear_lora)


def apply_rope(x: Float[Array, "B T N H"], positions: Int[Array, "B T"], max_wavelength: float = 10_000):
    """Rotary embedding, half-split convention (first half pairs with second half), in float32."""
    half = x.shape[-1] // 2
    timescale = max_wavelength ** ((2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32))
    radians = (positions[..., None] / timescale)[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


KVCache = tuple[Float[Array, "L B S K H"], Float[Array, "L B S K H"]]


class Attention(nn.Module):
    """One attention over the concatenation of every present stream's tokens."""

    configs: Sequence[GemmaConfig]

    @nn.compact
    def __call__(self, xs, positions, mask, kv_cache):
        cfg0 = self.configs[0]
        lecun = nn.initializers.lecun_normal
        qs, ks, vs = [], [], []
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                continue
            lora = {"lora_rank": cfg.lora_rank, "lora_scale": cfg.lora_scale}
            q = Einsum(
                (cfg.num_heads, cfg.width, cfg.head_dim),
                lecun(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                name=_expert_name("q_einsum", i),
                **lora,
            )("BTD,NDH->BTNH", x)
            k, v = Einsum(
                (2, cfg.num_kv_heads, cfg.width, cfg.head_dim),
                lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1)),
                name=_expert_name("kv_einsum", i),
                **lora,
            )("BSD,2KDH->2BSKH", x)
            qs.append(q)
            ks.append(k)
            vs.append(v)
        q, k, v = (jnp.concatenate(y, axis=1) for y in (qs, ks, vs))
        dtype = q.dtype
        # RoPE first, then the query scale: the order matters at the last bit.
        q = apply_rope(q, positions) * cfg0.head_dim**-0.5
        k = apply_rope(k, positions)
        if kv_cache is not None:
            k = jnp.concatenate([kv_cache[0], k], axis=1)
            v = jnp.concatenate([kv_cache[1], v], axis=1)
        if mask.shape != (q.shape[0], 1, q.shape[1], k.shape[1]):
            raise ValueError(
                f"attention mask has shape {mask.shape}; expected {(q.shape[0], 1, q.shape[1], k.shape[1])}"
            )
        q = einops.rearrange(q, "B T (K G) H -> B T K G H", K=cfg0.num_kv_heads)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, :, None], logits, _BIG_NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        enc = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
        enc = einops.rearrange(enc, "B T K G H -> B T (K G) H")

        outs, start = [], 0
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                outs.append(None)
                continue
            end = start + x.shape[1]
            outs.append(
                Einsum(
                    (cfg.num_heads, cfg.head_dim, cfg.width),
                    lecun(in_axis=(-3, -2), out_axis=-1),
                    name=_expert_name("attn_vec_einsum", i),
                    lora_rank=cfg.lora_rank,
                    lora_scale=cfg.lora_scale,
                )("BTNH,NHD->BTD", enc[:, start:end])
            )
            start = end
        return outs, (k, v)


def _gated_residual(x, y, gate):
    if x is None:
        return None
    return x + y if gate is None else x + y * gate


class Block(nn.Module):
    configs: Sequence[GemmaConfig]

    @nn.compact
    def __call__(self, xs, kv_cache, positions, mask, conds):
        xs = sharding.activation_sharding_constraint(xs)
        normed, gates = [], []
        for i, x in enumerate(xs):
            y, g = (None, None) if x is None else RMSNorm(name=_expert_name("pre_attention_norm", i))(x, conds[i])
            normed.append(y)
            gates.append(g)
        attn_out, kv = Attention(self.configs, name="attn")(normed, positions, mask, kv_cache)
        xs = [_gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]
        xs = sharding.activation_sharding_constraint(xs)

        mlp_out, gates = [], []
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                mlp_out.append(None)
                gates.append(None)
                continue
            y, g = RMSNorm(name=_expert_name("pre_ffw_norm", i))(x, conds[i])
            ffn = FeedForward(cfg.width, cfg.mlp_dim, cfg.lora_rank, cfg.lora_scale, name=_expert_name("mlp", i))
            mlp_out.append(ffn(y))
            gates.append(g)
        xs = [_gated_residual(x, y, g) for x, y, g in zip(xs, mlp_out, gates, strict=True)]
        return sharding.activation_sharding_constraint(xs), kv


class Gemma(nn.Module):
    """The multi-stream Gemma: an embedder for stream 0, `depth` scanned blocks, one final norm per stream.

    Layer parameters are stacked on a leading axis of length `depth` (one scanned block).
    """

    configs: Sequence[GemmaConfig]
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    dtype: str = "bfloat16"
    remat: bool = True

    def setup(self):
        depth = self.configs[0].depth
        c0 = self.configs[0]
        for c in self.configs[1:]:
            if (c.depth, c.num_heads, c.num_kv_heads, c.head_dim) != (
                depth,
                c0.num_heads,
                c0.num_kv_heads,
                c0.head_dim,
            ):
                raise ValueError(f"experts must share depth and head layout to share attention: {self.configs}")
        block = Block
        if self.remat:
            block = nn.remat(Block, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
        self.embedder = Embedder(self.vocab_size, c0.width, name="embedder")
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=depth,
        )(self.configs, name="layers")
        self.final_norms = [RMSNorm(name=_expert_name("final_norm", i)) for i in range(len(self.configs))]

    def embed(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        return self.embedder.encode(tokens).astype(self.dtype)

    def __call__(
        self,
        xs: Sequence[Float[Array, "B _T _D"] | None],
        positions: Int[Array, "B T"],
        mask: Bool[Array, "B T S"],
        conds: Sequence[Float[Array, "B _D"] | None] | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[list[Float[Array, "B _T _D"] | None], KVCache]:
        """Runs the present streams (None = absent) jointly; returns their final-normed outputs and (K, V).

        `positions` and `mask` cover the concatenated present tokens; with `kv_cache` the keys are the
        cached ones followed by the new ones, and the returned cache holds both.
        """
        xs = [None if x is None else x.astype(self.dtype) for x in xs]
        conds = list(conds) if conds is not None else [None] * len(self.configs)
        xs, kv_cache = self.layers(xs, kv_cache, positions, mask[:, None], conds)
        outs = [None if x is None else norm(x, c)[0] for norm, x, c in zip(self.final_norms, xs, conds, strict=True)]
        return outs, kv_cache

    def init_all(self, use_adarms: Sequence[bool]):
        """Touches every parameter once (the embedder and all streams) for `Module.init`."""
        self.embed(jnp.zeros((1, 1), jnp.int32))
        n = len(self.configs)
        self(
            [jnp.zeros((1, 1, c.width)) for c in self.configs],
            jnp.zeros((1, n), jnp.int32),
            jnp.ones((1, n, n), bool),
            [jnp.zeros((1, c.width)) if ada else None for ada, c in zip(use_adarms, self.configs, strict=True)],
        )
