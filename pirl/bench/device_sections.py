"""The measurements of ``pirl.bench.device``, one function per section, each run in its own process.

Every section takes a ``Context`` (dry run or not, the section's deadline, the report to write
to) and records each result as soon as it has it, so a section stopped at its deadline keeps what
it measured. Sizes: full-size π0 / π0.5 in bfloat16 on the GPU; tiny models, few envs and small
images in the dry run (CPU), through the same code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pirl import cli, plan, sharding
from pirl.bench import envs as bench_envs
from pirl.bench import flops, timing
from pirl.bench import sample as bench_sample
from pirl.bench import update as bench_update
from pirl.envs import libero
from pirl.models import pi0
from pirl.rl import update as upd

GIB = 2**30
REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Context:
    """What a section needs: ``record(key, value)`` stores one result in the report at once."""

    dry_run: bool
    deadline: float  # time.time() by which the section must be done
    record: Callable[[str, object], None]

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, key: str, need_s: float) -> bool:
        """Whether ``need_s`` seconds remain; if not, records ``key`` as skipped."""
        if self.left() >= need_s:
            return True
        self.record(key, {"status": f"skipped: {self.left():.0f} s left of the section's time, ~{need_s:.0f} s needed"})
        return False


# ---------------------------------------------------------------- a: facts and ceilings


def _nvidia_smi() -> dict:
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi: {e}"}
    return dict(zip(fields.split(","), (x.strip() for x in out.splitlines()[0].split(",")), strict=False))


def _gl_libraries() -> dict:
    try:
        libs = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        libs = ""
    return {
        "libEGL": "libEGL.so.1" in libs,
        "libvulkan": "libvulkan.so.1" in libs,
        "egl_vendor_files": os.environ.get("__EGL_VENDOR_LIBRARY_FILENAMES", ""),
        "vk_driver_files": os.environ.get("VK_DRIVER_FILES", ""),
    }


def facts(ctx: Context) -> None:
    """The device, its software, and the two ceilings every figure is judged against: a large
    bfloat16 matrix product (TFLOP/s, random data, two input sets in turn) and an elementwise pass
    over a large array (TB/s, bytes read plus written)."""
    dev = jax.devices()[0]
    ctx.record(
        "facts",
        {
            "nvidia_smi": _nvidia_smi(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()],
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "gl": _gl_libraries(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    )
    n = 512 if ctx.dry_run else 8192
    keys = jax.random.split(jax.random.key(0), 4)
    mats = [jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys]
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(mats[0], mats[1]))
    times = []
    for i in range(3 + 10):  # three warm-ups; the two input pairs alternate (no cache reuse)
        a, b = (mats[0], mats[1]) if i % 2 else (mats[2], mats[3])
        t0 = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        if i >= 3:
            times.append(time.perf_counter() - t0)
    s = timing.summary(times)
    ctx.record("ceiling", {"tflops": 2 * n**3 / (s["ms"] / 1e3) / 1e12, "n": n, "ms": s["ms"], "kind": dev.device_kind})
    size = (2**23 if ctx.dry_run else 2**31) // 2  # bfloat16 elements: 8 MiB / 2 GiB
    x = jax.random.normal(keys[0], (size,), jnp.bfloat16)
    s = timing.summary(timing.call_times(jax.jit(lambda v: v + 1), x, iters=10, warmup=2))
    ctx.record("bandwidth", {"tb_s": 2 * x.nbytes / (s["ms"] / 1e3) / 1e12, "gib": x.nbytes / GIB, "ms": s["ms"]})


# ---------------------------------------------------------------- b: sampling


def sampling(ctx: Context, pi05: bool) -> None:
    """π0 / π0.5 sampling per chunk: 3 image slots (2 cameras + 1 masked), the model's prompt
    length (48 / 200 token ids, no tokenizer), K = 10, batch 1 then 64 (dry run: tiny, 1 and 4)."""
    steps = 10
    if ctx.dry_run:
        config = pi0.Pi0Config.tiny(pi05=pi05, dtype="bfloat16")
        batches, iters = (1, 4), (3, 3)
    else:
        config = pi0.Pi0Config(pi05=pi05, dtype="bfloat16", remat=False)
        batches, iters = (1, 64), (20, 8)
    ctx.record(
        "config",
        {
            "params_m": pi0.count_params(pi0.param_shapes(config)) / 1e6,
            "image_slots": len(config.image_keys),
            "masked": 1,
            "prompt_tokens": config.max_token_len,
            "prefix_tokens": config.prefix_len,
            "horizon": config.action_horizon,
            "K": steps,
        },
    )
    t0 = time.perf_counter()
    params = jax.block_until_ready(bench_sample.init_params(config))
    ctx.record("init_s", time.perf_counter() - t0)
    # Compile-time guesses on an H200 for the time check (the prefix program dominates).
    need = (10, 10) if ctx.dry_run else (30, 45)
    for batch, n, need_s in zip(batches, iters, need, strict=True):
        if ctx.fits(f"batch_{batch}", need_s):
            row = bench_sample.bench(config, batch, steps, n, masked=1, params=params)
            ctx.record(f"batch_{batch}", row)


# ---------------------------------------------------------------- c: the PPO update


def _libero_experiment(micro: int, dry_run: bool):
    """The LIBERO spatial π0 recipe (shrunk in the dry run) with one minibatch of two micro-batches."""
    from configs import libero_ppo  # configs/ sits beside the package, as pirl.bench.rollout reads it

    c = libero_ppo.get_config("suite=spatial,shrink" if dry_run else "suite=spatial")
    c.rl.update(micro_batch_size=micro, minibatch_size=2 * micro, update_epochs=1)
    exp, _ = cli.to_experiment(c)
    return exp


def update(ctx: Context, micro: int) -> None:
    """One PPO update (expert-only, LIBERO shapes): one minibatch of 2 micro-batches of ``micro``
    samples on one device. Records compile time, matrix FLOPs (with and without the recomputed
    forward of rematerialized blocks), the time per update, samples/s, the allocator's peak and
    ``pirl.plan``'s prediction of it for the same shapes (params + optimizer + buffer + XLA's
    scratch of this very program)."""
    if ctx.dry_run:
        micro = {8: 2, 16: 4, 32: 8}.get(micro, micro)
    exp = _libero_experiment(micro, ctx.dry_run)
    model = exp.model.pi0_config()
    mesh = sharding.make_mesh(exp.mesh, jax.devices()[:1])
    n = exp.rl.minibatch_size
    params = plan.abstract_params(exp, model)
    state = plan.abstract_state(exp, params)
    state_sh = sharding.param_shardings(mesh, state, exp.mesh.fsdp_min_bytes)
    batch = plan.abstract_batch(exp, model, params, n)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    ctx.record(
        "config",
        {
            "micro": micro,
            "samples": n,
            "trainable": exp.rl.trainable,
            "remat": model.remat,
            "dtype": model.dtype,
            "K": exp.policy.num_steps,
            "horizon": model.action_horizon,
        },
    )
    traced = upd.jit_update(exp.policy, model, exp.rl, mesh, state_sh).trace(state, batch, key)
    executed = flops.jaxpr_flops(traced.jaxpr).flops
    no_remat = dataclasses.replace(model, remat=False)
    model_flops = flops.count(upd.jit_update(exp.policy, no_remat, exp.rl, mesh, state_sh), state, batch, key).flops
    compiled, compile_s = timing.compile_timed(traced.lower())
    predicted = plan.update_bytes(mesh, state, state_sh, batch, compiled)
    predicted["total"] = sum(predicted[k] for k in ("params", "optimizer", "buffer", "update"))
    ctx.record(
        "compiled",
        {"compile_s": compile_s, "model_gflop": model_flops / 1e9, "executed_gflop": executed / 1e9}
        | {f"plan_{k}_gib": v / GIB for k, v in predicted.items()},
    )
    if not ctx.fits("run", 5 if ctx.dry_run else 25):
        return
    t0 = time.perf_counter()
    live = bench_update.init_state(exp.policy, model, exp.rl, state_sh)
    data = bench_update.random_batch(batch, model, exp.policy, jax.random.key(1))
    data = jax.block_until_ready(jax.device_put(data, sharding.batch_sharding(mesh)))
    before = jax.devices()[0].memory_stats() or {}
    ctx.record("init_s", time.perf_counter() - t0)
    live, times = bench_update.run_updates(compiled, live, data, warmup=1, repeats=2 if ctx.dry_run else 3)
    stats = jax.devices()[0].memory_stats() or {}
    s = timing.summary(times)
    ctx.record(
        "run",
        {
            "ms_per_update": s["ms"],
            "samples_per_s": n / (s["ms"] / 1e3),
            "model_tflops": model_flops / (s["ms"] / 1e3) / 1e12,
            "executed_tflops": executed / (s["ms"] / 1e3) / 1e12,
            # The allocator's peak since the process started (init included: see peak_before_gib);
            # None where the backend keeps no such statistics (CPU).
            "peak_gib": _gib(stats, "peak_bytes_in_use"),
            "peak_before_gib": _gib(before, "peak_bytes_in_use"),
            "in_use_before_gib": _gib(before, "bytes_in_use"),
        },
    )


def _gib(stats: dict, key: str) -> float | None:
    return stats[key] / GIB if key in stats else None


# ---------------------------------------------------------------- d: ManiSkill on the GPU


def _physx_gpu_library() -> pathlib.Path:
    """Where SAPIEN looks for its PhysX GPU library (it downloads it there at first GPU use)."""
    import sapien.physx  # late: SAPIEN is optional and heavy

    return pathlib.Path.home() / ".sapien" / "physx" / sapien.physx.version() / "libPhysXGpu_64.so"


def maniskill(ctx: Context) -> None:
    """ManiSkill PickCube with rgb observations on its GPU backend (one CUDA-batched env per
    worker): env steps/s at 64 and 320 envs. The dry run steps the CPU backend instead."""
    try:
        import mani_skill  # noqa: F401  (only checks that it is installed)
    except ImportError as e:
        ctx.record("status", f"skipped: mani_skill not importable ({e}); see launch/README.md")
        return
    if not ctx.dry_run:
        lib = _physx_gpu_library()
        if not lib.exists():
            ctx.record(
                "status", f"skipped: SAPIEN's PhysX GPU library is not at {lib} (SAPIEN downloads it at first use)"
            )
            return
    backend = "cpu" if ctx.dry_run else "gpu"
    layouts = [(1, 1)] if ctx.dry_run else [(1, 64), (1, 320), (16, 20)]
    size, seconds = (32, 1.0) if ctx.dry_run else (128, 8.0)
    for workers, envs in layouts:
        key = f"{workers}x{envs}"
        if ctx.fits(key, seconds + (5 if ctx.dry_run else 20)):
            rate, _, _ = bench_envs.measure("maniskill", True, workers, envs, size, 5, seconds, backend=backend)
            ctx.record(key, {"steps_per_s": rate, "workers": workers, "envs": envs, "image": size, "backend": backend})


# ---------------------------------------------------------------- e: simulator pools with EGL


def pools(ctx: Context) -> None:
    """MetaWorld reach-v3 rendering through EGL, one env per worker process: env steps/s at
    P = 1, 2, 4, 8, 16 (dry run 1, 2), and LIBERO likewise where it and its assets are present."""
    procs = (1, 2) if ctx.dry_run else (1, 2, 4, 8, 16)
    size, seconds = (32, 1.0) if ctx.dry_run else (224, 4.0)
    sims = ["metaworld", "libero"]
    for sim in sims:
        if sim == "libero":
            reason = _libero_missing(ctx.dry_run)
            if reason:
                ctx.record("libero", {"status": f"skipped: {reason}"})
                continue
        ctx.record(f"{sim}_image", size)
        base = None
        for p in procs:
            key = f"{sim}_P{p}"
            if not ctx.fits(key, seconds + (4 if ctx.dry_run else 6)):
                break
            rate, cpu, wait = bench_envs.measure(sim, True, p, 1, size, 5, seconds)
            base = base or rate
            ctx.record(key, {"steps_per_s": rate, "efficiency": rate / (p * base), "cpu": cpu, "run_queue": wait})


def _libero_missing(dry_run: bool) -> str:
    if dry_run:
        return "dry run (LIBERO takes the MetaWorld path through the same pool)"
    if importlib.util.find_spec("libero") is None:
        return "the libero package is not installed (its assets, 199 MiB, exceed what travels with the tree)"
    assets = os.environ.get(libero.ASSETS_ENV, bench_envs.LIBERO_ASSETS_DEFAULT)
    if not os.path.isdir(assets):
        return f"LIBERO assets not found at {assets}"
    return ""


# ---------------------------------------------------------------- f: end-to-end training


def _train_command(workdir: str, dry_run: bool) -> list[str]:
    """pirl.train on MetaWorld reach-v3, random init, in-process tokenizer, 2 iterations: full-size
    π0 with the recipe's renders and update settings on 8 envs (dry run: the shrunk recipe)."""
    args = [
        sys.executable,
        "-m",
        "pirl.train",
        "--config=configs/metaworld_ppo.py:benchmark=mt50" + (",shrink" if dry_run else ""),
        "--config.env.task=reach-v3",
        "--config.model.tokenizer=embedded",
        "--config.train.iterations=2",
        "--config.train.eval_every=0",
        "--config.train.progress=False",
        f"--workdir={workdir}",
    ]
    if not dry_run:
        # 8 envs × 10 chunk steps = 80 samples: one minibatch of 5 micro-batches per epoch.
        args += [
            "--config.env.num_envs=8",
            "--config.env.num_workers=8",
            "--config.env.max_steps=50",
            "--config.train.rollout_epochs=1",
            "--config.train.save_every=0",
            "--config.rl.minibatch_size=80",
            "--config.rl.micro_batch_size=16",
        ]
    return args


