"""EnvPool on the toy simulator: bookkeeping, groups, auto-reset, pipelining, crashes, shutdown."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from pirl.envs import base, pool, toy, worker


def make(cfg=None, **kw):
    return pool.EnvPool(cfg or toy.ToyConfig(), pool.PoolConfig(**{"num_workers": 2, "envs_per_worker": 2, **kw}))


def drive_actions(x0, k, t_len):
    """Actions that bring the toy point from x0 to the origin in exactly k steps, then zeros."""
    a = np.zeros((len(x0), t_len, x0.shape[1]), np.float32)
    a[:, :k] = (-x0 / (0.1 * k))[:, None, :]
    return a


def test_group_reset_and_chunk_bookkeeping():
    with make(toy.ToyConfig(max_steps=6)) as p:
        assert p.spec.action_dim == 2 and p.num_envs == 4
        ids = base.group_init_ids(p.spec, 4, 2, np.random.default_rng(0))
        obs = p.reset(ids)
        # A GRPO group (envs 0,1 and envs 2,3) starts from one init id: identical observations.
        np.testing.assert_array_equal(obs.images["main"][0], obs.images["main"][1])
        np.testing.assert_array_equal(obs.state[2], obs.state[3])
        assert obs.instruction[0] == f"move the point to the origin (task {ids[0, 0]})"
        # Envs 0 and 2 go to the origin in 5 steps (|x0| <= 0.5, so |action| <= 1 is not clipped):
        # success on step 5 -> reward 1 at t=4, the episode terminates, steps 6-8 of the chunk are
        # skipped. Envs 1 and 3 stand still: max_steps=6 -> truncated at t=5, return 0, length 6.
        x0 = obs.state
        act = drive_actions(x0, 5, 8)
        act[[1, 3]] = 0.0
        r = p.step_chunk(act)
        np.testing.assert_array_equal(r.valid[0], [1, 1, 1, 1, 1, 0, 0, 0])
        np.testing.assert_array_equal(r.rewards[0], [0, 0, 0, 0, 1, 0, 0, 0])
        np.testing.assert_array_equal(r.terminated[0], [0, 0, 0, 0, 1, 0, 0, 0])
        np.testing.assert_array_equal(r.valid[1], [1, 1, 1, 1, 1, 1, 0, 0])
        np.testing.assert_array_equal(r.truncated[1], [0, 0, 0, 0, 0, 1, 0, 0])
        assert not r.terminated[1].any()
        np.testing.assert_array_equal(r.episode_return, [1, 0, 1, 0])
        np.testing.assert_array_equal(r.episode_length, [5, 6, 5, 6])
        np.testing.assert_array_equal(r.success_once, [1, 0, 1, 0])
        assert r.done.all() and not r.crashed.any() and not r.reset_now.any() and r.final_obs is None
        # Image channel 2 is the step counter: env 0 stopped after 5 steps, env 1 after 6.
        assert r.obs.images["main"][0, 0, 0, 2] == 5 and r.obs.images["main"][1, 0, 0, 2] == 6
        # One episode per rollout: a further chunk executes nothing.
        r2 = p.step_chunk(np.ones((4, 2, 2)))
        assert not r2.valid.any()
        np.testing.assert_array_equal(r2.episode_length, [5, 6, 5, 6])


def test_finish_chunks_executes_the_rest_of_the_chunk():
    """The reference's chunk_step (RLinf rlinf/envs/maniskill/maniskill_env.py ManiskillEnv.chunk_step)
    steps every env through all actions of a chunk, whether or not its episode ended on the way,
    and keeps those steps' rewards; the episode still counts as ended (auto-reset after the chunk)."""
    for auto_reset in (False, True):
        with make(toy.ToyConfig(max_steps=20), finish_chunks=True, auto_reset=auto_reset, seed=3) as p:
            # Start points with |x0|_inf > 0.25: 4/5 of the way there is still outside the 0.05 goal.
            obs = p.reset(np.array([[0, 1], [0, 2], [1, 0], [1, 3]]))
            # Envs 0, 2 reach the origin on step 5 of 8 and stay there: the toy pays 1 on every step
            # at the goal, so steps 6-8 (executed) add 3. Envs 1, 3 stand still.
            act = drive_actions(obs.state, 5, 8)
            act[[1, 3]] = 0.0
            r = p.step_chunk(act)
            assert r.valid.all()
            np.testing.assert_array_equal(r.rewards[0], [0, 0, 0, 0, 1, 1, 1, 1])
            np.testing.assert_array_equal(r.rewards[1], 0)
            np.testing.assert_array_equal(r.terminated[0], [0, 0, 0, 0, 1, 1, 1, 1])
            np.testing.assert_array_equal(r.done, [1, 0, 1, 0])
            np.testing.assert_array_equal(r.episode_return, [4, 0, 4, 0])
            np.testing.assert_array_equal(r.episode_length, [8, 8, 8, 8])
            last = r.final_obs if auto_reset else r.obs
            assert last.images["main"][0, 0, 0, 2] == 8  # the sim took all 8 steps (image: step count)
            if auto_reset:
                assert r.reset_now.tolist() == [1, 0, 1, 0] and r.obs.images["main"][0, 0, 0, 2] == 0
            else:
                assert not p.step_chunk(act).valid[[0, 2]].any()  # an ended episode stays ended
    # Without the option the same chunk stops each env at its episode's end.
    with make(toy.ToyConfig(max_steps=20)) as p:
        obs = p.reset(np.array([[0, 1], [0, 2], [1, 0], [1, 3]]))
        r = p.step_chunk(drive_actions(obs.state, 5, 8))
        np.testing.assert_array_equal(r.valid[0], [1, 1, 1, 1, 1, 0, 0, 0])
        np.testing.assert_array_equal(r.rewards[0], [0, 0, 0, 0, 1, 0, 0, 0])


