"""The worker side of EnvPool: one process owning a SimGroup (protocol: see pool.py).

The worker never imports JAX: it imports numpy, the simulator, and this package's base module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing import shared_memory

import numpy as np
from jaxtyping import Float32, UInt8

from pirl.envs import base

# First byte of a "step" message, which travels as raw bytes in both directions: a chunk is a few
# hundred bytes, and pickling the reply's arrays cost more than the pipe itself. Every other message
# is a pickle, whose first byte (the protocol opcode, 0x80) can never be this one.
STEP_TAG = b"S"
# Bits of the per-step flag byte (M, T) and of the per-env flag byte (M,) in a step reply.
TERMINATED, TRUNCATED, SUCCESS, VALID = 1, 2, 4, 8
DONE, RESET_NOW = 1, 2


def encode_actions(actions: Float32[np.ndarray, "M T A"]) -> bytes:
    return STEP_TAG + np.ascontiguousarray(actions, np.float32).tobytes()


def decode_actions(buf: bytes, m: int, action_dim: int) -> Float32[np.ndarray, "M T A"]:
    # A copy, so simulators get an ordinary writable array, not a view of the message.
    return np.frombuffer(buf, np.float32, offset=len(STEP_TAG)).reshape(m, -1, action_dim).copy()


def encode_step_reply(
    rewards: Float32[np.ndarray, "M T"],
    flags: UInt8[np.ndarray, "M T"],
    env_flags: UInt8[np.ndarray, " M"],
    instructions: dict[int, str],
    seconds: float = 0.0,
) -> bytes:
    """Packs the worker's time on the chunk (float32 seconds: what the pool's hang timeout is
    measured from), a chunk's per-step rewards and flags, and the per-env flags; the instructions
    of envs reset at the chunk end (rare) follow as a pickle."""
    tail = pickle.dumps(instructions) if instructions else b""
    head = np.float32(seconds).tobytes()
    return b"".join((STEP_TAG, head, rewards.astype(np.float32).tobytes(), flags.tobytes(), env_flags.tobytes(), tail))


def step_reply_seconds(buf: bytes) -> float:
    """The worker's seconds on the chunk, from an encoded step reply."""
    return float(np.frombuffer(buf, np.float32, 1, len(STEP_TAG))[0])


