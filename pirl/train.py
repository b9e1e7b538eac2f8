r"""Online RL fine-tuning of π0 / π0.5: rollout → advantages → update, with eval, logs and resume.

    python -m pirl.train --config=configs/quickstart.py --workdir=runs/quickstart
    python -m pirl.train --config=configs/libero_ppo.py:suite=spatial --config.rl.lr=1e-5 --workdir=runs/x

Re-running the same command in the same workdir continues from the last checkpoint; on CPU the
resumed run's metrics equal an uninterrupted run's. Ctrl-C (or SIGTERM) saves a final checkpoint.

On several hosts (see launch/ and pirl.launch) one process per host runs this same program:

    python -m pirl.train --config=... --workdir=<shared dir> --coordinator_address=host0:1234 \
        --num_processes=4 --process_id=$i

Each host steps num_envs / hosts envs on num_workers / hosts workers and feeds its rows of every
global batch; the init-id draws, the policy noise and the update are those of one process holding
all the envs, and the metrics are over all hosts' envs. Process 0 writes the logs, curve and
videos; the checkpoints are written jointly (orbax), so the workdir must be one shared directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import flags

from pirl import batch as batch_lib
from pirl import cli, envsetup, errors, experiment, launch, rollout, runsetup, runstate, sft, sharding
from pirl import eval as eval_lib
from pirl import logging as logs
from pirl.envs import base, video
from pirl.envs import pool as pool_lib
from pirl.rl import update as upd

CURVE_KEYS = ("eval/success", "env/success_once", "env/return", "train/actor/approx_kl")


def env_sampler(seed: int, iteration: int) -> np.random.Generator:
    """The generator of one iteration's init ids, a function of (seed, iteration) only: the
    iteration stored in a checkpoint fixes the env draws of everything after it on resume, and
    every host draws the same ids (see host_init_ids)."""
    return np.random.default_rng([seed, iteration])


def host_init_ids(spec, env: experiment.EnvSection, rng: np.random.Generator, hosts: int, host: int) -> np.ndarray:
    """This host's slice of the init ids drawn for all hosts' envs at once: the union over hosts,
    in process order, is what one process with every env draws. [num_envs / hosts, 2]"""
    ids = base.group_init_ids(spec, env.num_envs, env.group_size, rng, env.tasks)
    local = env.num_envs // hosts
    return ids[host * local : (host + 1) * local]


def env_metrics(trajs: list[rollout.Trajectory], task_names: list[str]) -> dict[str, float]:
    """Episode metrics over every host's finished episodes (a collective on several hosts)."""
    ep = {k: sharding.gather_hosts(np.concatenate([t.episodes[k] for t in trajs])) for k in trajs[0].episodes}
    if not len(ep["success_once"]):
        return {}
    out = {
        "env/success_once": float(ep["success_once"].mean()),
        "env/return": float(ep["return"].mean()),
        "env/episode_len": float(ep["length"].mean()),
        "env/episodes": float(len(ep["success_once"])),
    }
    if len(task_names) > 1:
        for t in np.unique(ep["task"]).astype(int):
            out[f"env/task_success/{task_names[t]}"] = float(ep["success_once"][ep["task"] == t].mean())
    return out


