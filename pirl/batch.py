"""Rollout trajectories → the update's Batch: chunk rewards, bootstrap, GAE or GRPO, masks, weights.

Axis letters: R rollout epochs, T chunk steps, N envs; samples are flattened in (R, T, N) order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from pirl import sharding
from pirl.rl import advantages as adv
from pirl.rl import update as upd
from pirl.rollout import Trajectory


@dataclasses.dataclass(frozen=True)
class Targets:
    """Per-epoch [T, N] advantages, returns and loss weights."""

    advantages: jax.Array
    returns: jax.Array
    weights: jax.Array
    mask: jax.Array


def targets(
    traj: Trajectory,
    algorithm: str,
    advantage,
    group_size: int,
    auto_reset: bool,
    mesh: Mesh,
    *,
    max_episode_steps: int,
) -> Targets:
    """Advantages of one rollout epoch (``advantage``: experiment.AdvantageConfig). Host arrays
    hold this host's envs on axis 1; they join the other hosts' here.

    Loss weights: with one episode per env, max_episode_steps / the episode's valid env steps
    (``adv.trajectory_weights``); under auto-reset 1 on every valid sample, as the reference, which
    builds no loss mask there."""

    def glob(x):
        return sharding.host_to_global(mesh, x, axis=-1)

    rewards, dones, valid = glob(traj.rewards), glob(traj.dones), glob(traj.valid)
    if auto_reset:
        mask = valid
        if advantage.bootstrap != "none":
            cut = glob(traj.truncated if advantage.bootstrap == "truncated" else traj.dones)
            rewards = adv.bootstrap_truncated(rewards, cut, glob(traj.final_values), advantage.gamma)
    else:
        # One episode per env: chunks after its first done carry no signal (see adv.valid_mask).
        mask = adv.valid_mask(dones) & valid
    if algorithm == "ppo":
        values = jnp.concatenate([jnp.asarray(traj.values, jnp.float32), glob(traj.last_values[None])])
        a, returns = adv.gae(rewards, values, dones, advantage.gamma, advantage.gae_lambda)
    else:
        scores = adv.episode_scores(rewards, mask)
        a = jnp.broadcast_to(adv.grpo_advantages(scores, group_size), rewards.shape)
        returns = jnp.zeros_like(rewards)
        if advantage.filter_groups:
            mask = mask & adv.grpo_filter(scores, group_size, advantage.filter_low, advantage.filter_high)[None]
        # A group that lost an episode to a worker crash has no fair baseline: it is left out whole.
        crashed = glob(traj.crashed[None])[0].reshape(-1, group_size).any(axis=1)
        mask = mask & ~jnp.repeat(crashed, group_size)[None]
    if auto_reset:
        weights = mask.astype(jnp.float32)
    else:
        weights = adv.trajectory_weights(mask, glob(traj.steps), max_episode_steps)
    return Targets(advantages=jnp.where(mask, a, 0.0), returns=returns, weights=weights, mask=mask)


def _flatten(x):
    return x.reshape(-1, *x.shape[3:])


@functools.cache
def _flattener(mesh: Mesh):
    """[R, T, N, ...] → [R·T·N, ...] split over the batch axes; one compiled program per mesh."""
    return jax.jit(lambda b: jax.tree.map(_flatten, b), out_shardings=sharding.batch_sharding(mesh))


def to_batch(
    trajs: Sequence[Trajectory],
    algorithm: str,
    advantage,
    group_size: int,
    auto_reset: bool,
    mesh: Mesh,
    *,
    max_episode_steps: int,
) -> tuple[upd.Batch, dict[str, float]]:
    """All rollout epochs as one flat, batch-sharded Batch, and rollout metrics."""
    tg = [
        targets(t, algorithm, advantage, group_size, auto_reset, mesh, max_episode_steps=max_episode_steps)
        for t in trajs
    ]
    a = jnp.stack([t.advantages for t in tg])  # [R, T, N]
    mask = jnp.stack([t.mask for t in tg])
    if algorithm == "ppo" and advantage.normalize:
        a = adv.normalize(a, mask)
    stacked = upd.Batch(
        obs=jax.tree.map(lambda *xs: jnp.stack(xs), *[t.inputs for t in trajs]),
        transitions=jax.tree.map(lambda *xs: jnp.stack(xs), *[t.transitions for t in trajs]),
        logp_old=jnp.stack([t.logp for t in trajs]),
        value_old=jnp.stack([jnp.asarray(t.values, jnp.float32) for t in trajs]),
        advantages=a,
        returns=jnp.stack([t.returns for t in tg]),
        weights=jnp.stack([t.weights for t in tg]),
    )
    flat = _flattener(mesh)(stacked)
    # Every host computes the metrics over all hosts' envs (to_host gathers the global arrays).
    m = sharding.to_host(mask)
    n_valid = max(int(m.sum()), 1)

    def mean(x):
        return float(np.where(m, sharding.to_host(x), 0.0).sum() / n_valid)

    metrics = {
        "rollout/advantages_mean": mean(a),
        "rollout/returns_mean": mean(stacked.returns),
        "rollout/values_mean": mean(stacked.value_old),
        "rollout/logp_mean": mean(stacked.logp_old.reshape(*m.shape, -1).mean(-1)),
        "rollout/valid_fraction": float(m.mean()),
        "rollout/samples": float(m.size),
    }
    return flat, metrics