def decode_step_reply(
    buf: bytes, m: int, t_len: int
) -> tuple[Float32[np.ndarray, "M T"], UInt8[np.ndarray, "M T"], UInt8[np.ndarray, " M"], dict[int, str], float]:
    """Inverse of ``encode_step_reply`` for M envs and a chunk of T steps (read-only views):
    (rewards, flags, env_flags, instructions, seconds)."""
    k = len(STEP_TAG) + 4
    r_end = k + 4 * m * t_len
    f_end = r_end + m * t_len
    seconds = step_reply_seconds(buf)
    rewards = np.frombuffer(buf, np.float32, m * t_len, k).reshape(m, t_len)
    flags = np.frombuffer(buf, np.uint8, m * t_len, r_end).reshape(m, t_len)
    env_flags = np.frombuffer(buf, np.uint8, m, f_end)
    tail = buf[f_end + m :]
    return rewards, flags, env_flags, pickle.loads(tail) if tail else {}, seconds


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """How the pool runs its workers.

    Attributes:
      num_workers: P processes.
      envs_per_worker: M simulators per process.
      auto_reset: reset envs whose episode ended at the end of the chunk (see base.py).
      seed: auto-reset init ids of env i are drawn from ``base.env_rng(seed, env_offset + i)``.
      env_offset: the index of this pool's first env among all hosts' envs, so that pools of a
        multi-host job draw what one pool of all the envs would.
      num_stages: split workers into this many stages for pipelined stepping.
      gl: MUJOCO_GL for the workers ("egl" or "osmesa"); None leaves the environment alone.
      timeout_s: a worker silent for this long during a command is killed and treated as crashed;
        0 (default) derives the limit from measured times (see pool.py).
      min_timeout_s: the least derived limit (scheduling noise on a busy host is not a hang).
      startup_timeout_s: the limit while a worker starts, and for a command not yet timed.
      restart_attempts: replacements started in a row for a worker that keeps dying at start.
      threads_per_worker: size of each worker's BLAS/OpenMP/CPU-renderer thread pools. 1 suits one
        worker per core (parallelism from processes, no oversubscription); raise it when there are
        fewer workers than cores.
      finish_chunks: an env whose episode ends during a chunk still executes the chunk's remaining
        actions (``valid`` True, their rewards, success and length counted for that episode), as the
        reference's ``chunk_step`` does (RLinf rlinf/envs/maniskill/maniskill_env.py
        ``ManiskillEnv.chunk_step``); the episode stays ended. False skips those steps.
    """

    num_workers: int
    envs_per_worker: int
    auto_reset: bool = False
    seed: int = 0
    num_stages: int = 1
    gl: str | None = None
    timeout_s: float = 0.0
    threads_per_worker: int = 1
    env_offset: int = 0
    finish_chunks: bool = False
    min_timeout_s: float = 10.0
    startup_timeout_s: float = 600.0
    restart_attempts: int = 3

    def __post_init__(self):
        if self.num_workers < 1 or self.envs_per_worker < 1:
            raise ValueError(f"need num_workers, envs_per_worker >= 1, got {self}")
        if not 1 <= self.num_stages <= self.num_workers:
            raise ValueError(f"num_stages={self.num_stages} must be in [1, num_workers={self.num_workers}]")
        if self.gl not in (None, "egl", "osmesa"):
            raise ValueError(f"gl must be 'egl', 'osmesa' or None, got {self.gl!r}")
        if not (self.timeout_s >= 0 and self.min_timeout_s > 0 and self.startup_timeout_s > 0):
            raise ValueError(f"timeouts must be positive (timeout_s 0: derived), got {self}")
        if self.restart_attempts < 1:
            raise ValueError(f"restart_attempts must be >= 1, got {self.restart_attempts}")


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
        self.rngs = [base.env_rng(cfg.seed + 7919 * restarts, cfg.env_offset + index * m + i) for i in range(m)]
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

    def step(self, actions: Float32[np.ndarray, "M T A"]) -> bytes:
        """Runs a chunk and returns the encoded reply (see ``encode_step_reply``)."""
        t0 = time.perf_counter()
        m, t_len = actions.shape[0], actions.shape[1]
        rewards = np.zeros((m, t_len), np.float32)
        flags = np.zeros((m, t_len), np.uint8)
        max_steps = self.spec.max_steps
        done = self.done.tolist()  # Python scalars: this loop runs per step, numpy scalars are slow
        # Only each env's last state of the chunk is observed by the policy: a group that can defer
        # its rendering renders that one state instead of every step.
        deferred = getattr(self.group, "deferred", False)
        started = [i for i in range(m) if not done[i]]  # envs whose episode runs into this chunk
        for t in range(t_len):
            live = started if self.cfg.finish_chunks else [i for i in range(m) if not done[i]]
            if not live:
                break
            step_kw = {"observe": t == t_len - 1} if deferred else {}
            for i, so in zip(live, self.group.step(live, actions[live, t], **step_kw), strict=True):
                self.steps[i] += 1
                trunc = bool(so.truncated) or self.steps[i] >= max_steps
                term = bool(so.terminated)
                rewards[i, t] = so.reward
                flags[i, t] = VALID | TERMINATED * term | TRUNCATED * (trunc and not term) | SUCCESS * bool(so.success)
                self.last[i] = so.obs
                done[i] = done[i] or term or trunc
        self.done[:] = done
        stepped = [int(i) for i in np.flatnonzero((flags & VALID).any(axis=1))]
        unseen = [i for i in stepped if self.spec.cameras and not self.last[i].images] if deferred else []
        if unseen:  # episodes that ended before the chunk's last step
            for i, obs in zip(unseen, self.group.observe(unseen), strict=True):
                self.last[i] = obs
        for i in stepped:
            self.write(i, self.last[i])
        env_flags = self.done.astype(np.uint8) * DONE
        instructions = {}
        if self.cfg.auto_reset and self.done.any():
            ended = [int(i) for i in np.flatnonzero(self.done)]
            for i in ended:
                self.write(i, self.last[i], prefix="final/")
            instructions = self.reset(ended, self.next_init_ids(ended))
            env_flags[ended] |= RESET_NOW
        return encode_step_reply(rewards, flags, env_flags, instructions, time.perf_counter() - t0)

    def serve(self):
        m, action_dim = self.cfg.envs_per_worker, self.spec.action_dim
        while True:
            try:
                buf = self.conn.recv_bytes()
            except (EOFError, OSError):  # the main process is gone
                return
            if buf[: len(STEP_TAG)] == STEP_TAG:
                self.conn.send_bytes(self.step(decode_actions(buf, m, action_dim)))
                continue
            msg = pickle.loads(buf)
            kind = msg[0]
            if kind == "attach":
                self.attach(msg[1])
            elif kind == "reset":
                t0 = time.perf_counter()
                instructions = self.reset(list(range(len(msg[1]))), msg[1])
                self.conn.send(("reset", instructions, time.perf_counter() - t0))
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