def update_metrics(metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-minibatch update metrics → train/actor/* and train/critic/*, each the mean over minibatches."""
    critic = {"value_loss", "explained_variance", "value_clip_ratio"}
    out = {}
    for k, v in metrics.items():
        group = "critic" if k in critic else "actor"
        out[f"train/{group}/{k}"] = float(np.mean(v))
    return out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the run saves a checkpoint and the command exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def exit_code(e: KeyboardInterrupt) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + getattr(e, "signum", signal.SIGINT)


def _install_sigterm():
    """SIGTERM (cluster pre-emption, ``kill``) takes the same path as Ctrl-C: save and exit."""

    def handler(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def interrupts_deferred():
    """Holds Ctrl-C and SIGTERM until the block ends, then raises Interrupted if one came.

    The update donates the state's buffers: an interrupt after the call but before ``state`` is
    rebound would leave only deleted arrays for the final checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise Interrupted(pending[0])


def eval_due(section: experiment.TrainSection, it: int) -> bool:
    """Whether iteration ``it`` ends with an evaluation (it = 0: the starting policy's)."""
    return bool(section.eval_every) and (it % section.eval_every == 0 or it == section.iterations)


def _eval_logged(workdir: pathlib.Path, it: int, is_main: bool) -> bool:
    """Whether metrics.jsonl holds iteration ``it``'s evaluation (process 0 reads it; on several
    hosts every process learns its answer)."""
    done = is_main and any(r["step"] == it and "eval/success" in r for r in logs.read_metrics(workdir))
    return bool(sharding.gather_hosts(np.array([int(done)]))[0])


# Write failures that no retry fixes: the run ends with one line naming the path.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _write_failure(e: OSError, ckpt: runstate.Checkpointer) -> errors.WriteError:
    """``e`` as one line that also names the last complete checkpoint (the resume point)."""
    text = e.summary if isinstance(e, errors.UserError) else errors.WriteError.of(e, "?").summary
    if "last good checkpoint" in text:
        return e if isinstance(e, errors.WriteError) else errors.WriteError(text)
    return errors.WriteError(f"{text}; the last good checkpoint is {ckpt.describe_latest()}")


def train(exp: experiment.Experiment, workdir: str | os.PathLike, *, devices=None) -> dict[str, float]:
    """Runs (or resumes) the experiment in ``workdir``; returns the last iteration's metrics.

    Work an interrupt cut off after an update (the iteration's evaluation and its videos) is
    recorded in the checkpoint as owed, and the resumed run does it first. An iteration's
    metrics are logged only once the previous checkpoint is complete, so a kill redoes at most
    one logged iteration (with ``train.save_every=1``). A write that fails for good (full disk,
    read-only directory) ends the run with errors.WriteError naming the path and the last
    complete checkpoint."""
    workdir = pathlib.Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    setup = runsetup.build(exp, devices)
    exp = setup.exp  # the model section as the checkpoint's files give it
    mesh = setup.mesh
    hosts, host = jax.process_count(), jax.process_index()
    launch.check(exp, hosts, mesh.size // hosts)
    is_main = host == 0
    factory = envsetup.sim_factory(exp.env)
    task_names = envsetup.task_names(factory)
    chunks = experiment.chunk_steps(exp)
    local_envs = exp.env.num_envs // hosts
    state = upd.init_train_state(exp.rl, setup.params)
    state_shardings = sharding.param_shardings(mesh, state, exp.mesh.fsdp_min_bytes)
    state = jax.device_put(state, state_shardings)
    update_fn = upd.jit_update(exp.policy, setup.model, exp.rl, mesh, state_shardings)

    ckpt = runstate.Checkpointer(workdir / "checkpoints", keep=exp.train.keep_checkpoints)
    start = 0
    owed = ["eval"] if eval_due(exp.train, 0) else []  # work iteration `it` still owes
    if ckpt.latest() is not None:
        state, meta = ckpt.restore(state)
        start, owed = meta["iteration"], list(meta.get("pending", []))
        if meta["seed"] != exp.train.seed:
            raise ValueError(f"{workdir} holds a run with train.seed={meta['seed']}, not {exp.train.seed}")
        if is_main:
            print(f"resumed from {workdir / 'checkpoints'} at iteration {start}")
        if "eval" in owed and _eval_logged(workdir, start, is_main):
            owed.remove("eval")  # done by an earlier resume that saved no checkpoint after it

    writer = logs.MetricWriter(
        workdir,
        tensorboard=exp.train.tensorboard,
        wandb_project=exp.train.wandb_project,
        wandb_mode=exp.train.wandb_mode,
        config=dataclasses.asdict(exp),
        enabled=is_main,
        purge_step=start + 1,
    )
    pool_cfg = envsetup.pool_config(
        exp.env,
        num_envs=local_envs,
        num_workers=exp.env.num_workers // hosts,
        seed=exp.train.seed,
        env_offset=host * local_envs,
    )
    pool = pool_lib.EnvPool(factory, pool_cfg)
    spec = pool.spec  # as the workers built it (some simulators only know it once created)
    actor = runsetup.make_actor(setup, spec)
    if is_main:
        runsetup.write_run_record(setup, workdir, actor.transform)
    evaluator = None
    key = jax.random.key(exp.train.seed)
    last: dict[str, float] = {}
    it = start
    saved_at = start if ckpt.latest() is not None else None
    logged = start
    failed: errors.WriteError | None = None
    stuck: threading.Timer | None = None  # ends the process if closing hangs after a failed write
    _install_sigterm()
    bar = None
    if exp.train.progress and is_main:
        # Late: the progress bar is optional (train.progress).
        from tqdm import tqdm

        bar = tqdm(total=exp.train.iterations, initial=start, desc="train", dynamic_ncols=True)

    def evaluate() -> dict[str, float]:
        nonlocal evaluator
        t1 = time.perf_counter()
        if evaluator is None:
            evaluator = eval_lib.Evaluator(setup, exp.eval, exp.env)
        res = evaluator.run(state.params, _video_dir(exp, workdir, it, "eval"))
        owed.remove("eval")
        return eval_lib.flat_metrics(res) | {"time/eval_s": time.perf_counter() - t1}

    def meta() -> dict:
        return {"iteration": it, "seed": exp.train.seed, "pending": list(owed)}

    try:
        if "eval" in owed:
            # The starting policy's score (the "before" of the learning curve), or the evaluation
            # of iteration `start` that an interrupt cut off.
            metrics = evaluate()
            writer.write(it, metrics)
            if is_main:
                what = "before training" if it == 0 else f"of iteration {it} (cut off by the interrupt)"
                print(f"eval {what}: success {metrics['eval/success']:.3f}")
        while it < exp.train.iterations:
            t_iter = time.perf_counter()
            rng = jax.random.fold_in(key, it)
            sampler = env_sampler(exp.train.seed, it)
            restarts = int(pool.restarts.sum())
            trajs = []
            recorder = _recorder(exp, workdir, it, "train", spec) if is_main else None
            for e in range(exp.train.rollout_epochs):
                ids = host_init_ids(spec, exp.env, sampler, hosts, host)
                on_frame = recorder.on_frame if (recorder and e == 0) else None
                trajs.append(
                    rollout.collect(pool, actor, state.params, jax.random.fold_in(rng, e), ids, chunks, on_frame)
                )
            if recorder:
                recorder.save(f"it{it + 1:05d}")
            t_rollout = time.perf_counter() - t_iter
            b, roll_metrics = batch_lib.to_batch(
                trajs,
                exp.rl.algorithm,
                exp.advantage,
                exp.env.group_size,
                exp.env.auto_reset,
                mesh,
                max_episode_steps=exp.env.max_steps,
            )
            env_steps = int(sharding.gather_hosts(np.array([sum(t.env_steps for t in trajs)])).sum())
            crashes = sharding.gather_hosts(
                np.array([int(pool.restarts.sum()) - restarts, sum(int(t.crashed.sum()) for t in trajs)])
            )
            # time/* are this host's clocks (process 0's are the ones logged); the rest is global.
            metrics = env_metrics(trajs, task_names) | roll_metrics
            metrics |= {
                "time/rollout_s": t_rollout,
                "time/env_wait_s": sum(t.timing["wait"] + t.timing["env"] for t in trajs),
                "time/inference_s": sum(t.timing["infer"] for t in trajs),
                "env/steps_per_s": env_steps / max(t_rollout, 1e-9),
                "env/steps": float(env_steps),
                "env/worker_restarts": float(crashes.reshape(-1, 2)[:, 0].sum()),
                "env/crashed_episodes": float(crashes.reshape(-1, 2)[:, 1].sum()),
            }
            del trajs  # their device arrays (a second copy of the batch) need not live through the update
            t1 = time.perf_counter()
            # Ctrl-C waits for the update: it donates the old state, so the state, the iteration
            # count and the iteration's metrics change together.
            with interrupts_deferred():
                state, um = update_fn(state, b, jax.random.fold_in(rng, 1_000_003))
                del b
                metrics |= update_metrics(jax.device_get(um)) | {
                    "train/skipped_updates": float(jax.device_get(state.skipped)),
                    "time/update_s": time.perf_counter() - t1,
                }
                it += 1
                owed = ["eval"] if eval_due(exp.train, it) else []
            if "eval" in owed:
                metrics |= evaluate()
            metrics["time/iteration_s"] = time.perf_counter() - t_iter
            # The previous checkpoint is complete before this iteration counts as logged: a kill
            # from here on redoes this iteration only.
            ckpt.wait()
            writer.write(it, metrics)
            logged = it
            last = metrics
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{metrics.get('env/success_once', float('nan')):.2f}")
            if exp.train.save_every and it % exp.train.save_every == 0:
                # The save and its record change together: an interrupt in between would save
                # the same step again in the finally block.
                with interrupts_deferred():
                    ckpt.save(it, state, meta())
                    saved_at = it
    except KeyboardInterrupt:
        if logged < it:  # interrupted after the update (in its eval, now owed): keep what it measured
            writer.write(it, metrics)
        print(f"interrupted: saving iteration {it} to {workdir / 'checkpoints'}", file=sys.stderr)
        raise
    except OSError as e:
        if not isinstance(e, errors.WriteError) and e.errno not in _STORAGE_ERRNOS:
            raise
        failed = _write_failure(e, ckpt)
        stuck = cli.exit_if_stuck(failed)
        raise failed from e
    finally:
        # Every close runs even if the save (or another close) raises: a skipped one could leave
        # worker processes or checkpoint threads that keep the interpreter from exiting. An
        # interrupt waits for the final checkpoint to be complete.
        with interrupts_deferred(), contextlib.ExitStack() as cleanup:
            if stuck is not None:  # closed (or failed to close) in time: the exception reports it
                cleanup.callback(stuck.cancel)
            cleanup.callback(writer.close)
            if bar is not None:
                cleanup.callback(bar.close)
            if evaluator is not None:
                cleanup.callback(evaluator.close)
            cleanup.callback(pool.close)
            # After a failed write, no final save: the disk or directory would fail it again.
            if failed is None:
                cleanup.callback(ckpt.close)
                if saved_at != it:
                    ckpt.save(it, state, meta())
    if is_main:
        try:
            logs.plot_learning_curve(workdir, CURVE_KEYS)
        except OSError as e:
            raise _write_failure(e, ckpt) from e
    return last


def _video_dir(exp, workdir, it, kind) -> str | None:
    if not exp.eval.videos and not exp.train.videos:
        return None
    return str(workdir / "videos" / f"{kind}_it{it:05d}")


class _Recorder:
    def __init__(self, out_dir: str, camera: str, max_envs: int = 4):
        self.rec = video.VideoRecorder(out_dir, camera=camera)
        self.max_envs = max_envs

    def on_frame(self, obs, res, t):
        n = min(self.max_envs, len(obs.state))
        self.rec.add(obs, envs=range(n))

    def save(self, prefix):
        return self.rec.save(prefix)


def _recorder(exp, workdir, it, kind, spec):
    every = exp.train.video_every
    if not (exp.train.videos and every and it % every == 0 and spec.cameras):
        return None
    return _Recorder(str(workdir / "videos" / kind), spec.cameras[0].name)


def main(argv):
    del argv
    config = _CONFIG.value
    launch.initialize(_DISTRIBUTED())
    extra = cli.recipe_sections(config)
    exp, sections = cli.to_experiment(config, extra)
    workdir = pathlib.Path(_WORKDIR.value).expanduser().resolve()
    if "sft" in sections and not exp.model.checkpoint:
        exp = sft.warm_start(exp, sections["sft"], workdir)
    try:
        last = train(exp, workdir)
    except KeyboardInterrupt as e:
        cli.exit_now(exit_code(e))
    if jax.process_index():
        return
    shown = {k: v for k, v in last.items() if k.startswith(("eval/success", "env/success", "env/return"))}
    print(f"done: {workdir}  " + "  ".join(f"{k}={v:.3f}" for k, v in sorted(shown.items()) if "task_" not in k))


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag()
    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, videos)", required=True)
    _DISTRIBUTED = launch.define_flags()
    cli.run(main)