def test_auto_reset_is_deterministic_and_keeps_final_obs():
    def run():
        with make(toy.ToyConfig(max_steps=3), auto_reset=True, seed=5) as p:
            p.reset(np.zeros((4, 2), np.int64))
            r = p.step_chunk(np.zeros((4, 5, 2)))
            return r, p.step_chunk(np.zeros((4, 5, 2)))

    r, r_next = run()
    assert r.reset_now.all() and r.done.all()
    np.testing.assert_array_equal(r.valid[:, :3], True)
    np.testing.assert_array_equal(r.valid[:, 3:], False)
    # final_obs is the last frame of the ended episode (step 3 of init id (0, 0)); obs is the new
    # episode's first frame (step 0).
    assert (r.final_obs.images["main"][:, 0, 0] == [0, 0, 3]).all()
    assert (r.obs.images["main"][:, 0, 0, 2] == 0).all()
    start00 = toy.ToySim(toy.ToyConfig()).start_position(0, 0)
    np.testing.assert_allclose(r.final_obs.state, np.broadcast_to(start00, (4, 2)))
    # The tracker restarted for the new episode.
    np.testing.assert_array_equal(r_next.episode_length, [3, 3, 3, 3])
    # Same seed, same sequence of auto-reset init ids (visible in image channels 0 and 1).
    r_again, _ = run()
    np.testing.assert_array_equal(r.obs.images["main"], r_again.obs.images["main"])
    expect = [base.env_rng(5, i) for i in range(4)]
    for i, g in enumerate(expect):
        task, trial = g.integers(3), g.integers(5)
        assert tuple(r.obs.images["main"][i, 0, 0, :2]) == (task * 10, trial)


def test_two_stage_matches_single_call():
    ids = np.array([[0, 1], [1, 2], [2, 3], [0, 4]])
    with make(num_stages=2) as p:
        x0 = p.reset(ids).state
        act = drive_actions(x0, 5, 6)
        np.testing.assert_array_equal(p.stage_envs(0), [0, 1])
        p.send_step(0, act[:2])
        p.send_step(1, act[2:])
        with pytest.raises(RuntimeError, match="already has a chunk in flight"):
            p.send_step(0, act[:2])
        a, b = p.recv_step(0), p.recv_step(1)
    with make() as q:
        q.reset(ids)
        ref = q.step_chunk(act)
    np.testing.assert_array_equal(np.concatenate([a.rewards, b.rewards]), ref.rewards)
    np.testing.assert_array_equal(np.concatenate([a.obs.state, b.obs.state]), ref.obs.state)
    assert ref.success_once.all()


