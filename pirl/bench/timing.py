"""Timing helpers shared by the benchmarks: compile time apart from run time, and the median of
repeated calls after warm-up (device work is asynchronous, so every call is waited for)."""

from __future__ import annotations

import statistics
import time

import jax


def compile_timed(lowered) -> tuple[object, float]:
    """(compiled program, seconds XLA took to compile it) of a ``jax.stages.Lowered``."""
    t0 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def call_times(fn, *args, iters: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``iters`` calls ``fn(*args)`` after ``warmup`` untimed ones, each call
    waited for with ``block_until_ready``."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median and minimum of a list of seconds, in milliseconds."""
    return {"ms": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times), "calls": len(times)}
