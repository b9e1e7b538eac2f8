"""Worker crashes in rollouts (toy simulator, tiny π0): a crashed episode never reaches the
training metrics or the batch, with one pool stage or two, and an evaluation wave with a crash is
run again so its scores equal an uninterrupted evaluation's."""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from configs import metaworld_ppo
from pirl import batch as batch_lib
from pirl import cli, envsetup, rollout, runsetup, sharding, train
from pirl.envs import pool as pool_lib

CHUNKS = 4  # 20 steps / 5-step chunks


def _experiment(stages: int = 1, algorithm: str = "ppo"):
    c = metaworld_ppo.get_config("shrink")
    c.env.update(
        sim="toy", task="", num_envs=4, num_workers=2, num_stages=stages, image_size=(16, 16), fast_render=False
    )
    c.policy.action_env_dim = 2
    if algorithm == "grpo":
        c.rl.algorithm = "grpo"
        c.env.group_size = 2
        c.policy.value_source = "none"
    exp, _ = cli.to_experiment(c)
    return exp


@pytest.fixture(scope="module")
def setup():
    return runsetup.build(_experiment())


@pytest.fixture(scope="module")
def actor(setup):
    """One actor for every pool here (they all run the toy spec): its sampler compiles once."""
    return runsetup.make_actor(setup, envsetup.sim_factory(_experiment().env).spec())


def _params(setup):
    return jax.device_put(setup.params, sharding.param_shardings(setup.mesh, setup.params))


def _collect(setup, actor, exp, kill_at: int | None):
    """A rollout of 4 envs; with ``kill_at``, worker 1 (envs 2, 3) is SIGKILLed once chunk
    ``kill_at - 1`` has returned, while the next chunk is in flight (a 5-step chunk of its 2 envs
    takes 0.2 s)."""
    ids = np.array([[0, 0], [1, 1], [2, 0], [2, 1]])  # envs 0, 1 alone run tasks 0, 1
    factory = dataclasses.replace(envsetup.sim_factory(exp.env), sleep_s=0.02)
    with pool_lib.EnvPool(factory, envsetup.pool_config(exp.env)) as p:

        def on_frame(obs, res, t):
            if t == kill_at:
                os.kill(p.worker_pids()[1], signal.SIGKILL)

        traj = rollout.collect(p, actor, _params(setup), jax.random.key(3), ids, CHUNKS, on_frame)
        restarts = p.restarts.tolist()
    return traj, restarts


@pytest.mark.parametrize("stages", [1, 2])
def test_crashed_episodes_are_absent_from_metrics_and_batch(setup, actor, stages):
    exp = _experiment(stages)
    ref, _ = _collect(setup, actor, exp, None)
    traj, restarts = _collect(setup, actor, exp, kill_at=1)
    assert restarts == [0, 1]
    np.testing.assert_array_equal(traj.crashed, [False, False, True, True])
    # Every chunk of the crashed episodes is invalid, including those run before the crash.
    assert not traj.valid[:, 2:].any() and ref.valid[:, 2:].any()
    np.testing.assert_array_equal(traj.valid[:, :2], ref.valid[:, :2])
    # Envs 0 and 1 finished their episodes exactly as in the run without a crash (the policy acts
    # on each env's row alone, with the same noise); envs 2 and 3 lost theirs in chunk 1 (none of
    # this rollout's ended within chunk 0).
    assert len(ref.episodes["length"]) == 4 and (ref.episodes["length"][ref.episodes["task"] == 2] > 5).all()
    kept = np.isin(ref.episodes["task"], [0, 1])
    for k in ("success_once", "return", "length", "task"):
        np.testing.assert_array_equal(np.sort(traj.episodes[k]), np.sort(ref.episodes[k][kept]))
    assert len(traj.episodes["task"]) == 2
    metrics = train.env_metrics([traj], ["0", "1", "2"])
    assert metrics["env/episodes"] == 2.0
    assert metrics["env/episode_len"] == float(np.mean(traj.episodes["length"]))
    # The batch gives the crashed envs no weight.
    tg = batch_lib.targets(traj, "ppo", exp.advantage, 1, False, setup.mesh, max_episode_steps=20)
    weights = sharding.to_host(tg.weights)
    assert (weights[:, 2:] == 0).all() and (weights[:, :2] > 0).any()


def test_a_grpo_group_with_a_crashed_member_is_left_out(setup, actor):
    exp = _experiment(algorithm="grpo")
    traj, _ = _collect(setup, actor, exp, None)
    whole = sharding.to_host(
        batch_lib.targets(traj, "grpo", exp.advantage, 2, False, setup.mesh, max_episode_steps=20).mask
    )
    cut = dataclasses.replace(traj, crashed=np.array([False, True, False, False]))
    mask = sharding.to_host(
        batch_lib.targets(cut, "grpo", exp.advantage, 2, False, setup.mesh, max_episode_steps=20).mask
    )
    assert whole[:, :2].any() and not mask[:, :2].any()  # group (0, 1) lost env 1: all of it out
    np.testing.assert_array_equal(mask[:, 2:], whole[:, 2:])


def test_eval_wave_with_a_crash_is_run_again_and_equals_the_uninterrupted_eval(setup, actor):
    exp = _experiment()
    env = dataclasses.replace(exp.env, auto_reset=False, num_stages=1)
    ids = np.array([[t, k] for t in range(3) for k in range(2)])  # 6 episodes: waves of 4 and 2

    def evaluate(kill: bool):
        redone = []
        factory = dataclasses.replace(envsetup.sim_factory(env), sleep_s=0.01)
        with pool_lib.EnvPool(factory, envsetup.pool_config(env)) as p:

            def on_frame(obs, res, t):
                if kill and t == 2 and not redone:
                    os.kill(p.worker_pids()[0], signal.SIGKILL)

            out = rollout.run_episodes(
                p, actor, _params(setup), jax.random.key(7), ids, CHUNKS, on_frame, lambda: redone.append(1)
            )
            return out, redone, p.restarts.tolist()

    ref, ref_redone, _ = evaluate(kill=False)
    out, redone, restarts = evaluate(kill=True)
    assert ref_redone == [] and redone == [1] and restarts == [1, 0]
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])
    assert len(out["length"]) == 6 and (out["length"] > 0).all()