_TRAIN_KEYS = (
    "time/iteration_s",
    "time/rollout_s",
    "time/inference_s",
    "time/env_wait_s",
    "time/update_s",
    "env/steps_per_s",
    "env/steps",
)


def train(ctx: Context) -> None:
    """A short end-to-end ``pirl.train`` run in its own process group: per iteration the time of
    each phase and env steps/s, read from its metrics.jsonl as they appear. On the GPU the run is
    stopped once the second iteration is logged (its final checkpoint, ~15 GiB, is not part of the
    measurement); the dry run ends by itself."""
    workdir = tempfile.mkdtemp(prefix="pirl_device_train_")
    cmd = _train_command(workdir, ctx.dry_run)
    ctx.record("command", " ".join(cmd[1:]))
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    seen, stopped = 0, False
    try:
        while True:
            # Only whole lines: the run may be writing the next one.
            lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
            for line in lines[seen:]:
                m = json.loads(line)
                row = {k: m[k] for k in _TRAIN_KEYS if k in m}
                ctx.record(f"iteration_{m['step']}", row | {"logged_after_s": time.time() - t0})
            seen = len(lines)
            if proc.poll() is not None or (seen >= 2 and not ctx.dry_run) or ctx.left() < 2:
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stopped = True
        shutil.rmtree(workdir, ignore_errors=True)
    ctx.record("exit", f"stopped after {seen} iterations" if stopped else proc.returncode)
    if stopped and (ctx.dry_run or seen < 2):  # stopped by its time box, not after the 2nd iteration
        ctx.record("status", f"timeout: stopped at its box after {seen} iterations (what it measured is kept)")
    if not stopped and proc.returncode:
        raise RuntimeError(f"pirl.train exited with {proc.returncode} after {seen} iterations")


SECTIONS: dict[str, Callable[[Context], None]] = {
    "facts": facts,
    "sample_pi0": lambda ctx: sampling(ctx, pi05=False),
    "sample_pi05": lambda ctx: sampling(ctx, pi05=True),
    "update_8": lambda ctx: update(ctx, 8),
    "update_16": lambda ctx: update(ctx, 16),
    "update_32": lambda ctx: update(ctx, 32),
    "maniskill": maniskill,
    "pools": pools,
    "train": train,
}
