"""The worker side of EnvPool: one process owning a SimGroup (protocol: see pool.py).

The worker never imports JAX: it imports numpy, the simulator, and this package's base module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

import numpy as np

from pirl.envs import base

if TYPE_CHECKING:
    from pirl.envs.pool import PoolConfig


class Worker:
    """Runs inside a worker process: owns a SimGroup and writes its rows of the shared arrays."""

    def __init__(self, conn, group: base.SimGroup, index: int, cfg: PoolConfig, restarts: int):
        self.conn, self.group, self.cfg = conn, group, cfg
        m = cfg.envs_per_worker
        self.rows = slice(index * m, (index + 1) * m)
        self.spec = group.spec
        self.done = np.ones(m, bool)
        self.steps = np.zeros(m, np.int64)
        self.last: list[base.Obs | None] = [None] * m
        # Restarts draw from a different stream so a replacement does not replay the same ids.
        self.rngs = [base.env_rng(cfg.seed + 7919 * restarts, index * m + i) for i in range(m)]
        self.shm: dict[str, shared_memory.SharedMemory] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def attach(self, names: dict[str, str]):
        for key, name in names.items():
            shm = shared_memory.SharedMemory(name=name)
            shape, dtype = array_layout(self.spec, self.cfg.num_workers * self.cfg.envs_per_worker)[key]
            self.shm[key] = shm
            self.arrays[key] = np.ndarray(shape, dtype, buffer=shm.buf)[self.rows]

    def write(self, i: int, obs: base.Obs, prefix: str = ""):
        for cam in self.spec.cameras:
            self.arrays[prefix + "img/" + cam.name][i] = obs.images[cam.name]
        self.arrays[prefix + "state"][i] = obs.state

    def reset(self, env_ids: list[int], init_ids: np.ndarray) -> dict[int, str]:
        outs = self.group.reset(env_ids, init_ids)
        instructions = {}
        for i, (obs, text) in zip(env_ids, outs, strict=True):
            self.write(i, obs)
            self.last[i], self.done[i], self.steps[i] = obs, False, 0
            instructions[i] = text
        return instructions

    def next_init_ids(self, env_ids: list[int]) -> np.ndarray:
        spec = self.spec
        return np.array(
            [[self.rngs[i].integers(spec.num_tasks), self.rngs[i].integers(spec.num_trials)] for i in env_ids],
            np.int64,
        ).reshape(-1, 2)

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        m, t_len = actions.shape[0], actions.shape[1]
        out = {k: np.zeros((m, t_len), bool) for k in ("terminated", "truncated", "success", "valid")}
        out["rewards"] = np.zeros((m, t_len), np.float32)
        for t in range(t_len):
            live = [i for i in range(m) if not self.done[i]]
            if not live:
                break
            for i, so in zip(live, self.group.step(live, actions[live, t]), strict=True):
                self.steps[i] += 1
                trunc = bool(so.truncated) or self.steps[i] >= self.spec.max_steps
                out["rewards"][i, t] = so.reward
                out["terminated"][i, t] = so.terminated
                out["truncated"][i, t] = trunc and not so.terminated
                out["success"][i, t] = so.success
                out["valid"][i, t] = True
                self.last[i] = so.obs
                self.done[i] = so.terminated or trunc
        stepped = out["valid"].any(axis=1)
        for i in np.flatnonzero(stepped):
            self.write(i, self.last[i])
        out["done"] = self.done.copy()
        out["reset_now"] = np.zeros(m, bool)
        out["instructions"] = {}
        if self.cfg.auto_reset and self.done.any():
            ended = [int(i) for i in np.flatnonzero(self.done)]
            for i in ended:
                self.write(i, self.last[i], prefix="final/")
            out["instructions"] = self.reset(ended, self.next_init_ids(ended))
            out["reset_now"][ended] = True
        return out

    def serve(self):
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the main process is gone
                return
            kind = msg[0]
            if kind == "attach":
                self.attach(msg[1])
            elif kind == "reset":
                self.conn.send(("reset", self.reset(list(range(len(msg[1]))), msg[1])))
            elif kind == "step":
                self.conn.send(("step", self.step(msg[1])))
            elif kind == "close":
                return
            else:
                raise ValueError(f"worker got unknown command {kind!r}")


def worker_main(conn, factory, index: int, cfg: PoolConfig, shm_names, restarts: int):
    # Ctrl-C goes to the whole process group; only the main process should react to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Simulators print freely (from Python and C); keep the main process's stdout for its own output.
    sys.stdout.flush()
    os.dup2(2, 1)
    group = w = None
    try:
        group = factory(index, cfg.envs_per_worker)
        w = Worker(conn, group, index, cfg, restarts)
        instructions = None
        if shm_names is not None:
            w.attach(shm_names)
            if cfg.auto_reset:
                ids = list(range(cfg.envs_per_worker))
                instructions = w.reset(ids, w.next_init_ids(ids))
        conn.send(("ready", group.spec, instructions))
        w.serve()
    except Exception:
        # A Python error in a simulator is a bug, not a crash to recover from: hand the traceback
        # to the main process, which raises it, and exit.
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        if group is not None:
            group.close()
        for shm in w.shm.values() if w is not None else ():
            shm.close()


def array_layout(spec: base.EnvSpec, n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    layout = {}
    for prefix in ("", "final/"):
        for cam in spec.cameras:
            layout[prefix + "img/" + cam.name] = ((n, cam.height, cam.width, 3), np.dtype(np.uint8))
        layout[prefix + "state"] = ((n, spec.state_dim), np.dtype(np.float32))
    return layout
