"""EnvPool against gymnasium's ``AsyncVectorEnv`` on the same simulator work, alternating in one run.

Both sides step P processes x 1 env through chunks of T actions with identical simulator work: the
gymnasium side wraps the same pirl ``Sim`` in a ``gymnasium.Env`` whose ``step`` runs a whole chunk
(rendering only the observation the chunk ends on, like an EnvPool worker), so the ratio measures
the vector-env machinery (pipes, shared memory, scheduling), not the simulator. Rounds alternate
the two sides so that a change in the machine's load hits both; the table gives per-side medians
and the load average over the run.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from pirl.envs import base, pool


@dataclasses.dataclass(frozen=True)
class ChunkEnvFactory:
    """Picklable ``() -> ChunkEnv`` for gymnasium's vector envs (spawned workers)."""

    factory: Callable[[int, int], base.SimGroup]
    chunk: int
    seed: int

    def __call__(self):
        return ChunkEnv(self.factory(0, 1), self.chunk, self.seed)


class ChunkEnv(gym.Env):
    """One pirl sim as a gymnasium env whose action is a chunk (T, A) of actions.

    Observation {"state": (S,), camera name: (H, W, 3) uint8}; reward: the chunk's summed reward;
    info["steps"]: steps executed (fewer than T when the episode ends inside the chunk, at the sim's
    own end or at ``spec.max_steps``, as an EnvPool worker counts them).
    """

    def __init__(self, group: base.SimGroup, chunk: int, seed: int):
        self.group, self.spec = group, group.spec
        self.rng = np.random.default_rng(seed)
        obs = {"state": spaces.Box(-np.inf, np.inf, (self.spec.state_dim,), np.float32)}
        for cam in self.spec.cameras:
            obs[cam.name] = spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1, 1, (chunk, self.spec.action_dim), np.float32)
        self.deferred = getattr(group, "deferred", False)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        ids = np.array([[self.rng.integers(self.spec.num_tasks), self.rng.integers(self.spec.num_trials)]])
        ((obs, _),) = self.group.reset([0], ids)
        self.steps = 0
        return {"state": obs.state, **obs.images}, {}

    def step(self, actions):
        total, n, term, trunc, last = 0.0, 0, False, False, None
        for t in range(len(actions)):
            kw = {"observe": t == len(actions) - 1} if self.deferred else {}
            (so,) = self.group.step([0], actions[t : t + 1], **kw)
            self.steps += 1
            n += 1
            total += so.reward
            last = so.obs
            term = bool(so.terminated)
            trunc = bool(so.truncated) or self.steps >= self.spec.max_steps
            if term or trunc:
                break
        if self.deferred and self.spec.cameras and not last.images:  # ended before the last step
            (last,) = self.group.observe([0])
        return {"state": last.state, **last.images}, total, term, trunc and not term, {"steps": n}

    def close(self):
        self.group.close()


def _busy_loop():
    while True:
        pass


class BusyLoad:
    """``n`` processes spinning in Python, a controlled background load (context manager)."""

    def __init__(self, n: int):
        self.procs = [mp.get_context("spawn").Process(target=_busy_loop, daemon=True) for _ in range(n)]

    def __enter__(self):
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.join()


def _executed_steps(info: dict) -> int:
    """Steps executed in one vector step: an env that reset in it reports its count in final_info."""
    n = 0
    for d in (info, info.get("final_info", {})):
        if "steps" in d:
            n += int(d["steps"][d["_steps"]].sum())
    return n


def _rate(step: Callable[[], int], seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        steps += step()
    return steps / elapsed


def compare(
    factory,
    action_dim: int,
    gl: str | None,
    procs: int = 2,
    chunk: int = 5,
    seconds: float = 3.0,
    rounds: int = 5,
    busy: int = 0,
) -> dict:
    """Alternates ``rounds`` x (EnvPool, AsyncVectorEnv) measurements of ``seconds`` each.

    Returns {"pool": [steps/s per round], "gym": [...], "load": [1-min load average after each
    round], "busy": busy}. Both run ``procs`` processes x 1 env with auto-reset and chunks of
    ``chunk`` small random actions.
    """
    rng = np.random.default_rng(0)
    act = lambda: rng.uniform(-0.1, 0.1, (procs, chunk, action_dim)).astype(np.float32)
    out = {"pool": [], "gym": [], "load": [], "busy": busy}
    env_fns = [ChunkEnvFactory(factory, chunk, seed=i) for i in range(procs)]
    cfg = pool.PoolConfig(procs, 1, auto_reset=True, gl=gl)
    with pool.EnvPool(factory, cfg) as p:
        with pool.worker_environ(1, gl):
            gym_env = AsyncVectorEnv(env_fns, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP)
        try:
            p.reset(np.zeros((procs, 2), np.int64))
            gym_env.reset(seed=0)
            pool_step = lambda: int(p.step_chunk(act()).valid.sum())
            gym_step = lambda: _executed_steps(gym_env.step(act())[4])
            pool_step(), gym_step()  # warm-up: first renders, lazy allocations
            with BusyLoad(busy):
                for _ in range(rounds):
                    out["pool"].append(_rate(pool_step, seconds))
                    out["gym"].append(_rate(gym_step, seconds))
                    out["load"].append(os.getloadavg()[0])
        finally:
            gym_env.close()
    return out


def summary(result: dict) -> tuple[float, float, float]:
    """(median EnvPool steps/s, median AsyncVectorEnv steps/s, their ratio)."""
    a, b = statistics.median(result["pool"]), statistics.median(result["gym"])
    return a, b, a / b
