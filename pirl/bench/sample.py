r"""Time per action chunk and achieved FLOP/s of π0 / π0.5 sampling.

    python -m pirl.bench.sample --model=pi0 --batch=1,64 --steps=10 --cameras=3 --masked=1 --dtype=bfloat16

`--model` is pi0 / pi05 (full size), dummy / dummy05 (openpi's test Gemma sizes with a small
vision tower), dummy_so400m / dummy05_so400m (openpi's `dummy`: those Gemma sizes with the full
So400m/14 tower at 224²) or tiny / tiny05. `--cameras` image slots are in the prefix, the last
`--masked` of them absent (mask False: their tokens are still computed, as in openpi). Parameters
are random (timing does not depend on their values); prompts are random token ids (no tokenizer).

Per batch size: compile time, the median time per chunk over `--iters` calls after one warm-up,
the time of one expert step alone (against a random KV cache of the prefix's shape) and the prefix
it leaves (chunk − K · step), matrix FLOPs (``pirl.bench.flops``: loop bodies times their trip
counts, which XLA's cost analysis counts once) and the TFLOP/s they make, XLA's scratch, and what
the compiled program's loops show (``pirl.bench.hlo``): the K steps in one loop, and the prefix
(SigLIP, VLM) outside it.

Side by side with openpi's own JAX model (same parameters, observation and noise; openpi is
imported only from the given checkout, in an environment with its model dependencies):

    python -m pirl.bench.sample --model=dummy_so400m --dtype=float32 --cameras=3 --masked=1 \
        --batch=1,8 --iters=3 --openpi=/path/to/openpi

alternates the two compiled samplers call by call and prints each one's min and median seconds,
their ratio (openpi / pirl: above 1 means pirl is faster), the largest action difference and the
machine's load average.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from pirl.bench import flops, hlo, openpi_side, timing
from pirl.models import gemma, pi0

GIB = 2**30


def model_config(name: str, dtype: str, cameras: int) -> pi0.Pi0Config:
    keys = pi0.IMAGE_KEYS[:cameras]
    pi05 = name.endswith("05")
    base = name.removesuffix("05")
    if base == "pi0" or name == "pi05":
        return pi0.Pi0Config(pi05=name == "pi05", dtype=dtype, image_keys=keys, remat=False)
    if name.endswith("_so400m"):  # openpi's `dummy`: its Gemma sizes, the full tower, 224² images
        return pi0.Pi0Config.dummy(
            "05" in name,
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


_init = jax.jit(pi0.init_params, static_argnums=0)


def init_params(config: pi0.Pi0Config) -> dict:
    """Random parameters; bfloat16 when the model computes in it (serving stores weights so too;
    norms and softmax still compute in float32)."""
    params = _init(config, jax.random.key(0))
    if config.dtype == "bfloat16":
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    return params


def inputs(config: pi0.Pi0Config, batch: int, masked: int = 0) -> tuple[pi0.Observation, jax.Array]:
    """(observation, noise) of ``batch`` rows: random images, state and prompt ids, the last
    ``masked`` cameras marked absent."""
    obs = pi0.fake_observation(config, batch, jax.random.key(1))
    if masked:
        absent = config.image_keys[len(config.image_keys) - masked :]
        obs = obs.replace(image_masks={k: m & (k not in absent) for k, m in obs.image_masks.items()})
    noise = jax.random.normal(jax.random.key(2), (batch, config.action_horizon, config.action_dim))
    return obs, noise


def _random_like(tree, key: jax.Array):
    """Random normal floats, all-True booleans, zero integers of a tree of shapes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))

    def one(x, k):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jax.random.normal(k, x.shape, x.dtype)
        return jnp.ones(x.shape, x.dtype) if x.dtype == jnp.bool_ else jnp.zeros(x.shape, x.dtype)

    return jax.tree.unflatten(treedef, [one(x, k) for x, k in zip(leaves, keys, strict=True)])


def _expert_step(config, params, obs, prefix, x, t):
    return pi0.expert_pass(config, params, obs, prefix, x, t)[0]


def expert_step(config: pi0.Pi0Config, params, obs, noise, iters: int) -> dict:
    """One expert pass (one denoising step) alone, against a random KV cache of the prefix's shape:
    {step_compile_s, ms_per_step, ms_min_step}."""
    shapes = jax.eval_shape(functools.partial(pi0.prefix_pass, config), params, obs)
    prefix = jax.jit(lambda k: _random_like(shapes, k))(jax.random.key(3))
    t = jnp.ones((noise.shape[0],), jnp.float32)
    fn = jax.jit(functools.partial(_expert_step, config))
    compiled, compile_s = timing.compile_timed(fn.lower(params, obs, prefix, noise, t))
    s = timing.summary(timing.call_times(compiled, params, obs, prefix, noise, t, iters=iters))
    return {"step_compile_s": compile_s, "ms_per_step": s["ms"], "ms_min_step": s["ms_min"]}


