"""Time per action chunk and achieved FLOP/s of π0 / π0.5 sampling.

    python -m pirl.bench.sample --model=pi0 --batch=1,64 --steps=10 --cameras=2 --dtype=bfloat16

`--model` is pi0 / pi05 (full size), dummy / dummy05 (openpi's test Gemma sizes with a small
vision tower), dummy_so400m / dummy05_so400m (openpi's `dummy`: those Gemma sizes with the full
So400m/14 tower at 224²) or tiny / tiny05. Parameters are random (timing does not depend on their
values). FLOPs come from XLA's cost analysis of the compiled sampler, time is the median over
`--iters` calls after one warm-up. `--masked=n` marks the last n cameras absent (image_masks False).

Side by side with openpi's own JAX model (same parameters, observation and noise; openpi is
imported only from the given checkout, whose model dependencies the environment must have):

    python -m pirl.bench.sample --model=dummy_so400m --dtype=float32 --cameras=3 --masked=1 \
        --batch=1,8 --iters=3 --openpi=/path/to/openpi

alternates the two compiled samplers call by call and prints each one's min and median seconds,
their ratio (openpi / pirl: above 1 means pirl is faster), the largest action difference and the
machine's load average.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from pirl.bench import openpi_side
from pirl.models import gemma, pi0

_MODEL = flags.DEFINE_enum(
    "model",
    "dummy",
    ["pi0", "pi05", "dummy", "dummy05", "dummy_so400m", "dummy05_so400m", "tiny", "tiny05"],
    "Model.",
)
_BATCH = flags.DEFINE_list("batch", ["1", "8"], "Batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Denoising steps K.")
_CAMERAS = flags.DEFINE_integer("cameras", 2, "Cameras in the prefix (1-3).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls per batch size.")
_MASKED = flags.DEFINE_integer("masked", 0, "Trailing cameras marked absent (image_masks False).")
_OPENPI = flags.DEFINE_string("openpi", None, "An openpi checkout: also time openpi's JAX model, alternating.")


def model_config(name: str, dtype: str, cameras: int) -> pi0.Pi0Config:
    keys = pi0.IMAGE_KEYS[:cameras]
    pi05 = "05" in name
    base = name.removesuffix("05")
    if base == "pi0" or name == "pi05":
        return pi0.Pi0Config(pi05=name == "pi05", dtype=dtype, image_keys=keys, remat=False)
    if name.endswith("_so400m"):  # openpi's `dummy`: its Gemma sizes, the full tower, 224² images
        return pi0.Pi0Config.dummy(
            pi05,
            vision_variant="So400m/14",
            image_size=224,
            action_horizon=50,
            max_token_len=None,
            vocab_size=gemma.PALIGEMMA_VOCAB_SIZE,
            dtype=dtype,
            image_keys=keys,
        )
    if base == "dummy":
        return pi0.Pi0Config.dummy(
            pi05, image_size=56, action_horizon=50, max_token_len=48, dtype=dtype, image_keys=keys
        )
    return pi0.Pi0Config.tiny(pi05=pi05, dtype=dtype, image_keys=keys)


def observation(config: pi0.Pi0Config, batch: int, masked: int = 0) -> pi0.Observation:
    """Random observation with the last `masked` cameras marked absent."""
    obs = pi0.fake_observation(config, batch, jax.random.key(1))
    absent = config.image_keys[len(config.image_keys) - masked :] if masked else ()
    return obs.replace(image_masks={k: m & (k not in absent) for k, m in obs.image_masks.items()})


def serving_params(config: pi0.Pi0Config, params: dict) -> dict:
    if config.dtype == "bfloat16":
        # Serving stores weights in bfloat16 too; norms and softmax still compute in float32.
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    return params


def bench(config: pi0.Pi0Config, batch: int, steps: int, iters: int, masked: int = 0) -> dict:
    """Compiles the sampler for `batch` and times it; returns a row of the table."""
    params = serving_params(config, jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0)))
    obs = observation(config, batch, masked)
    noise = jax.random.normal(jax.random.key(2), (batch, config.action_horizon, config.action_dim))
    fn = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
    t0 = time.perf_counter()
    compiled = fn.lower(config, params, obs, noise, num_steps=steps).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0))
    compiled(params, obs, noise).block_until_ready()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        compiled(params, obs, noise).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    mem = compiled.memory_analysis()
    temp_gib = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem is not None else float("nan")
    return {
        "batch": batch,
        "compile_s": compile_s,
        "ms_per_chunk": 1e3 * med,
        "ms_min": 1e3 * min(times),
        "gflop": flops / 1e9,
        "tflops": flops / med / 1e12,
        "temp_gib": temp_gib,
    }


def compare_openpi(config: pi0.Pi0Config, batch: int, steps: int, iters: int, checkout: str, masked: int = 0) -> dict:
    """pirl's and openpi's jitted samplers on openpi's random parameters, timed alternately.

    Returns {"batch", "pirl": [s per call], "openpi": [...], "max_diff", "load"}.
    """
    params, openpi_sample = openpi_side.build(checkout, config, jax.random.key(0))
    params = serving_params(config, params)
    obs = observation(config, batch, masked)
    noise = jax.random.normal(jax.random.key(2), (batch, config.action_horizon, config.action_dim))
    ours = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
    ours = ours.lower(config, params, obs, noise, num_steps=steps).compile()
    theirs = jax.jit(openpi_sample, static_argnames="num_steps").lower(params, obs, noise, num_steps=steps).compile()
    diff = openpi_side.max_abs_diff(ours(params, obs, noise), theirs(params, obs, noise))
    times = {"pirl": [], "openpi": []}
    for _ in range(iters):
        for name, fn in (("pirl", ours), ("openpi", theirs)):
            t0 = time.perf_counter()
            fn(params, obs, noise).block_until_ready()
            times[name].append(time.perf_counter() - t0)
    return {"batch": batch, **times, "max_diff": diff, "load": os.getloadavg()[0]}


def main(argv):
    del argv
    config = model_config(_MODEL.value, _DTYPE.value, _CAMERAS.value)
    if _OPENPI.value:
        print(
            f"model={_MODEL.value} dtype={config.dtype} cameras={_CAMERAS.value} (masked {_MASKED.value}) "
            f"K={_STEPS.value}, pirl vs openpi at {_OPENPI.value}, alternating, {os.cpu_count()} cores, "
            f"load average at start {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'batch':>6} {'pirl min s':>11} {'openpi min s':>13} {'pirl med':>9} {'openpi med':>11} "
            f"{'openpi/pirl':>12} {'max |da|':>9} {'load':>5}"
        )
        for b in _BATCH.value:
            r = compare_openpi(config, int(b), _STEPS.value, _ITERS.value, _OPENPI.value, _MASKED.value)
            mp, mo = min(r["pirl"]), min(r["openpi"])
            print(
                f"{r['batch']:>6} {mp:>11.2f} {mo:>13.2f} {statistics.median(r['pirl']):>9.2f} "
                f"{statistics.median(r['openpi']):>11.2f} {mo / mp:>12.3f} {r['max_diff']:>9.1e} {r['load']:>5.1f}",
                flush=True,
            )
        return
    n = pi0.count_params(pi0.param_shapes(config))
    print(
        f"model={_MODEL.value} params={n / 1e6:.1f}M dtype={config.dtype} cameras={_CAMERAS.value} "
        f"K={_STEPS.value} horizon={config.action_horizon} device={jax.devices()[0].device_kind}"
    )
    header = (
        f"{'batch':>6} {'compile s':>10} {'ms/chunk':>10} {'min ms':>9} {'GFLOP':>10} {'TFLOP/s':>9} {'temp GiB':>9}"
    )
    print(header)
    for b in _BATCH.value:
        r = bench(config, int(b), _STEPS.value, _ITERS.value, _MASKED.value)
        print(
            f"{r['batch']:>6} {r['compile_s']:>10.1f} {r['ms_per_chunk']:>10.2f} {r['ms_min']:>9.2f} "
            f"{r['gflop']:>10.3f} {r['tflops']:>9.3f} {r['temp_gib']:>9.2f}"
        )


if __name__ == "__main__":
    app.run(main)
