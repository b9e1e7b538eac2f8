"""PPO losses and the metrics logged with them.

Axis letters: N samples (chunk steps of envs); a log-prob may carry trailing axes (C executed chunk,
A env action dims) depending on its reduction level, written ``...``. Every sample has a weight
w ≥ 0 (0 for masked-out steps, max_episode_steps / valid env steps otherwise; see
``advantages.trajectory_weights``); the policy and value losses are the mean over all entries of
w·loss (the reference's ``masked_mean_ratio``), the entropy term and the metrics are plain means
over the entries with w > 0.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def _expand(w: Float[Array, " N"], like: Array) -> Array:
    return jnp.broadcast_to(w.reshape(w.shape + (1,) * (like.ndim - 1)), like.shape)


def weighted_mean(x: Float[Array, "N ..."], weights: Float[Array, " N"]) -> Float[Array, ""]:
    """Mean over all entries of weights·x (weights broadcast over trailing axes)."""
    return jnp.mean(_expand(weights, x) * x)


def valid_mean(x: Float[Array, "N ..."], weights: Float[Array, " N"]) -> Float[Array, ""]:
    """Plain mean of x over the entries whose sample weight is positive."""
    m = _expand(weights > 0, x).astype(x.dtype)
    return (x * m).sum() / jnp.maximum(m.sum(), 1.0)


def valid_max_abs(x: Float[Array, "N ..."], weights: Float[Array, " N"]) -> Float[Array, ""]:
    """Largest |x| over the entries whose sample weight is positive (0 if there are none)."""
    return jnp.max(jnp.where(_expand(weights > 0, x), jnp.abs(x), 0.0), initial=0.0)


def policy_loss(
    logp: Float[Array, "N ..."],
    logp_old: Float[Array, "N ..."],
    advantages: Float[Array, " N"],
    weights: Float[Array, " N"],
    clip_eps: float = 0.2,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Clipped surrogate −min(r·A, clip(r, 1 − ε, 1 + ε)·A), r = exp(logp − logp_old).

    Token- or action-level log-probs get one ratio per entry, all sharing their sample's advantage.
    """
    if logp.shape != logp_old.shape:
        raise ValueError(f"logp {logp.shape} and logp_old {logp_old.shape} differ in shape")
    return clipped_surrogate(logp - logp_old, advantages, weights, clip_eps)


def clipped_surrogate(
    log_ratio: Float[Array, "N ..."],
    advantages: Float[Array, " N"],
    weights: Float[Array, " N"],
    clip_eps: float = 0.2,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """``policy_loss`` from log r = logp − logp_old, for callers that build log r themselves
    (e.g. as logp − stop_gradient(logp), which is exactly 0 yet carries ∇logp)."""
    ratio = jnp.exp(log_ratio)
    adv = _expand(advantages, ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = weighted_mean(jnp.maximum(unclipped, clipped), weights)
    metrics = {
        "policy_loss": loss,
        "approx_kl": -valid_mean(log_ratio, weights),
        # Entries where the clipped branch is the active (larger) loss: their gradient is zero.
        "clip_fraction": valid_mean((clipped > unclipped).astype(ratio.dtype), weights),
        "ratio": valid_mean(ratio, weights),
    }
    return loss, metrics


def huber(x: Float[Array, "*S"], delta: float) -> Float[Array, "*S"]:
    a = jnp.abs(x)
    return jnp.where(a < delta, 0.5 * jnp.square(x), delta * (a - 0.5 * delta))


def value_loss(
    values: Float[Array, " N"],
    values_old: Float[Array, " N"],
    returns: Float[Array, " N"],
    weights: Float[Array, " N"],
    clip: float = 0.2,
    huber_delta: float = 10.0,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """max(Huber(R − V), Huber(R − V_clip)), V_clip = V_old + clip(V − V_old, ±clip)."""
    v_clip = values_old + jnp.clip(values - values_old, -clip, clip)
    loss = weighted_mean(
        jnp.maximum(huber(returns - values, huber_delta), huber(returns - v_clip, huber_delta)), weights
    )
    metrics = {
        "value_loss": loss,
        "value_clip_ratio": valid_mean((jnp.abs(values - values_old) > clip).astype(values.dtype), weights),
        "explained_variance": explained_variance(values, returns, weights),
    }
    return loss, metrics


def explained_variance(
    values: Float[Array, " N"], returns: Float[Array, " N"], weights: Float[Array, " N"]
) -> Float[Array, ""]:
    """1 − Var(R − V)/Var(R) over valid samples (population variances)."""

    def var(x):
        return valid_mean(jnp.square(x - valid_mean(x, weights)), weights)

    return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def entropy_bonus(
    entropy: Float[Array, " N"], weights: Float[Array, " N"], coef: float
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Loss term −coef·(mean entropy over valid samples); subtracted, so higher entropy lowers the
    loss. Unweighted, as the reference's ``masked_mean(entropy, loss_mask)`` (RLinf
    ``embodied_fsdp_actor_worker.train_micro_batch``): the trajectory weights scale only the policy
    and value losses."""
    ent = valid_mean(entropy, weights)
    return -coef * ent, {"entropy": ent}
