"""Heads that sit beside π0 for RL: the value head (critic) and the Flow-Noise std head.

Parameter layout used throughout pirl/rl: one dict
    {"model": <π0 params, openpi's tree>, "value_head": <MLP>, "noise_head": <MLP>}
where a head is present only when the policy config asks for it. Keeping the model tree intact
under "model" means openpi checkpoints restore into it unchanged.

Axis letters: B batch, S prefix tokens, H action horizon (tokens), D width, A action dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

# Hidden-layer initializers: flax's default, and torch's kaiming_normal_(mode="fan_out",
# nonlinearity="relu") = N(0, 2 / width) without truncation.
HIDDEN_INITS = {
    "lecun_normal": nn.initializers.lecun_normal(),
    "kaiming_fan_out": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
}


class MLPHead(nn.Module):
    """Dense stack; ``last_std`` > 0 draws the output layer from N(0, last_std²), zero bias."""

    hidden: Sequence[int]
    out: int
    activation: str = "relu"
    last_std: float = 0.0
    hidden_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x):
        act = {"relu": nn.relu, "tanh": jnp.tanh}[self.activation]
        for i, width in enumerate(self.hidden):
            x = act(nn.Dense(width, kernel_init=HIDDEN_INITS[self.hidden_init], name=f"dense_{i}")(x))
        kernel_init = nn.initializers.normal(self.last_std) if self.last_std > 0 else nn.initializers.lecun_normal()
        return nn.Dense(self.out, kernel_init=kernel_init, name="out")(x)


def value_mlp(hidden: Sequence[int]) -> MLPHead:
    # The reference's ValueHead (RLinf modules/value_head.py, `_init_weights`): ReLU, hidden layers
    # kaiming-normal over fan-out, zero biases, last layer N(0, 0.02²) so initial values sit near
    # 0, the scale of sparse success rewards.
    return MLPHead(hidden=tuple(hidden), out=1, activation="relu", last_std=0.02, hidden_init="kaiming_fan_out")


def noise_mlp(action_dim: int) -> MLPHead:
    return MLPHead(hidden=(128, 64), out=action_dim, activation="tanh")


def init_value_head(rng: jax.Array, width: int, hidden: Sequence[int]):
    return value_mlp(hidden).init(rng, jnp.zeros((1, width), jnp.float32))["params"]


def init_noise_head(rng: jax.Array, width: int, action_dim: int):
    return noise_mlp(action_dim).init(rng, jnp.zeros((1, width), jnp.float32))["params"]


def value_from_tokens(
    head_params,
    hidden: Sequence[int],
    tokens: Float[Array, "B T D"],
    mask: Bool[Array, "B T"] | None = None,
    detach: bool = False,
) -> Float[Array, " B"]:
    """Value of the mean of the token outputs where ``mask`` holds (all if None): the action tokens
    of the expert, optionally only the executed chunk (slice before calling), or the VLM's prefix
    tokens (``flow._prefix_value`` says which)."""
    x = tokens.astype(jnp.float32)
    if mask is None:
        pooled = x.mean(axis=1)
    else:
        m = mask.astype(jnp.float32)[..., None]
        pooled = (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
    if detach:
        pooled = jax.lax.stop_gradient(pooled)
    return value_mlp(hidden).apply({"params": head_params}, pooled)[:, 0]


def noise_std(
    head_params,
    action_dim: int,
    action_out: Float[Array, "B H D"],
    std_range: tuple[float, float],
) -> Float[Array, "B H A"]:
    """Flow-Noise std per action token and dim: tanh(raw) maps linearly onto
    [log lo², log hi²] of the log-variance, so the std stays inside [lo, hi]."""
    raw = noise_mlp(action_dim).apply({"params": head_params}, action_out.astype(jnp.float32))
    lo, hi = 2.0 * jnp.log(std_range[0]), 2.0 * jnp.log(std_range[1])
    logvar = lo + 0.5 * (jnp.tanh(raw) + 1.0) * (hi - lo)
    return jnp.exp(0.5 * logvar)
