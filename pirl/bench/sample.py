"""Time per action chunk and achieved FLOP/s of π0 / π0.5 sampling.

    python -m pirl.bench.sample --model=pi0 --batch=1,64 --steps=10 --cameras=2 --dtype=bfloat16

`--model` is pi0 / pi05 (full size), dummy / dummy05 (openpi's test Gemma sizes with a small
vision tower) or tiny / tiny05. Parameters are random (timing does not depend on their values).
FLOPs come from XLA's cost analysis of the compiled sampler, time is the median over `--iters`
calls after one warm-up.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from pirl.models import pi0

_MODEL = flags.DEFINE_enum("model", "dummy", ["pi0", "pi05", "dummy", "dummy05", "tiny", "tiny05"], "Model.")
_BATCH = flags.DEFINE_list("batch", ["1", "8"], "Batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Denoising steps K.")
_CAMERAS = flags.DEFINE_integer("cameras", 2, "Cameras in the prefix (1-3).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls per batch size.")


def model_config(name: str, dtype: str, cameras: int) -> pi0.Pi0Config:
    keys = pi0.IMAGE_KEYS[:cameras]
    pi05 = name.endswith("05")
    base = name.removesuffix("05")
    if base == "pi0" or name == "pi05":
        return pi0.Pi0Config(pi05=name == "pi05", dtype=dtype, image_keys=keys, remat=False)
    if base == "dummy":
        return pi0.Pi0Config.dummy(
            pi05, image_size=56, action_horizon=50, max_token_len=48, dtype=dtype, image_keys=keys
        )
    return pi0.Pi0Config.tiny(pi05=pi05, dtype=dtype, image_keys=keys)


def bench(config: pi0.Pi0Config, batch: int, steps: int, iters: int) -> dict:
    """Compiles the sampler for `batch` and times it; returns a row of the table."""
    params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0))
    if config.dtype == "bfloat16":
        # Serving stores weights in bfloat16 too; norms and softmax still compute in float32.
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    obs = pi0.fake_observation(config, batch, jax.random.key(1))
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


def main(argv):
    del argv
    config = model_config(_MODEL.value, _DTYPE.value, _CAMERAS.value)
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
        r = bench(config, int(b), _STEPS.value, _ITERS.value)
        print(
            f"{r['batch']:>6} {r['compile_s']:>10.1f} {r['ms_per_chunk']:>10.2f} {r['ms_min']:>9.2f} "
            f"{r['gflop']:>10.3f} {r['tflops']:>9.3f} {r['temp_gib']:>9.2f}"
        )


if __name__ == "__main__":
    app.run(main)
