"""Simulator throughput through EnvPool: steps/s for 1..P worker processes, rendering on and off.

    python -m pirl.bench.envs                           # all three simulators, P = 1..cpu count
    python -m pirl.bench.envs --sims metaworld --max-procs 4 --seconds 10 --size 224

Each configuration starts a pool of P workers x M envs (auto-reset, one task, zero-ish actions),
runs one warm-up chunk, then steps chunks of ``--chunk`` actions for ``--seconds`` and counts the
executed env steps. Scaling efficiency = steps/s with P processes / (P x steps/s with one), the
figure of merit for "a process per core": 1.0 is perfect, and it falls when processes contend for
cores, memory bandwidth or the pipe. "worker CPU" is the CPU time of an average worker (all its
threads) per second of wall time, and "run queue" the time its threads were ready but waiting for
a core: a large run-queue share means the machine had no free core (other load), and the
efficiency then measures the machine, not the pool. On a shared machine, running the benchmark
under a real-time policy (``chrt -r 1 python -m pirl.bench.envs``, needs root) keeps other
processes off the cores while it runs and approximates a quiet machine.
Episodes are kept long (max_steps raised) so resets do not dominate, except MetaWorld without
rendering, whose 100-step episodes reset in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from pirl.envs import libero, maniskill, metaworld, pool, toy


def make_factory(sim: str, render: bool, size: int, backend: str = "cpu"):
    """(factory, action_dim, gl) for one simulator, restricted to a single task; ``backend`` "gpu"
    runs ManiSkill's CUDA-batched simulation (one env per worker holding all its envs)."""
    if sim == "toy":  # no simulator: measures the pool's own overhead
        return toy.ToyConfig(max_steps=10**9, image_size=size, cameras=("main",) if render else ()), 2, None
    if sim == "metaworld":
        cfg = metaworld.MetaWorldConfig(benchmark="reach-v3", image_size=(size, size), render=render)
        return cfg, 4, "egl"
    if sim == "libero":
        cfg = libero.LiberoConfig(
            suite="libero_spatial",
            task_subset=(0,),
            image_size=(size, size),
            render=render,
            assets_dir=libero.find_assets(),  # here, not in the workers: a missing folder is one line
            max_steps=900,
        )
        return cfg, 7, "egl"
    if sim == "maniskill":
        cfg = maniskill.ManiSkillConfig(
            tasks=("PickCube-v1",), image_size=(size, size), render=render, max_steps=100_000, backend=backend
        )
        return cfg, 7, None
    raise ValueError(f"unknown simulator {sim!r}")


def _sched_seconds(pid: int) -> np.ndarray:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of a process so far, summed over
    its threads (renderers run their own), from /proc/<pid>/task/*/schedstat (Linux)."""
    total = np.zeros(2)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, wait_ns, _ = f.read().split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        total += np.array([int(run_ns), int(wait_ns)]) / 1e9
    return total


def measure(
    sim: str, render: bool, procs: int, envs: int, size: int, chunk: int, seconds: float, backend: str = "cpu"
) -> tuple[float, float, float]:
    """(env steps per second, CPU share, run-queue share) of one pool configuration: the shares
    are the fraction of the wall time an average worker spent running on a core, and waiting
    for one while ready to run. A large run-queue share means the machine had no free core (other
    load); a worker neither running nor waiting was idle, waiting for the main process."""
    factory, adim, gl = make_factory(sim, render, size, backend)
    cfg = pool.PoolConfig(procs, envs, auto_reset=True, gl=gl if envs == 1 else "osmesa")
    rng = np.random.default_rng(0)
    with pool.EnvPool(factory, cfg) as p:
        p.reset(np.zeros((p.num_envs, 2), np.int64))
        # Small random actions: the arm moves (so rendering is not of a static scene) but stays put.
        act = lambda: rng.uniform(-0.1, 0.1, (p.num_envs, chunk, adim)).astype(np.float32)
        p.step_chunk(act())
        pids = p.worker_pids()
        sched0 = sum(_sched_seconds(x) for x in pids)
        steps, start = 0, time.perf_counter()
        while True:
            steps += int(p.step_chunk(act()).valid.sum())
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                run, wait = (sum(_sched_seconds(x) for x in pids) - sched0) / (elapsed * procs)
                return steps / elapsed, float(run), float(wait)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", nargs="+", default=["metaworld", "libero", "maniskill"])
    ap.add_argument("--max-procs", type=int, default=os.cpu_count())
    ap.add_argument("--envs-per-proc", type=int, default=1)
    ap.add_argument("--size", type=int, default=128, help="image height = width when rendering")
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement time per configuration")
    args = ap.parse_args(argv)

    rows = []
    print(
        f"envs per process: {args.envs_per_proc}, image {args.size}x{args.size}, chunk {args.chunk}, "
        f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(
        f"{'simulator':<10} {'render':<7} {'P':>3} {'steps/s':>9} {'efficiency':>10} {'worker CPU':>10} "
        f"{'run queue':>9}",
        flush=True,
    )
    for sim in args.sims:
        try:
            make_factory(sim, False, args.size)
        except (ImportError, FileNotFoundError) as e:  # not installed, or LIBERO without its assets
            print(f"{sim:<10} skipped: {e}", flush=True)
            continue
        for render in (False, True):
            base_rate = None
            for procs in range(1, args.max_procs + 1):
                rate, cpu, wait = measure(sim, render, procs, args.envs_per_proc, args.size, args.chunk, args.seconds)
                base_rate = base_rate or rate
                eff = rate / (procs * base_rate)
                rows.append((sim, render, procs, rate, eff, cpu, wait))
                mode = "on" if render else "off"
                print(
                    f"{sim:<10} {mode:<7} {procs:>3} {rate:>9.1f} {eff:>10.2f} {cpu:>10.0%} {wait:>9.0%}",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    main()
