"""Benchmark of one PPO update (Flow-SDE one-step log-probs, critic on the expert).

    python -m pirl.bench.update                                   # tiny model, CPU-sized
    python -m pirl.bench.update --variant=full --micro_batch=8,16,32 --trainable=expert_only
    python -m pirl.bench.update --variant=full --trainable=full --compile_only   # memory of a full FT step

Per micro-batch size it prints compile time, the median wall time of the update (one epoch,
``--accum`` micro-batches per minibatch, ``--minibatches`` optimizer steps), achieved FLOP/s (the
whole update's matrix FLOPs from ``pirl.bench.flops``, every scanned layer and micro-step counted;
XLA's cost analysis counts a loop body once), and memory (XLA's compiled-program analysis; on GPU
also the allocator's peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from pirl import sharding
from pirl.bench import flops, timing
from pirl.models import pi0
from pirl.rl import flow
from pirl.rl import update as upd

GIB = 2**30


def model_config(variant: str) -> pi0.Pi0Config:
    if variant == "tiny":
        return pi0.Pi0Config.tiny()
    if variant == "dummy":
        return pi0.Pi0Config.dummy()
    if variant == "full":
        return pi0.Pi0Config()
    raise ValueError(f"unknown variant {variant!r} (tiny, dummy, full)")


def fake_batch(mc: pi0.Pi0Config, policy: flow.FlowPolicyConfig, n: int, rng: jax.Array) -> upd.Batch:
    """A rollout-shaped batch of random data (the update's cost does not depend on the values)."""
    keys = jax.random.split(rng, 5)
    chain = jax.random.normal(keys[0], (n, 2, mc.action_horizon, mc.action_dim))
    trans = flow.Transitions(chain=chain, k=jax.random.randint(keys[1], (n,), 0, policy.num_steps))
    return upd.Batch(
        obs=pi0.fake_observation(mc, n, keys[2]),
        transitions=trans,
        logp_old=jax.random.normal(keys[3], (n,)) - 20.0,
        value_old=jnp.zeros((n,)),
        advantages=jax.random.normal(keys[4], (n,)),
        returns=jnp.ones((n,)),
        weights=jnp.ones((n,)),
    )


def random_batch(shapes: upd.Batch, model: pi0.Pi0Config, policy: flow.FlowPolicyConfig, rng: jax.Array) -> upd.Batch:
    """Random data of the given shapes and dtypes (e.g. ``pirl.plan.abstract_batch``'s) that the
    update accepts: uint8 images, prompt ids below the vocabulary, denoising indices below K,
    masks and weights 1."""
    obs, keys = shapes.obs, iter(jax.random.split(rng, 16))
    tokens = obs.tokenized_prompt
    images = {
        k: jax.random.randint(next(keys), v.shape, 0, 256).astype(v.dtype)
        if v.dtype == jnp.uint8
        else jax.random.uniform(next(keys), v.shape, v.dtype, -1, 1)
        for k, v in obs.images.items()
    }
    tr = shapes.transitions
    return upd.Batch(
        obs=pi0.Observation(
            images=images,
            image_masks={k: jnp.ones(v.shape, bool) for k, v in obs.image_masks.items()},
            state=jax.random.normal(next(keys), obs.state.shape, obs.state.dtype),
            tokenized_prompt=jax.random.randint(next(keys), tokens.shape, 1, model.vocab_size).astype(tokens.dtype),
            tokenized_prompt_mask=jnp.ones(tokens.shape, bool),
        ),
        transitions=flow.Transitions(
            chain=jax.random.normal(next(keys), tr.chain.shape, tr.chain.dtype),
            k=jax.random.randint(next(keys), tr.k.shape, 0, policy.num_steps).astype(tr.k.dtype),
        ),
        logp_old=jax.random.normal(next(keys), shapes.logp_old.shape) - 20.0,
        value_old=jnp.zeros(shapes.value_old.shape),
        advantages=jax.random.normal(next(keys), shapes.advantages.shape),
        returns=jnp.ones(shapes.returns.shape),
        weights=jnp.ones(shapes.weights.shape),
    )


def init_state(policy: flow.FlowPolicyConfig, mc: pi0.Pi0Config, config: upd.UpdateConfig, state_sh) -> upd.TrainState:
    """A random-init train state (float32 params, as ``pi0.init_params``), placed by ``state_sh``."""
    init = jax.jit(
        lambda r: upd.init_train_state(config, {"model": pi0.init_params(mc, r)} | flow.init_heads(policy, mc, r)),
        out_shardings=state_sh,
    )
    return init(jax.random.key(0))


def run_updates(compiled, state: upd.TrainState, batch: upd.Batch, warmup: int, repeats: int):
    """(final state, seconds of each timed update): ``warmup`` + ``repeats`` updates, the state
    threaded through (each call donates it)."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, jax.random.key(i))
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return state, times


def bench_one(args, mc, policy, micro: int, mesh) -> dict:
    minibatch = micro * args.accum
    n = minibatch * args.minibatches
    config = upd.UpdateConfig(
        trainable=args.trainable, update_epochs=1, minibatch_size=minibatch, micro_batch_size=micro
    )
    sharding.check_batch_divisible(mesh, micro, "micro-batch")
    params_shape = jax.eval_shape(
        lambda r: {"model": pi0.init_params(mc, r)} | flow.init_heads(policy, mc, r), jax.random.key(0)
    )
    state_shape = jax.eval_shape(functools.partial(upd.init_train_state, config), params_shape)
    state_sh = sharding.param_shardings(mesh, state_shape)
    batch_shape = jax.eval_shape(functools.partial(fake_batch, mc, policy, n), jax.random.key(1))
    step = upd.jit_update(policy, mc, config, mesh, state_sh)

    traced = step.trace(state_shape, batch_shape, jax.ShapeDtypeStruct((), jax.random.key(0).dtype))
    count = flops.jaxpr_flops(traced.jaxpr)
    compiled, compile_s = timing.compile_timed(traced.lower())
    mem = compiled.memory_analysis()
    row = {
        "micro": micro,
        "samples": n,
        "compile_s": compile_s,
        "args_gib": getattr(mem, "argument_size_in_bytes", 0) / GIB,
        "temp_gib": getattr(mem, "temp_size_in_bytes", 0) / GIB,
    }
    if args.compile_only:
        return row

    state = init_state(policy, mc, config, state_sh)
    batch = jax.device_put(fake_batch(mc, policy, n, jax.random.key(1)), sharding.batch_sharding(mesh))
    state, times = run_updates(compiled, state, batch, args.warmup, args.repeats)
    stats = jax.devices()[0].memory_stats() or {}
    row |= {
        "median_s": statistics.median(times),
        "samples_per_s": n / statistics.median(times),
        "tflops": count.flops / statistics.median(times) / 1e12,
        "peak_gib": stats["peak_bytes_in_use"] / GIB if "peak_bytes_in_use" in stats else float("nan"),
    }
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="tiny", choices=["tiny", "dummy", "full"])
    p.add_argument("--micro_batch", default="8", help="comma-separated micro-batch sizes")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per minibatch")
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--trainable", default="expert_only", choices=list(upd.TRAINABLE_SETS))
    p.add_argument("--fsdp", type=int, default=-1, help="fsdp axis size (−1: all devices)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile_only", action="store_true", help="report compiled memory only")
    args = p.parse_args(argv)

    mc = model_config(args.variant)
    policy = flow.FlowPolicyConfig(num_steps=4, num_action_chunks=5, action_env_dim=7)
    if args.variant == "tiny":
        policy = dataclasses.replace(policy, value_hidden=(64, 32))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=args.fsdp))
    print(
        f"# PPO update, π0 {args.variant}, trainable={args.trainable}, devices={jax.device_count()} "
        f"({jax.devices()[0].device_kind}), accum={args.accum}, minibatches={args.minibatches}"
    )
    cols = ["micro", "samples", "compile_s", "args_gib", "temp_gib"]
    if not args.compile_only:
        cols += ["median_s", "samples_per_s", "tflops", "peak_gib"]
    print(" | ".join(f"{c:>13}" for c in cols))
    for micro in (int(m) for m in args.micro_batch.split(",")):
        row = bench_one(args, mc, policy, micro, mesh)
        print(
            " | ".join(f"{row[c]:>13.4g}" if isinstance(row[c], float) else f"{row[c]:>13}" for c in cols), flush=True
        )


if __name__ == "__main__":
    main()
