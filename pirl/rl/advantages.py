"""Advantages for flow-policy RL: chunk rewards, GAE, done masks, GRPO groups.

Axis letters: T chunk steps of a rollout (time), B environments, C env steps inside one executed
chunk, G group size (GRPO), N samples.

Done convention: ``dones[t]`` is True when the episode ended *during* chunk step t (the done
produced by the action at t), so ``1 − dones[t]`` gates the bootstrap from ``values[t + 1]``. The
reference implementation stores the same flag one slot later (aligned with the next observation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def chunk_rewards(
    rewards: Float[Array, "T B C"], dones: Bool[Array, "T B C"]
) -> tuple[Float[Array, "T B"], Bool[Array, "T B"]]:
    """Pools env-step rewards and dones into one per executed chunk: sum and any."""
    if rewards.shape != dones.shape:
        raise ValueError(f"rewards {rewards.shape} and dones {dones.shape} must have the same shape")
    return rewards.sum(axis=-1), dones.any(axis=-1)


def bootstrap_truncated(
    rewards: Float[Array, "T B"],
    truncations: Bool[Array, "T B"],
    final_values: Float[Array, "T B"],
    gamma: float,
) -> Float[Array, "T B"]:
    """Adds γ·V(final_obs) to the reward of chunks that ended by truncation.

    With auto-reset the next observation belongs to a new episode, so GAE (gated by the done) cannot
    see the value of the state where the old episode was cut; this puts it into the reward instead.
    Pass ``terminations | truncations`` as ``truncations`` for the "always" variant.
    """
    return rewards + gamma * jnp.where(truncations, final_values, 0.0)


def gae(
    rewards: Float[Array, "T B"],
    values: Float[Array, "T+1 B"],
    dones: Bool[Array, "T B"],
    gamma: float,
    lam: float,
) -> tuple[Float[Array, "T B"], Float[Array, "T B"]]:
    """Generalized advantage estimation over chunk steps.

    ``values[T]`` is the value of the observation after the last chunk (the bootstrap value).
    δ_t = r_t + γ·V_{t+1}·(1 − d_t) − V_t;  A_t = δ_t + γλ(1 − d_t)·A_{t+1};  returns = A + V.
    Returns (advantages, returns).
    """
    if values.shape[0] != rewards.shape[0] + 1:
        raise ValueError(f"values need T + 1 = {rewards.shape[0] + 1} steps, got {values.shape[0]}")
    not_done = 1.0 - dones.astype(rewards.dtype)
    deltas = rewards + gamma * values[1:] * not_done - values[:-1]

    def backward(next_adv, xs):
        delta, nd = xs
        adv = delta + gamma * lam * nd * next_adv
        return adv, adv

    _, adv = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (deltas, not_done), reverse=True)
    return adv, adv + values[:-1]


def valid_mask(dones: Bool[Array, "T B"]) -> Bool[Array, "T B"]:
    """True up to and including the first done of each env; later steps are masked out.

    Without auto-reset an env idles after its episode ends, so those chunk steps carry no signal.
    """
    done_before = jnp.cumsum(dones.astype(jnp.int32), axis=0) - dones.astype(jnp.int32)
    return done_before == 0


def trajectory_weights(mask: Bool[Array, "T B"]) -> Float[Array, "T B"]:
    """Per-sample loss weights mask·T/valid_steps, so a mean over all T·B entries is a mean over
    envs of their per-trajectory mean: short (often successful) episodes weigh as much as long."""
    m = mask.astype(jnp.float32)
    valid = m.sum(axis=0, keepdims=True)
    return m * mask.shape[0] / jnp.maximum(valid, 1.0)


def normalize(advantages: Float[Array, "*S"], mask: Bool[Array, "*S"], eps: float = 1e-5) -> Float[Array, "*S"]:
    """(A − mean)/(std + eps) over the valid entries (population std), invalid entries set to 0."""
    m = mask.astype(advantages.dtype)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (advantages * m).sum() / n
    var = (jnp.square(advantages - mean) * m).sum() / n
    return jnp.where(mask, (advantages - mean) / (jnp.sqrt(var) + eps), 0.0)


def episode_scores(rewards: Float[Array, "T B"], mask: Bool[Array, "T B"]) -> Float[Array, " B"]:
    """Summed reward of each env's (single) episode over its valid chunk steps."""
    return jnp.where(mask, rewards, 0.0).sum(axis=0)


def _grouped(x: Float[Array, " B"], group_size: int) -> Float[Array, "Bg G"]:
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} envs are not a whole number of groups of {group_size}")
    return x.reshape(-1, group_size)


def grpo_advantages(scores: Float[Array, " B"], group_size: int, eps: float = 1e-6) -> Float[Array, " B"]:
    """(R − mean_g)/(std_g + eps) within each group of G consecutive envs, std unbiased (ddof 1)."""
    if group_size < 2:
        raise ValueError(f"GRPO needs a group size of at least 2, got {group_size}")
    g = _grouped(scores, group_size)
    adv = (g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, ddof=1, keepdims=True) + eps)
    return adv.reshape(-1)


def grpo_filter(scores: Float[Array, " B"], group_size: int, low: float = 0.1, high: float = 0.9) -> Bool[Array, " B"]:
    """Keeps the envs of groups whose mean score lies in [low, high] (drops all-fail/all-success)."""
    mean = _grouped(scores, group_size).mean(axis=1)
    keep = (mean >= low) & (mean <= high)
    return jnp.repeat(keep, group_size)
