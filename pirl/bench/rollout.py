"""Rollout pipelining benchmark: wall time of one rollout with 1 and 2 pool stages, against
max(sim time, inference time) measured separately on the same envs and batches (goal ≤ 1.1×).

    python -m pirl.bench.rollout --sim=metaworld --num_envs=8 --num_workers=2 --chunks=12

sim time: the pool resetting and stepping the same chunks with fixed actions, no policy in the loop.
inference time: the policy acting on the same observation batches with no envs stepping.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from pirl import cli, envsetup, rollout, runsetup
from pirl.envs import pool as pool_lib


def _experiment(args, stages: int):
    # Late: configs/ is the repository's recipes package, not part of the installed pirl.
    from configs import common

    c = common.defaults()
    c.env.update(sim=args.sim, task=args.task)
    c.policy.update(num_action_chunks=5, action_env_dim=4 if args.sim == "metaworld" else 7, num_steps=args.steps)
    c = common.shrink(c)
    if args.model == "dummy":
        c.model.update(paligemma_variant="dummy", action_expert_variant="dummy", vision_variant="mu/14")
    c.model.image_size = args.model_image
    c.env.update(
        num_envs=args.num_envs,
        num_workers=args.num_workers,
        num_stages=stages,
        image_size=(args.image, args.image),
        max_steps=args.chunks * 5,
    )
    c.rl.update(minibatch_size=args.num_envs * args.chunks, micro_batch_size=args.num_envs * args.chunks)
    exp, _ = cli.to_experiment(c)
    return exp


def measure(args, stages: int) -> dict[str, float]:
    exp = _experiment(args, stages)
    setup = runsetup.build(exp)
    factory = envsetup.sim_factory(exp.env)
    params = setup.params
    walls, sims, infers = [], [], []
    with pool_lib.EnvPool(factory, envsetup.pool_config(exp.env)) as pool:
        spec = pool.spec
        actor = runsetup.make_actor(setup, spec)
        ids = np.stack([np.zeros(exp.env.num_envs, np.int64), np.arange(exp.env.num_envs) % spec.num_trials], 1)
        rows = [pool.stage_envs(s) for s in range(stages)]
        for rep in range(args.reps + 1):  # the first rep compiles and warms up
            rng = jax.random.key(rep)
            t0 = time.perf_counter()
            rollout.collect(pool, actor, params, rng, ids, args.chunks)
            wall = time.perf_counter() - t0
            # Sim alone: the reset and the same chunks (a rollout starts with its reset) with the
            # actions of a fixed policy output, no inference.
            _, _, actions = actor.act(params, pool.reset(ids), rng)
            t0 = time.perf_counter()
            obs = pool.reset(ids)
            for _ in range(args.chunks):
                pool.step_chunk(actions)
            sim = time.perf_counter() - t0
            # Inference alone: the per-stage batches of a rollout, no env stepping.
            parts = [rollout._take(obs, r) for r in rows]
            t0 = time.perf_counter()
            for t in range(args.chunks):
                for s, part in enumerate(parts):
                    _, out, _ = actor.act(params, part, jax.random.fold_in(rng, t * stages + s))
            jax.block_until_ready(out.actions)
            infer = time.perf_counter() - t0
            if rep:
                walls.append(wall)
                sims.append(sim)
                infers.append(infer)
    wall, sim, infer = (statistics.median(x) for x in (walls, sims, infers))
    return {"stages": stages, "wall": wall, "sim": sim, "infer": infer, "ratio": wall / max(sim, infer)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", default="metaworld")
    p.add_argument("--task", default="reach-v3")
    p.add_argument("--num_envs", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--model", choices=("tiny", "dummy"), default="tiny")
    p.add_argument("--model_image", type=int, default=56)
    p.add_argument("--steps", type=int, default=4, help="denoising steps K")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stages", default="1,2")
    args = p.parse_args()
    print(
        f"{args.sim}/{args.task}: {args.num_envs} envs on {args.num_workers} workers, {args.chunks} chunks of 5, "
        f"{args.model} model, K={args.steps}, devices={jax.device_count()} ({jax.default_backend()})"
    )
    print(f"{'stages':>6} {'wall s':>8} {'sim s':>8} {'infer s':>8} {'wall/max(sim,infer)':>20}")
    for stages in map(int, args.stages.split(",")):
        r = measure(args, stages)
        print(f"{r['stages']:>6} {r['wall']:>8.2f} {r['sim']:>8.2f} {r['infer']:>8.2f} {r['ratio']:>20.2f}")


if __name__ == "__main__":
    main()