def test_step_messages_round_trip_as_bytes():
    # Two envs, three steps. Env 0 stepped twice and terminated with success at t=1; env 1 ran all
    # three steps and was truncated at t=2. Flag byte = VALID(8) | TERMINATED(1) | TRUNCATED(2) |
    # SUCCESS(4): env 0 -> [8, 8+1+4, 0] = [8, 13, 0], env 1 -> [8, 8, 8+2] = [8, 8, 10].
    rewards = np.array([[0.0, 1.0, 0.0], [0.25, -0.5, 0.0]], np.float32)
    flags = np.array([[8, 13, 0], [8, 8, 10]], np.uint8)
    env_flags = np.array([worker.DONE | worker.RESET_NOW, worker.DONE], np.uint8)
    for instructions in ({}, {0: "open the drawer"}):
        buf = worker.encode_step_reply(rewards, flags, env_flags, instructions, seconds=0.25)
        # 1 tag byte + float32 seconds + 2x3 float32 rewards + 2x3 flag bytes + 2 env flag bytes
        # (+ the pickle).
        head = 1 + 4 + 24 + 6 + 2
        assert len(buf) > head if instructions else len(buf) == head
        kind, raw = pool._decode(buf)
        r, f, e, text, seconds = worker.decode_step_reply(raw, 2, 3)
        assert kind == "step" and text == instructions and seconds == 0.25
        np.testing.assert_array_equal(r, rewards)
        np.testing.assert_array_equal(f, flags)
        np.testing.assert_array_equal(e, [3, 1])
    actions = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(worker.decode_actions(worker.encode_actions(actions), 2, 4), actions)
    # Every other message is a pickle, which the tag byte cannot be mistaken for.
    from multiprocessing.reduction import ForkingPickler

    assert pool._decode(bytes(ForkingPickler.dumps(("reset", {0: "x"})))) == ("reset", {0: "x"})


def test_bad_inputs_name_the_problem():
    with make() as p:
        with pytest.raises(ValueError, match=r"init_ids must have shape \(4, 2\)"):
            p.reset(np.zeros((3, 2)))
        with pytest.raises(ValueError, match=r"task id 7 outside \[0, 3\)"):
            p.reset(np.array([[7, 0]] * 4))
        p.reset(np.zeros((4, 2)))
        with pytest.raises(ValueError, match=r"shape \(4, T, 2\)"):
            p.step_chunk(np.zeros((4, 3, 5)))


@pytest.mark.parametrize("auto_reset", [False, True])
def test_killed_worker_is_replaced_and_others_intact(auto_reset):
    cfg = toy.ToyConfig(sleep_s=0.05, max_steps=50)
    ids = np.array([[0, 0], [1, 1], [2, 2], [1, 3]])
    # 40 steps x 50 ms: worker 0 is still busy for ~2 s after the kill, so noticing the death
    # within 1 s requires watching all workers at once, not one after another.
    act = np.full((4, 40, 2), 0.01, np.float32)
    with make(cfg, auto_reset=auto_reset) as q:
        q.reset(ids)
        ref = q.step_chunk(act)
    with make(cfg, auto_reset=auto_reset) as p:
        p.reset(ids)
        victim = p.worker_pids()[1]
        p.send_step(0, act)
        time.sleep(0.2)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        r = p.recv_step(0)
        assert p.crash_log[0][0] == 1 and p.crash_log[0][1] - killed_at < 1.0
        assert r.valid[:2].all()  # worker 0 finished its whole chunk
        np.testing.assert_array_equal(r.crashed, [0, 0, 1, 1])
        assert not r.valid[2:].any() and r.done[2:].all()
        for f in ("rewards", "valid", "episode_length"):
            np.testing.assert_array_equal(getattr(r, f)[:2], getattr(ref, f)[:2])
        np.testing.assert_array_equal(r.obs.state[:2], ref.obs.state[:2])
        assert p.restarts.tolist() == [0, 1] and p.worker_pids()[1] != victim
        if auto_reset:  # the replacement started fresh episodes: obs at step 0, chunk runs
            assert r.reset_now[2:].all() and (r.obs.images["main"][2:, 0, 0, 2] == 0).all()
            r2 = p.step_chunk(act[:, :2])
            assert r2.valid.all() and not r2.crashed.any()
        else:  # one episode per rollout: the crashed envs stay done until the next reset
            r2 = p.step_chunk(act[:, :2])
            assert r2.valid[:2].all() and not r2.valid[2:].any()
            p.reset(ids)
            assert p.step_chunk(act[:, :2]).valid.all()