def bench(
    config: pi0.Pi0Config,
    batch: int,
    steps: int,
    iters: int,
    *,
    masked: int = 0,
    params: dict | None = None,
    split: bool = True,
) -> dict:
    """Compiles the sampler for ``batch`` rows and times it; returns a row of the table (see the
    module doc). ``split`` adds the expert step's own time and the prefix's share."""
    params = init_params(config) if params is None else params
    obs, noise = inputs(config, batch, masked)
    fn = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
    count = flops.count(fn, config, params, obs, noise, num_steps=steps)
    compiled, compile_s = timing.compile_timed(fn.lower(config, params, obs, noise, num_steps=steps))
    s = timing.summary(timing.call_times(compiled, params, obs, noise, iters=iters))
    mem = compiled.memory_analysis()
    row = {
        "batch": batch,
        "steps": steps,
        "compile_s": compile_s,
        "ms_per_chunk": s["ms"],
        "ms_min": s["ms_min"],
        "gflop": count.flops / 1e9,
        "tflops": count.flops / (s["ms"] / 1e3) / 1e12,
        "temp_gib": getattr(mem, "temp_size_in_bytes", 0) / GIB if mem is not None else float("nan"),
    }
    try:
        row |= hlo.sampler_structure(compiled.as_text(), steps)
    except ValueError as e:  # an HLO dialect the reader does not know: keep the timings
        row |= {"k_loop": None, "kv_reused": None, "loops": f"unreadable HLO: {e}"}
    if split:
        row |= expert_step(config, params, obs, noise, iters)
        row["ms_prefix"] = row["ms_per_chunk"] - steps * row["ms_per_step"]
    return row


_MODEL = flags.DEFINE_enum(
    "model",
    "dummy",
    ["pi0", "pi05", "dummy", "dummy05", "dummy_so400m", "dummy05_so400m", "tiny", "tiny05"],
    "Model.",
)
_BATCH = flags.DEFINE_list("batch", ["1", "8"], "Batch sizes.")
_STEPS = flags.DEFINE_integer("steps", 10, "Denoising steps K.")
_CAMERAS = flags.DEFINE_integer("cameras", 2, "Image slots in the prefix (1-3).")
_MASKED = flags.DEFINE_integer("masked", 0, "How many of the last image slots are masked out.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls per batch size.")
_OPENPI = flags.DEFINE_string("openpi", None, "An openpi checkout: time openpi's JAX model too, alternating.")


def compare_openpi(config: pi0.Pi0Config, batch: int, steps: int, iters: int, checkout: str, masked: int = 0) -> dict:
    """pirl's and openpi's jitted samplers on openpi's random parameters, timed alternately.

    Returns {"batch", "pirl": [s per call], "openpi": [...], "max_diff", "load"}.
    """
    params, openpi_sample = openpi_side.build(checkout, config, jax.random.key(0))
    if config.dtype == "bfloat16":  # as init_params: serving stores weights in bfloat16
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    obs, noise = inputs(config, batch, masked)
    ours = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
    ours = ours.lower(config, params, obs, noise, num_steps=steps).compile()
    theirs = jax.jit(openpi_sample, static_argnames="num_steps").lower(params, obs, noise, num_steps=steps).compile()
    diff = openpi_side.max_abs_diff(ours(params, obs, noise), theirs(params, obs, noise))
    times = {"pirl": [], "openpi": []}
    for i in range(iters):
        # Who goes first swaps every call: a load that drifts during the run then favours neither.
        for name, fn in (("pirl", ours), ("openpi", theirs))[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            fn(params, obs, noise).block_until_ready()
            times[name].append(time.perf_counter() - t0)
    return {"batch": batch, **times, "max_diff": diff, "load": os.getloadavg()[0]}


def main_openpi(config: pi0.Pi0Config):
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


def main(argv):
    del argv
    config = model_config(_MODEL.value, _DTYPE.value, _CAMERAS.value)
    if _OPENPI.value:
        return main_openpi(config)
    n = pi0.count_params(pi0.param_shapes(config))
    print(
        f"model={_MODEL.value} params={n / 1e6:.1f}M dtype={config.dtype} cameras={_CAMERAS.value} "
        f"(masked {_MASKED.value}) K={_STEPS.value} horizon={config.action_horizon} "
        f"device={jax.devices()[0].device_kind}"
    )
    cols = ["batch", "compile_s", "ms_per_chunk", "ms_min", "ms_prefix", "ms_per_step", "gflop", "tflops", "temp_gib"]
    cols += ["k_loop", "kv_reused"]
    print(" ".join(f"{c:>12}" for c in cols))
    params = init_params(config)
    for b in _BATCH.value:
        r = bench(config, int(b), _STEPS.value, _ITERS.value, masked=_MASKED.value, params=params)
        print(" ".join(f"{r[c]:>12.4g}" if isinstance(r[c], float) else f"{r[c]!s:>12}" for c in cols), flush=True)


if __name__ == "__main__":
    app.run(main)
