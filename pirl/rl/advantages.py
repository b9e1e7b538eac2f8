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
from jaxtyping import Array, Bool, Float, Int


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


def trajectory_weights(
    mask: Bool[Array, "T B"], env_steps: Int[Array, "T B"], max_episode_steps: int
) -> Float[Array, "T B"]:
    """Per-sample loss weights: max_episode_steps / (valid env steps of the env's episode) on valid
    samples, 0 elsewhere.

    ``env_steps[t]`` counts the env steps executed in chunk step t (the chunk size, fewer in the
    chunk where the episode ended). The reference (RLinf ``metric_utils.compute_loss_mask``'s
    ``loss_mask_sum`` and ``utils.masked_mean_ratio``) divides every sample's loss by
    loss_mask_sum / max_episode_steps and then takes the mean over all entries, so short (often
    successful) episodes weigh as much as long ones. An env without valid steps weighs 0.
    """
    if max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
    m = mask.astype(jnp.float32)
    valid = (m * env_steps.astype(jnp.float32)).sum(axis=0, keepdims=True)
    return jnp.where(mask, max_episode_steps / jnp.maximum(valid, 1.0), 0.0)


def _shifted(x: Array, ref: Array) -> Array:
    """x − ref in at least float32.

    Statistics of data shifted by one of its own values are exact for equal values (x − x is 0),
    where x − mean(x) keeps the mean's rounding residue, which a near-zero std then blows up."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x.astype(dtype) - ref.astype(dtype)


def _scaled_std(centred: Array, m: Array, axis, ddof: int) -> Array:
    """Masked std of already centred data with ``ddof``, computed on centred / max|centred| so
    that squaring neither overflows (|x| above ~1e19 in float32) nor underflows."""
    scale = jnp.max(jnp.abs(centred) * m, axis=axis, keepdims=True)
    scale = jnp.where(scale > 0, scale, 1.0)
    n = m.sum(axis=axis, keepdims=True)
    var = (jnp.square(centred / scale) * m).sum(axis=axis, keepdims=True) / jnp.maximum(n - ddof, 1.0)
    return scale * jnp.sqrt(var)


def normalize(advantages: Float[Array, "*S"], mask: Bool[Array, "*S"], eps: float = 1e-5) -> Float[Array, "*S"]:
    """(A − mean)/(std + eps) over the valid entries, std unbiased (ddof 1); invalid entries are 0.

    As the reference's ``safe_normalize`` (RLinf ``algorithms/utils.py``: torch ``std()``, which is
    unbiased, and eps 1e-5). Equal valid advantages give exactly 0. Result: at least float32.
    """
    m = mask.astype(jnp.float32)
    first_valid = advantages.reshape(-1)[jnp.argmax(mask.reshape(-1))]
    x = _shifted(advantages, first_valid)
    centred = x - (x * m).sum() / jnp.maximum(m.sum(), 1.0)
    std = _scaled_std(centred, m, axis=None, ddof=1)
    return jnp.where(mask, centred / (std + eps), 0.0)


def episode_scores(rewards: Float[Array, "T B"], mask: Bool[Array, "T B"]) -> Float[Array, " B"]:
    """Summed reward of each env's (single) episode over its valid chunk steps."""
    return jnp.where(mask, rewards, 0.0).sum(axis=0)


def _grouped(x: Float[Array, " B"], group_size: int) -> Float[Array, "Bg G"]:
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} envs are not a whole number of groups of {group_size}")
    return x.reshape(-1, group_size)


def grpo_advantages(scores: Float[Array, " B"], group_size: int, eps: float = 1e-6) -> Float[Array, " B"]:
    """(R − mean_g)/(std_g + eps) within each group of G consecutive envs, std unbiased (ddof 1).

    As the reference's ``compute_grpo_advantages`` (RLinf ``algorithms/advantages.py``: torch
    ``std()``, unbiased, eps 1e-6). A group of equal scores gets exactly 0 whatever their value,
    magnitude or dtype: each group is shifted by its first score before its mean is taken.
    Result: at least float32.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs a group size of at least 2, got {group_size}")
    g = _grouped(scores, group_size)
    x = _shifted(g, g[:, :1])
    centred = x - x.mean(axis=1, keepdims=True)
    std = _scaled_std(centred, jnp.ones_like(centred), axis=1, ddof=1)
    return (centred / (std + eps)).reshape(-1)


def grpo_filter(scores: Float[Array, " B"], group_size: int, low: float = 0.1, high: float = 0.9) -> Bool[Array, " B"]:
    """Keeps the envs of groups whose mean score lies in [low, high] (drops all-fail/all-success)."""
    mean = _grouped(scores, group_size).mean(axis=1)
    keep = (mean >= low) & (mean <= high)
    return jnp.repeat(keep, group_size)
