"""Rollout trajectories → the update's targets: loss weights, GRPO groups, masks (hand cases).

Loss weights follow the reference (RLinf metric_utils.compute_loss_mask → loss_mask_sum, divided
out by utils.masked_mean_ratio): max_episode_steps ÷ the episode's valid env steps."""

import jax
import numpy as np
import pytest

from pirl import batch as batch_lib
from pirl import experiment, sharding
from pirl.rollout import Trajectory

C, T, LIMIT = 5, 48, 240  # 5-step chunks, a 240-step limit


def _trajectory(end_steps, success) -> Trajectory:
    """One episode per env, ending at the given 1-based env step, reward 1 on its last step if it
    succeeded; what the rollout records per chunk."""
    end = np.asarray(end_steps)[None]
    t = np.arange(T)[:, None]
    steps = np.clip(end - t * C, 0, C).astype(np.int32)  # env steps executed in chunk t
    dones = (t * C < end) & (end <= t * C + C)
    rewards = (dones & np.asarray(success)[None]).astype(np.float32)
    n = len(end_steps)
    zeros = np.zeros((T, n), np.float32)
    return Trajectory(
        inputs=None,
        transitions=None,
        logp=None,
        values=zeros,
        rewards=rewards,
        dones=dones,
        truncated=dones & (end >= LIMIT),
        valid=steps > 0,
        steps=steps,
        final_values=zeros,
        last_values=np.zeros(n, np.float32),
        episodes={},
        env_steps=int(steps.sum()),
        timing={},
        crashed=np.zeros(n, bool),
    )


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(), jax.devices()[:1])


def test_ppo_weights_are_limit_over_valid_env_steps(mesh):
    # Env 0 ends at env step 12: chunks 0-2 are valid (5 + 5 + 2 = 12 steps) and weigh
    # 240 / 12 = 20.0; env 1 runs to the limit: 240 / 240 = 1.0; env 2 ends at step 5 → 48.0.
    traj = _trajectory([12, 240, 5], [True, False, True])
    tg = batch_lib.targets(traj, "ppo", experiment.AdvantageConfig(), 1, False, mesh, max_episode_steps=LIMIT)
    w = np.asarray(tg.weights)
    np.testing.assert_allclose(w[:3, 0], 20.0)
    np.testing.assert_array_equal(w[3:, 0], 0.0)
    np.testing.assert_allclose(w[:, 1], 1.0)
    np.testing.assert_allclose(w[:1, 2], 48.0)
    np.testing.assert_array_equal(w[1:, 2], 0.0)
    np.testing.assert_array_equal(np.asarray(tg.mask), w > 0)


def test_grpo_filtered_groups_weigh_nothing_and_kept_ones_by_env_steps(mesh):
    # Groups of 2: [success at step 12, failure at 240] (mean score 0.5, kept) and [failure,
    # failure] (mean 0, outside [0.1, 0.9], dropped). Kept group: scores [1, 0], mean 0.5, unbiased
    # std √0.5 → A = ±0.5/(0.7071068 + 1e-6) = ±0.7071058; weights 20 and 1 as for PPO.
    traj = _trajectory([12, 240, 240, 240], [True, False, False, False])
    config = experiment.AdvantageConfig(filter_groups=True)
    tg = batch_lib.targets(traj, "grpo", config, 2, False, mesh, max_episode_steps=LIMIT)
    w, a = np.asarray(tg.weights), np.asarray(tg.advantages)
    np.testing.assert_allclose(w[:3, 0], 20.0)
    np.testing.assert_allclose(w[:, 1], 1.0)
    assert not w[:, 2:].any() and not a[:, 2:].any()
    k = 0.5 / (np.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(a[:3, 0], k, rtol=1e-6)
    np.testing.assert_allclose(a[:, 1], -k, rtol=1e-6)


def test_auto_reset_weights_every_valid_sample_once(mesh):
    # Under auto-reset the reference builds no loss mask (plain means): weight 1 per valid sample.
    traj = _trajectory([12, 240], [True, False])
    traj.valid[:] = True
    tg = batch_lib.targets(traj, "ppo", experiment.AdvantageConfig(), 1, True, mesh, max_episode_steps=LIMIT)
    np.testing.assert_array_equal(np.asarray(tg.weights), 1.0)
