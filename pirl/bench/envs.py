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

    python -m pirl.bench.envs --vs-gym metaworld --busy 0 3     # EnvPool vs gymnasium AsyncVectorEnv

instead compares EnvPool with gymnasium's ``AsyncVectorEnv`` on the same simulator work
(``pirl.bench.vs_gym``): ``--max-procs`` processes x 1 env, rendering off and on, each under a
background load of ``--busy`` spinning processes (0 = only the machine's own load), the two sides
alternating ``--rounds`` times; it prints median steps/s per side, their ratio and the load.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from pirl.bench import vs_gym
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
    ap.add_argument("--render", choices=["both", "off", "on"], default="both", help="rendering modes to measure")
    ap.add_argument("--vs-gym", metavar="SIM", help="compare EnvPool with gymnasium's AsyncVectorEnv on SIM")
    ap.add_argument("--busy", type=int, nargs="+", default=[0], help="--vs-gym: spinning background processes")
    ap.add_argument("--rounds", type=int, default=5, help="--vs-gym: alternations of the two sides")
    args = ap.parse_args(argv)
    if args.vs_gym:
        return compare_gym(args)

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
    renders = {"both": (False, True), "off": (False,), "on": (True,)}[args.render]
    for sim in args.sims:
        try:
            make_factory(sim, False, args.size)
        except (ImportError, FileNotFoundError) as e:  # not installed, or LIBERO without its assets
            print(f"{sim:<10} skipped: {e}", flush=True)
            continue
        for render in renders:
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


def compare_gym(args) -> list[tuple]:
    """EnvPool vs AsyncVectorEnv rows: (render, busy, pool steps/s, gym steps/s, ratio, load)."""
    procs = args.max_procs
    print(
        f"EnvPool vs gymnasium AsyncVectorEnv: {args.vs_gym}, {procs} processes x 1 env, chunk {args.chunk}, "
        f"image {args.size}x{args.size} when rendering, {args.rounds} alternating rounds of {args.seconds:g} s, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    print(f"{'render':<7} {'busy':>4} {'EnvPool':>9} {'gymnasium':>10} {'ratio':>6} {'load':>5}", flush=True)
    rows = []
    for render in {"both": (False, True), "off": (False,), "on": (True,)}[args.render]:
        factory, adim, gl = make_factory(args.vs_gym, render, args.size)
        for busy in args.busy:
            r = vs_gym.compare(factory, adim, gl, procs, args.chunk, args.seconds, args.rounds, busy)
            a, b, ratio = vs_gym.summary(r)
            load = float(np.median(r["load"]))
            rows.append((render, busy, a, b, ratio, load))
            mode = "on" if render else "off"
            print(f"{mode:<7} {busy:>4} {a:>9.1f} {b:>10.1f} {ratio:>6.2f} {load:>5.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