@dataclasses.dataclass(frozen=True)
class Broken(toy.ToyConfig):
    """Toy sims whose factory or step raises, to check that errors reach the main process."""

    fail_in: str = "factory"

    def __call__(self, worker_index, num_envs):
        if self.fail_in == "factory":
            raise OSError("no such scene file: /nowhere/scene.xml")
        group = super().__call__(worker_index, num_envs)
        for sim in group.sims:
            sim.step = lambda action: 1 / 0
        return group


def test_worker_errors_are_raised_with_their_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)env worker [01] failed:.*OSError: no such scene file"):
        make(Broken())
    with make(Broken(fail_in="step")) as p:
        p.reset(np.zeros((4, 2)))
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            p.step_chunk(np.zeros((4, 1, 2)))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited, which is what matters here.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _shm_exists(name):
    try:
        shared_memory.SharedMemory(name=name).close()
        return True
    except FileNotFoundError:
        return False


def test_close_leaves_no_processes_or_segments():
    p = make()
    pids, names = p.worker_pids(), [s.name for s in p._shm.values()]
    assert all(_alive(x) for x in pids) and all(_shm_exists(n) for n in names)
    p.close()
    p.close()
    assert not any(_alive(x) for x in pids)
    assert not any(_shm_exists(n) for n in names)
    with pytest.raises(RuntimeError, match="closed"):
        p.reset(np.zeros((4, 2)))


