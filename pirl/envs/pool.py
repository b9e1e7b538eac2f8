"""EnvPool: P worker processes x M simulators each, observations in shared memory.

Wire protocol (main <-> worker, one duplex pipe per worker; every message is a small tuple):
  worker -> main  ("ready", spec, instructions | None)   after the SimGroup is built (and, with
                                                          auto-reset after a restart, its envs reset)
  main -> worker  ("attach", {array name: shm name})      once, after the first "ready"
  main -> worker  ("reset", init_ids (M, 2))              -> ("reset", instructions)
  main -> worker  STEP_TAG + actions (M, T, A) as bytes  -> STEP_TAG + rewards and flag bytes
  main -> worker  ("close",)                              worker closes its sims and exits
Step messages are raw bytes, not pickles (layout: ``worker.encode_step_reply``): they are the
per-chunk traffic, and with a fast simulator (MetaWorld without rendering: ~0.3 ms a step) the
pickling of small arrays was a visible share of a chunk, paid once per worker on the main process.
Observations never go through the pipe: a worker writes its rows [w*M, (w+1)*M) of the pool-wide
shared arrays (one segment per camera and one for state, plus the same for ``final_obs``) before
replying, and the main process copies a worker's rows out as soon as its reply arrives, while
slower workers are still stepping, so that only the last worker's share is left on the critical
path.

Crash handling: the main process waits on the pipe AND the process sentinel together, so a worker
that dies (segfault, SIGKILL, OOM) is seen as soon as the OS reaps it (well under 1 s). Its envs
are reported with ``crashed=True`` and ``valid=False`` for that chunk, a replacement process is
started at once, and the pool waits for it to come up before returning, so the next call works.
With auto-reset the replacement resets its envs to fresh init ids and ``obs`` shows them; without,
those envs stay done until the next ``reset``. Other workers' results are untouched. A
replacement that dies while starting is started again after 1, 2, 4, ... s, up to
``restart_attempts`` times; then WorkerError says so. Each death, hang and failed start is one
warning line (logger ``pirl.envs.pool``); ``restarts`` counts the replacements per worker.

Hangs: a worker that sends nothing for a while during a command is killed and handled as a
crash. The limit is ``timeout_s`` if set; else it follows what the workers report they spend:
``HANG_FACTOR`` × the slowest chunk of that length (per step) or reset seen so far, at least
``min_timeout_s``; ``startup_timeout_s`` until a reply of that kind has been timed, while a worker
starts, and for a worker's first command after it started (which also pays one-time costs such as
render contexts, and is not timed).

Two-stage stepping: with ``num_stages=2`` the workers are split in two halves; the caller sends
actions for stage 0, computes actions for stage 1 while stage 0 steps, and so on
(``send_step``/``recv_step``). ``step_chunk`` does all stages at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import select
import signal
import time
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from jaxtyping import Float32, Int64

from pirl.envs import base, worker

logger = logging.getLogger(__name__)

# The derived hang limit: this many times the slowest chunk (or reset) seen.
HANG_FACTOR = 10.0


class WorkerError(RuntimeError):
    """A worker raised (its traceback follows the first line) or cannot be started; ``summary``
    is the one line a command prints (pirl.cli)."""

    @property
    def summary(self) -> str:
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        if len(lines) == 1:
            return lines[0]
        # The first line names the worker, the last the exception it raised.
        return f"{lines[0]} {lines[-1]} (--verbosity=1 shows the worker's traceback)"


# Thread pools that workers size from these variables before any simulator is imported: BLAS and
# OpenMP (threads in all), and llvmpipe/lavapipe (Mesa's CPU renderers), which otherwise start one
# render thread per core in every worker.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# LP_NUM_THREADS counts rasterizer threads besides the one that draws: with 1, the drawing thread
# bins the next frame while a second thread rasterizes the last, a worker uses ~1.1-1.2 cores and
# P workers oversubscribe P cores; with 0 the drawing thread rasterizes itself.
_RASTER_VAR = "LP_NUM_THREADS"


def worker_thread_env(threads_per_worker: int) -> dict[str, str]:
    """The environment that sizes a worker's thread pools to ``threads_per_worker`` threads."""
    return {**{k: str(threads_per_worker) for k in _THREAD_VARS}, _RASTER_VAR: str(threads_per_worker - 1)}


@contextlib.contextmanager
def worker_environ(threads_per_worker: int, gl: str | None):
    """The environment workers get (thread pools, GL backend), set for processes spawned inside the
    block: a spawned child reads it before importing anything. The parent's is restored after."""
    env = worker_thread_env(threads_per_worker)
    if gl is not None:
        env.update(MUJOCO_GL=gl, PYOPENGL_PLATFORM=gl)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# The config lives with the worker that reads it: pool imports worker, never the reverse.
PoolConfig = worker.PoolConfig


class EnvPool:
    """P worker processes x M envs behind one batched interface (see module docstring).

    ``factory(worker_index, M) -> SimGroup`` runs inside each worker; it must be picklable (a
    frozen dataclass config with ``__call__`` is the intended form).
    """

    def __init__(self, factory: Callable[[int, int], base.SimGroup], cfg: PoolConfig):
        self.cfg, self.factory = cfg, factory
        self.num_envs = cfg.num_workers * cfg.envs_per_worker
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = [None] * cfg.num_workers
        self._conns: list[Any] = [None] * cfg.num_workers
        self._shm: dict[str, shared_memory.SharedMemory] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._pending: list[str | None] = [None] * cfg.num_workers
        self._chunk_len: dict[int, int] = {}
        self._closed = False
        self.restarts = np.zeros(cfg.num_workers, np.int64)
        self.crash_log: list[tuple[int, float]] = []  # (worker, time.monotonic() when noticed)
        self._sent_at = np.zeros(cfg.num_workers)  # time.monotonic() of each worker's last command
        # Slowest worker-reported seconds per chunk step and per reset (0: not timed yet).
        self._step_s = self._reset_s = 0.0
        # A worker's first command after it starts also pays one-time costs (render contexts,
        # lazy imports): it gets the start-up limit and is not timed.
        self._fresh = np.ones(cfg.num_workers, bool)
        self.instructions = [""] * self.num_envs
        self.tracker = base.EpisodeTracker(self.num_envs)
        self._done = np.ones(self.num_envs, bool)
        # Runs on close(), garbage collection or interpreter exit, whichever comes first; it holds
        # the containers, not self, so it does not keep the pool alive.
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, self._shm)
        stages = np.array_split(np.arange(cfg.num_workers), cfg.num_stages)
        self.stage_workers = [list(map(int, s)) for s in stages]
        try:
            for w in range(cfg.num_workers):
                self._start(w, None)
            ready = self._gather(list(range(cfg.num_workers)), "ready", cfg.startup_timeout_s, quiet=True)
            for w, msg in ready.items():
                if msg is None:
                    raise WorkerError(
                        f"env worker {w} died while starting ({_exit_text(self._procs[w])}); run its factory "
                        "in the main process to see the error"
                    )
            specs = [ready[w][1] for w in range(cfg.num_workers)]
            self.spec: base.EnvSpec = specs[0]
            if any(s != self.spec for s in specs):
                raise ValueError(f"workers built different EnvSpecs: {set(specs)}")
            for key, (shape, dtype) in worker.array_layout(self.spec, self.num_envs).items():
                nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
                shm = shared_memory.SharedMemory(create=True, size=nbytes)
                self._shm[key] = shm
                self._arrays[key] = np.ndarray(shape, dtype, buffer=shm.buf)
                self._arrays[key].fill(0)
            names = {k: s.name for k, s in self._shm.items()}
            for conn in self._conns:
                conn.send(("attach", names))
        except BaseException:
            self.close()
            raise

    # -- process management ----------------------------------------------------------------
    def _start(self, w: int, shm_names):
        parent, child = self._ctx.Pipe(duplex=True)
        with worker_environ(self.cfg.threads_per_worker, self.cfg.gl):
            proc = self._ctx.Process(
                target=worker.worker_main,
                args=(child, self.factory, w, self.cfg, shm_names, int(self.restarts[w])),
                daemon=True,
                name=f"pirl-env-{w}",
            )
            proc.start()
        child.close()
        self._procs[w], self._conns[w] = proc, parent
        self._sent_at[w] = time.monotonic()
        self._fresh[w] = True

    def timeout(self, kind: str, t_len: int = 0) -> float:
        """Seconds a worker may stay silent on a ``kind`` command ("step" of ``t_len`` steps,
        "reset", "ready") before it is replaced (module docstring)."""
        if kind == "ready":
            return self.cfg.startup_timeout_s
        if self.cfg.timeout_s:
            return self.cfg.timeout_s
        if kind == "reset":
            seen = self._reset_s
        else:
            # With auto-reset a chunk also resets the envs whose episode ended in it.
            seen = self._step_s * t_len + (self._reset_s if self.cfg.auto_reset else 0.0) if self._step_s else 0.0
        return max(self.cfg.min_timeout_s, HANG_FACTOR * seen) if seen else self.cfg.startup_timeout_s

    def _revive(self, w: int, then: tuple | None = None) -> tuple | None:
        """Replaces dead worker ``w``; a replacement that dies while starting (or on ``then``, a
        command sent right after it is ready, whose reply is returned) is started again after
        1, 2, 4, ... s, ``restart_attempts`` times in all; then WorkerError."""
        for attempt in range(1, self.cfg.restart_attempts + 1):
            proc = self._procs[w]
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            self._conns[w].close()
            self.restarts[w] += 1
            self._start(w, {k: s.name for k, s in self._shm.items()})
            msg = self._gather([w], "ready", self.cfg.startup_timeout_s, quiet=True)[w]
            if msg is not None:
                self._set_instructions(w, msg[2] or {})
                if then is None:
                    return msg
                self._send(w, then)
                msg = self._gather([w], then[0], self.timeout(then[0]), quiet=True)[w]
                if msg is not None:
                    return msg
            if attempt == self.cfg.restart_attempts:
                break
            wait = 2.0 ** (attempt - 1)
            logger.warning(
                "env worker %d: its replacement died while starting (%s); starting another in %g s (attempt %d of %d)",
                w,
                _exit_text(self._procs[w]),
                wait,
                attempt + 1,
                self.cfg.restart_attempts,
            )
            time.sleep(wait)
        raise WorkerError(
            f"env worker {w} died while starting {self.cfg.restart_attempts} times in a row (last: "
            f"{_exit_text(self._procs[w])}); the simulator cannot start here: run its factory in the main "
            "process to see why"
        )

    def _send(self, w: int, msg: tuple) -> None:
        self._sent_at[w] = time.monotonic()
        # A dead worker's pipe is broken; _gather will see its sentinel and report the crash.
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conns[w].send(msg)

    def _gather(
        self,
        workers: list[int],
        kind: str,
        limit_s: float,
        on_reply: Callable[[int, tuple], None] | None = None,
        quiet: bool = False,
        t_len: int = 0,
    ) -> dict[int, tuple | None]:
        """Waits for one reply of the given kind from each worker, all at once, so that a death is
        seen as soon as the OS reports it, whatever the others are doing. A worker silent for
        ``limit_s`` after its command was sent is killed. ``on_reply(w, message)`` runs as each
        reply arrives. Returns {worker: message}, with None for a worker that died or hung (one
        warning line each, unless ``quiet``: the caller reports it)."""
        out: dict[int, tuple | None] = {}
        pending = set(workers)
        # One poll set for the whole wait (pipes and process sentinels), rather than a selector
        # built anew on every wake-up.
        poller, owner = select.poll(), {}
        for w in workers:
            for fd in (self._conns[w].fileno(), self._procs[w].sentinel):
                poller.register(fd, select.POLLIN)
                owner[fd] = w
        limit = {w: self.cfg.startup_timeout_s if self._fresh[w] and kind != "ready" else limit_s for w in workers}
        deadline = {w: self._sent_at[w] + limit[w] for w in workers}
        hung: set[int] = set()

        def lost(w: int, why: str) -> None:
            pending.discard(w)
            poller.unregister(self._conns[w].fileno())
            poller.unregister(self._procs[w].sentinel)
            self.crash_log.append((w, time.monotonic()))
            self._procs[w].join(5)
            if not quiet:
                m = self.cfg.envs_per_worker
                then = f"the episodes of its {m} env(s) are dropped" if kind == "step" else "it resets its envs again"
                logger.warning(
                    "env worker %d (pid %s) %s during a %s; a replacement starts (restart %d of this worker) and %s",
                    w,
                    self._procs[w].pid,
                    why,
                    kind,
                    self.restarts[w] + 1,
                    then,
                )
            out[w] = None

        while pending:
            events = poller.poll(max(0.0, min(deadline[w] for w in pending) - time.monotonic()) * 1000.0)
            if not events:
                now = time.monotonic()
                for w in sorted(pending):
                    if now < deadline[w]:
                        continue
                    if w in hung:  # killed, yet still not reaped: give up on it
                        lost(w, f"sent nothing for {limit[w]:.1f} s and would not die")
                        continue
                    # A hung simulator is handled like a dead one.
                    hung.add(w)
                    self._procs[w].kill()
                    deadline[w] = now + 5.0  # time for the kill to land
                continue
            ready = {fd for fd, _ in events}
            for w in sorted({owner[fd] for fd in ready} & pending):
                conn, proc = self._conns[w], self._procs[w]
                msg = None
                # A worker may have replied and then died: read what it sent before its sentinel.
                if conn.fileno() in ready or conn.poll():
                    with contextlib.suppress(EOFError, OSError):
                        msg = _decode(conn.recv_bytes())
                if msg is None and proc.is_alive():
                    continue  # spurious wake-up
                if msg is None:
                    if w in hung:
                        lost(w, f"sent nothing for {limit[w]:.1f} s (the limit; env.timeout_s sets it) and was killed")
                    else:
                        lost(w, f"died ({_exit_text(proc)})")
                    continue
                pending.discard(w)
                poller.unregister(conn.fileno())
                poller.unregister(proc.sentinel)
                if msg[0] == "error":
                    proc.join(5)
                    raise WorkerError(f"env worker {w} failed:\n{msg[1]}")
                if msg[0] != kind:
                    raise RuntimeError(f"env worker {w} replied {msg[0]!r}, expected {kind!r}")
                out[w] = msg
                if kind != "ready":
                    first, self._fresh[w] = self._fresh[w], False
                    if kind == "reset" and not first:
                        self._reset_s = max(self._reset_s, float(msg[2]))
                    elif kind == "step" and not first:
                        self._step_s = max(self._step_s, worker.step_reply_seconds(msg[1]) / max(t_len, 1))
                if on_reply is not None:
                    on_reply(w, msg)
        return out

    def _rows(self, workers: list[int]) -> np.ndarray:
        m = self.cfg.envs_per_worker
        return np.concatenate([np.arange(w * m, (w + 1) * m) for w in workers])

    def _obs_keys(self, prefix: str = "") -> list[str]:
        return [prefix + "img/" + c.name for c in self.spec.cameras] + [prefix + "state"]

    def _empty_obs(self, n: int, prefix: str = "") -> dict[str, np.ndarray]:
        return {k: np.empty((n, *self._arrays[k].shape[1:]), self._arrays[k].dtype) for k in self._obs_keys(prefix)}

    def _copy_rows(self, dst: dict[str, np.ndarray], src_rows: slice, dst_rows: slice):
        for k, arr in dst.items():
            arr[dst_rows] = self._arrays[k][src_rows]

    def _batch_obs(self, arrays: dict[str, np.ndarray], rows: slice, prefix: str = "") -> base.BatchObs:
        return base.BatchObs(
            images={c.name: arrays[prefix + "img/" + c.name] for c in self.spec.cameras},
            state=arrays[prefix + "state"],
            instruction=self.instructions[rows],
        )

    def _set_instructions(self, w: int, instructions: dict[int, str]):
        m = self.cfg.envs_per_worker
        for i, text in instructions.items():
            self.instructions[w * m + i] = text

    # -- public API ------------------------------------------------------------------------
    def stage_envs(self, stage: int) -> np.ndarray:
        """Env indices (into the pool's N) that belong to a stage."""
        return self._rows(self.stage_workers[stage])

    def reset(self, init_ids: Int64[np.ndarray, "N 2"]) -> base.BatchObs:
        """Resets every env to its (task, trial) id; use ``base.group_init_ids`` for GRPO groups."""
        self._check_open()
        ids = base.check_init_ids(self.spec, init_ids, self.num_envs)
        m = self.cfg.envs_per_worker
        for w in range(self.cfg.num_workers):
            self._send(w, ("reset", ids[w * m : (w + 1) * m]))
        replies = self._gather(list(range(self.cfg.num_workers)), "reset", self.timeout("reset"))
        for w in range(self.cfg.num_workers):
            if replies[w] is None:
                # A reset has no episode to lose: bring the worker back and reset it again.
                replies[w] = self._revive(w, then=("reset", ids[w * m : (w + 1) * m]))
            self._set_instructions(w, replies[w][1])
        self._pending = [None] * self.cfg.num_workers
        self.tracker.start(np.ones(self.num_envs, bool))
        self._done[:] = False
        every = slice(0, self.num_envs)
        obs = self._empty_obs(self.num_envs)
        self._copy_rows(obs, every, every)
        return self._batch_obs(obs, every)

    def _check_open(self):
        if self._closed:
            raise RuntimeError("EnvPool is closed")

    def send_step(self, stage: int, actions: Float32[np.ndarray, "n T A"]):
        """Starts one chunk on a stage's envs; n = len(stage_envs(stage))."""
        self._check_open()
        workers = self.stage_workers[stage]
        m, n = self.cfg.envs_per_worker, len(workers) * self.cfg.envs_per_worker
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 3 or actions.shape[0] != n or actions.shape[2] != self.spec.action_dim:
            raise ValueError(
                f"actions for stage {stage} must have shape ({n}, T, {self.spec.action_dim}), got {actions.shape}"
            )
        if any(self._pending[w] is not None for w in workers):
            raise RuntimeError(f"stage {stage} already has a chunk in flight; call recv_step first")
        for k, w in enumerate(workers):
            self._sent_at[w] = time.monotonic()
            # A dead worker's pipe is broken; _gather will see its sentinel and report the crash.
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conns[w].send_bytes(worker.encode_actions(actions[k * m : (k + 1) * m]))
            self._pending[w] = "step"
        self._chunk_len[stage] = actions.shape[1]

    def recv_step(self, stage: int) -> base.ChunkResult:
        """Waits for a stage's chunk; returns results for its envs (rows ``stage_envs(stage)``)."""
        workers = self.stage_workers[stage]
        m, t_len, auto = self.cfg.envs_per_worker, self._chunk_len.get(stage, 0), self.cfg.auto_reset
        if any(self._pending[w] is None for w in workers):
            raise RuntimeError(f"no chunk in flight for stage {stage}")
        # A stage's workers are consecutive, so its envs are one slice of the pool's rows.
        lo, hi = workers[0] * m, (workers[-1] + 1) * m
        rows = slice(lo, hi)
        rewards = np.zeros((hi - lo, t_len), np.float32)
        flags = np.zeros((hi - lo, t_len), np.uint8)
        env_flags = np.zeros(hi - lo, np.uint8)
        crashed = np.zeros(hi - lo, bool)
        obs = self._empty_obs(hi - lo)
        final = self._empty_obs(hi - lo, "final/") if auto else {}

        def unpack(w: int, reply: tuple | None):
            local, own = slice(w * m - lo, (w + 1) * m - lo), slice(w * m, (w + 1) * m)
            if reply is None:
                crashed[local] = True
                # With auto-reset the replacement worker has already started fresh episodes.
                env_flags[local] = worker.DONE | (worker.RESET_NOW if auto else 0)
            else:
                rewards[local], flags[local], env_flags[local], instructions, _ = worker.decode_step_reply(
                    reply[1], m, t_len
                )
                self._set_instructions(w, instructions)
            self._copy_rows(obs, own, local)
            self._copy_rows(final, own, local)

        replies = self._gather(workers, "step", self.timeout("step", t_len), on_reply=unpack, t_len=t_len)
        for w in workers:
            self._pending[w] = None
            if replies[w] is None:
                self._revive(w)
                unpack(w, None)
        valid = (flags & worker.VALID) != 0
        success = (flags & worker.SUCCESS) != 0
        done = (env_flags & worker.DONE) != 0
        reset_now = (env_flags & worker.RESET_NOW) != 0
        self.tracker.update(rows, rewards, success, valid)
        self._done[rows] = done
        result = base.ChunkResult(
            obs=self._batch_obs(obs, rows),
            rewards=rewards,
            terminated=(flags & worker.TERMINATED) != 0,
            truncated=(flags & worker.TRUNCATED) != 0,
            success=success,
            valid=valid,
            done=done,
            crashed=crashed,
            episode_return=self.tracker.ret[rows].copy(),
            episode_length=self.tracker.length[rows].copy(),
            success_once=self.tracker.success_once[rows].copy(),
            reset_now=reset_now,
            final_obs=self._batch_obs(final, rows, "final/") if auto else None,
        )
        if reset_now.any():  # rare; the tracker's masked writes cost more than this check
            self.tracker.start(_scatter(self.num_envs, rows, reset_now))
        return result

    def step_chunk(self, actions: Float32[np.ndarray, "N T A"]) -> base.ChunkResult:
        """Steps every env through a chunk of T actions (all stages, then waits for all)."""
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 3 or actions.shape[0] != self.num_envs:
            raise ValueError(f"actions must have shape ({self.num_envs}, T, A), got {actions.shape}")
        if self.cfg.num_stages == 1:  # the common case: no row gather, no result concatenation
            self.send_step(0, actions)
            return self.recv_step(0)
        for s in range(self.cfg.num_stages):
            self.send_step(s, actions[self.stage_envs(s)])
        return _concat_results([self.recv_step(s) for s in range(self.cfg.num_stages)])

    @property
    def done(self) -> np.ndarray:
        """(N,) True where the env's current episode has ended (one-episode mode) or crashed."""
        return self._done.copy()

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self):
        """Stops every worker and frees the shared memory; safe to call twice."""
        self._closed = True
        self._finalizer()
        self._arrays.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _exit_text(proc) -> str:
    code = proc.exitcode
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _shutdown(procs: list, conns: list, shms: dict[str, shared_memory.SharedMemory]):
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close",))
    deadline = time.monotonic() + 10.0
    for p in procs:
        if p is not None:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
    for conn in conns:
        if conn is not None:
            conn.close()
    for shm in shms.values():
        shm.close()
        shm.unlink()
    shms.clear()


def _decode(buf: bytes) -> tuple:
    """A worker's message: ("step", raw reply bytes) for a chunk, else the unpickled tuple."""
    if buf[: len(worker.STEP_TAG)] == worker.STEP_TAG:
        return ("step", buf)
    return pickle.loads(buf)


def _scatter(n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n, bool)
    out[rows] = values
    return out


def _concat_results(results: list[base.ChunkResult]) -> base.ChunkResult:
    if len(results) == 1:
        return results[0]

    def cat_obs(obs: list[base.BatchObs]) -> base.BatchObs:
        return base.BatchObs(
            images={k: np.concatenate([o.images[k] for o in obs]) for k in obs[0].images},
            state=np.concatenate([o.state for o in obs]),
            instruction=[s for o in obs for s in o.instruction],
        )

    fields = {}
    for f in dataclasses.fields(base.ChunkResult):
        vals = [getattr(r, f.name) for r in results]
        if f.name in ("obs", "final_obs"):
            fields[f.name] = None if vals[0] is None else cat_obs(vals)
        else:
            fields[f.name] = np.concatenate(vals)
    return base.ChunkResult(**fields)