def test_exit_without_close_leaves_nothing():
    script = textwrap.dedent(
        """
        import numpy as np
        from pirl.envs import pool, toy
        if __name__ == "__main__":
            p = pool.EnvPool(toy.ToyConfig(), pool.PoolConfig(2, 1))
            p.reset(np.zeros((2, 2)))
            print(*p.worker_pids(), *[s.name for s in p._shm.values()])
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert out.returncode == 0, out.stderr
    fields = out.stdout.split()
    pids, names = [int(x) for x in fields[:2]], fields[2:]
    assert len(names) == 4  # obs + final_obs for one camera and the state
    deadline = time.monotonic() + 5
    while any(_alive(x) for x in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(x) for x in pids)
    assert not any(_shm_exists(n) for n in names)
    assert "leaked" not in out.stderr


@dataclasses.dataclass(frozen=True)
class DiesAtStart(toy.ToyConfig):
    """Toy sims whose factory SIGKILLs its own process while ``budget_file`` holds a count above
    0 (one per start): a replacement worker that dies while starting."""

    budget_file: str = ""

    def __call__(self, worker_index, num_envs):
        if self.budget_file and os.path.exists(self.budget_file):
            with open(self.budget_file) as f:
                left = int(f.read())
            if left > 0:
                with open(self.budget_file, "w") as f:
                    f.write(str(left - 1))
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(worker_index, num_envs)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pirl.envs.pool" and r.levelname == "WARNING"]


def test_replacement_that_dies_while_starting_is_retried(tmp_path, caplog):
    budget = tmp_path / "deaths"
    ids = np.array([[0, 0], [1, 1], [2, 2], [1, 3]])
    act = np.full((4, 3, 2), 0.01, np.float32)
    with make(DiesAtStart(budget_file=str(budget))) as p:
        p.reset(ids)
        budget.write_text("2")  # the next two starts die; the third comes up
        os.kill(p.worker_pids()[1], signal.SIGKILL)
        t0 = time.monotonic()
        r = p.step_chunk(act)
        # One crash warning, then one per failed start with its backoff: 1 s, then 2 s.
        assert time.monotonic() - t0 >= 3.0
        np.testing.assert_array_equal(r.crashed, [0, 0, 1, 1])
        assert p.restarts.tolist() == [0, 3] and budget.read_text() == "0"
        msgs = _warnings(caplog)
        assert len(msgs) == 3, msgs
        assert "env worker 1" in msgs[0] and "died (killed by SIGKILL) during a step" in msgs[0]
        assert all("replacement died while starting (killed by SIGKILL)" in m for m in msgs[1:])
        assert "attempt 2 of 3" in msgs[1] and "attempt 3 of 3" in msgs[2]
        p.reset(ids)
        assert p.step_chunk(act).valid.all()  # the third replacement works


def test_replacement_that_keeps_dying_is_one_clear_error(tmp_path):
    budget = tmp_path / "deaths"
    with make(DiesAtStart(budget_file=str(budget)), restart_attempts=2) as p:
        p.reset(np.zeros((4, 2), np.int64))
        budget.write_text("9")
        os.kill(p.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(pool.WorkerError) as e:
            p.step_chunk(np.zeros((4, 2, 2), np.float32))
    assert e.value.summary == (
        "env worker 0 died while starting 2 times in a row (last: killed by SIGKILL); the simulator cannot "
        "start here: run its factory in the main process to see why"
    )


def test_hang_timeout_follows_the_measured_step_time():
    with make(toy.ToyConfig(sleep_s=0.02), min_timeout_s=0.5, startup_timeout_s=300.0) as p:
        # Nothing timed yet: the start-up limit.
        assert p.timeout("reset") == p.timeout("step", 5) == 300.0
        p.reset(np.zeros((4, 2), np.int64))
        # A worker's first command after it starts also pays one-time costs: it is not timed.
        assert p.timeout("reset") == 300.0
        p.reset(np.zeros((4, 2), np.int64))
        assert p.timeout("reset") == 0.5  # toy resets take microseconds: the floor
        p.step_chunk(np.zeros((4, 5, 2), np.float32))
        # A worker steps its 2 envs one after the other: 5 steps x 2 envs x 20 ms = 0.2 s at
        # least, so the per-step time is >= 0.04 s and 10 x it x 5 steps >= 2 s (the seconds travel
        # as float32: 1.99 allows its rounding); well under the start-up limit.
        assert 1.99 <= p.timeout("step", 5) < 30.0
        assert p.timeout("step", 10) == pytest.approx(2 * p.timeout("step", 5))
    with make(toy.ToyConfig(), timeout_s=7.0) as p:
        assert p.timeout("step", 5) == p.timeout("reset") == 7.0  # set: fixed


def test_stopped_worker_is_replaced_within_the_derived_timeout(caplog):
    ids = np.array([[0, 0], [1, 1], [2, 2], [1, 3]])
    act = np.full((4, 4, 2), 0.01, np.float32)
    with make(toy.ToyConfig(max_steps=50), min_timeout_s=1.0) as p:
        p.reset(ids)
        p.step_chunk(act)
        limit = p.timeout("step", 4)
        assert limit == 1.0  # toy steps take microseconds: the floor
        victim = p.worker_pids()[1]
        os.kill(victim, signal.SIGSTOP)
        t0 = time.monotonic()
        r = p.step_chunk(act)
        took = time.monotonic() - t0
        # Replaced after the limit (plus the replacement's start-up), not after minutes.
        assert limit <= took < limit + 20.0, took
        np.testing.assert_array_equal(r.crashed, [0, 0, 1, 1])
        assert r.valid[:2].all() and p.restarts.tolist() == [0, 1] and p.worker_pids()[1] != victim
        msgs = _warnings(caplog)
        assert len(msgs) == 1 and "env worker 1" in msgs[0] and "sent nothing for 1.0 s" in msgs[0], msgs
        assert not _alive(victim)
        p.reset(ids)
        assert p.step_chunk(act).valid.all()
    print(f"stopped worker replaced after {took:.2f} s (limit {limit:.1f} s)")
