"""Deterministic evaluation: every (task, trial) pair once, ODE sampling from fixed noise.

    python -m pirl.eval --config=configs/metaworld_ppo.py --workdir=runs/mt50        # latest run checkpoint
    python -m pirl.eval --config=configs/libero_ppo.py:suite=spatial \\
        --config.model.checkpoint=gs://openpi-assets/checkpoints/pi0_libero --config.eval.protocol=openpi_libero \\
        --workdir=runs/eval_pi0_libero

Writes <workdir>/eval/results.json (per-episode and per-task numbers), prints a per-task table with
the suite average (and MetaWorld's difficulty-group average), and saves videos when asked. Runs on
several hosts like pirl.train (the same --coordinator_address/--num_processes/--process_id flags),
each host evaluating its share of every wave of eval.num_envs episodes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import jax
import numpy as np
from absl import flags

from pirl import checkpoints, cli, envsetup, experiment, launch, rollout, runsetup, sharding
from pirl.envs import metaworld, video
from pirl.envs import pool as pool_lib


def eval_init_ids(num_tasks: int, tasks: tuple[int, ...], num_trials: int, trial_major: bool = False) -> np.ndarray:
    """Every (task, trial) of the evaluated tasks, task-major, or trial-major (a wave of one env per
    task then runs each task's trials in order on one env). [tasks × trials, 2]"""
    chosen = tasks or tuple(range(num_tasks))
    if max(chosen) >= num_tasks:
        raise ValueError(f"eval.tasks {tasks} exceeds the {num_tasks} tasks")
    if trial_major:
        return np.array([(t, k) for k in range(num_trials) for t in chosen], np.int64)
    return np.array([(t, k) for t in chosen for k in range(num_trials)], np.int64)


def host_share(ids: np.ndarray, wave: int, num_hosts: int, host: int) -> np.ndarray:
    """This host's rows of every wave of ``wave`` envs (all hosts'): host h runs rows
    [h·wave/H, (h+1)·wave/H) of each wave, so episode i meets the same policy row, hence the
    same sampling noise, as on one host. The last wave is padded with the last id. [K, 2]"""
    padded = np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % wave, axis=0)])
    return padded.reshape(-1, num_hosts, wave // num_hosts, ids.shape[-1])[:, host].reshape(-1, ids.shape[-1])


def join_hosts(local: np.ndarray, num_ids: int, wave: int, num_hosts: int) -> np.ndarray:
    """Per-episode values of every host (each in its host_share order) → all ids', in input order."""
    every = sharding.gather_hosts(local)  # [H · waves · wave/H], host-major
    blocks = every.reshape(num_hosts, -1, wave // num_hosts, *local.shape[1:])  # [H, waves, wave/H]
    return blocks.swapaxes(0, 1).reshape(-1, *local.shape[1:])[:num_ids]


def summarize(ids: np.ndarray, episodes: dict[str, np.ndarray], names: list[str]) -> dict:
    """Per-task success/return/length and the averages over tasks."""
    per_task = {}
    for t in np.unique(ids[:, 0]).astype(int):
        sel = ids[:, 0] == t
        per_task[names[t]] = {
            "success": float(episodes["success_once"][sel].mean()),
            "return": float(episodes["return"][sel].mean()),
            "episode_len": float(episodes["length"][sel].mean()),
            "trials": int(sel.sum()),
        }
    out = {
        "per_task": per_task,
        "success": float(np.mean([v["success"] for v in per_task.values()])),
        "return": float(np.mean([v["return"] for v in per_task.values()])),
        "episode_len": float(np.mean([v["episode_len"] for v in per_task.values()])),
        "episodes": len(ids),
    }
    groups = metaworld.DIFFICULTY
    if all(n in per_task for g in groups.values() for n in g):
        out["mt50_average"] = metaworld.mt50_average({k: v["success"] for k, v in per_task.items()})
        out["group_success"] = {g: float(np.mean([per_task[n]["success"] for n in ns])) for g, ns in groups.items()}
    return out


def flat_metrics(res: dict, prefix: str = "eval") -> dict[str, float]:
    out = {f"{prefix}/{k}": float(res[k]) for k in ("success", "return", "episode_len")}
    if "worker_restarts" in res:
        out[f"{prefix}/worker_restarts"] = float(res["worker_restarts"])
    if "mt50_average" in res:
        out[f"{prefix}/mt50_average"] = res["mt50_average"]
    if len(res["per_task"]) > 1:
        out |= {f"{prefix}/task_success/{k}": v["success"] for k, v in res["per_task"].items()}
    return out


def table(res: dict) -> str:
    width = max(12, *(len(k) for k in res["per_task"]))

    def row(name, v, n):
        return f"{name:<{width}}  {v['success']:7.3f}  {v['return']:6.2f}  {v['episode_len']:6.1f}  {n:6d}"

    lines = [f"{'task':<{width}}  success  return  length  trials"]
    lines += [row(name, v, v["trials"]) for name, v in res["per_task"].items()]
    lines.append(row("average", res, res["episodes"]))
    if "mt50_average" in res:
        groups = "  ".join(f"{g} {s:.3f}" for g, s in res["group_success"].items())
        lines.append(f"MT50 Avg. (mean of difficulty groups) {res['mt50_average']:.3f}: {groups}")
    return "\n".join(lines)


class Evaluator:
    """An eval pool and actor, kept for periodic evaluation during training."""

    def __init__(self, setup: runsetup.Setup, section: experiment.EvalSection, env: experiment.EnvSection):
        self.section = section = envsetup.resolve_eval(section, env)
        self.factory = envsetup.eval_sim_factory(env, section)
        self.names = envsetup.task_names(self.factory)
        pool_env = dataclasses.replace(env, auto_reset=False, num_stages=1)
        # On several hosts each runs its share of the eval envs and of every wave's episodes.
        self.hosts, self.host = jax.process_count(), jax.process_index()
        if section.num_envs % self.hosts or section.num_workers % self.hosts:
            raise ValueError(
                f"eval.num_envs={section.num_envs} and eval.num_workers={section.num_workers} must be multiples "
                f"of the {self.hosts} processes"
            )
        cfg = envsetup.pool_config(
            pool_env, num_envs=section.num_envs // self.hosts, num_workers=section.num_workers // self.hosts
        )
        self.pool = pool_lib.EnvPool(self.factory, cfg)
        self.spec = self.pool.spec
        replan = section.replan or setup.exp.policy.num_action_chunks
        self.num_chunks = math.ceil(self.spec.max_steps / replan)
        self.actor = runsetup.make_actor(setup, self.spec, action_chunk=replan)
        # openpi's LIBERO protocol: the env of each task runs its trials in order (its seeding).
        self.ids = eval_init_ids(
            self.spec.num_tasks, section.tasks, section.num_trials, section.protocol == "openpi_libero"
        )
        self.local_ids = host_share(self.ids, section.num_envs, self.hosts, self.host)

    def run(self, params, video_dir: str | None = None) -> dict:
        """Results of every (task, trial); collective on several hosts, where only process 0
        records videos."""
        recorder = None
        if video_dir and self.spec.cameras and self.host == 0:
            recorder = video.VideoRecorder(video_dir, camera=self.spec.cameras[0].name)
        wave_start: dict[int, int] = {}

        def on_frame(obs, res, t):
            if t == 0:
                wave_start.clear()
                wave_start.update({i: len(f) for i, f in recorder.frames.items()})
            # Always two caption lines, so every frame of a video has the same height.
            success = np.zeros(len(obs.state), bool) if res is None else res.success_once
            recorder.add(obs, success=success, envs=range(min(4, len(obs.state))))

        def on_redo():
            # A wave run again after a crash: its frames so far are dropped.
            for i, frames in recorder.frames.items():
                del frames[wave_start.get(i, 0) :]

        restarts = int(self.pool.restarts.sum())
        episodes = rollout.run_episodes(
            self.pool,
            self.actor,
            params,
            jax.random.key(self.section.seed),
            self.local_ids,
            self.num_chunks,
            on_frame if recorder else None,
            on_redo if recorder else None,
        )
        n, wave = len(self.ids), self.section.num_envs
        episodes = {k: join_hosts(v, n, wave, self.hosts) for k, v in episodes.items()}
        res = summarize(self.ids, episodes, self.names)
        res["worker_restarts"] = int(sharding.gather_hosts(np.array([self.pool.restarts.sum() - restarts])).sum())
        res["episodes_detail"] = {
            "task": self.ids[:, 0].tolist(),
            "trial": self.ids[:, 1].tolist(),
            **{k: v.tolist() for k, v in episodes.items()},
        }
        if recorder is not None:
            res["videos"] = recorder.save("eval")
        return res

    def close(self):
        self.pool.close()


def evaluate(exp: experiment.Experiment, workdir: str, params=None) -> dict:
    """Evaluates ``params`` (default: the workdir's latest run checkpoint, else model.checkpoint);
    writes <workdir>/eval/results.json and returns the results.

    A run directory (pirl.train's run.json) is evaluated with the norm stats and conventions its
    run trained with, whatever model.checkpoint and model.* say."""
    if params is None and checkpoints.run.is_run(pathlib.Path(workdir)):
        exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, checkpoint=str(workdir), asset_id=""))
    setup = runsetup.build(exp)
    if params is None:
        from_run = setup.start is not None and setup.start.layout == "run"
        restored = None if from_run else runsetup.restore_run_params(setup, workdir)
        if restored is not None:
            params, iteration = restored[0], restored[1]["iteration"]
        else:
            params, iteration = runsetup.place(setup, setup.params), setup.start.step if from_run else None
        if iteration is not None and jax.process_index() == 0:
            ckpt_dir = pathlib.Path(workdir) / "checkpoints"
            print(f"evaluating the run checkpoint of iteration {iteration} in {ckpt_dir}")
    out_dir = pathlib.Path(workdir) / "eval"
    evaluator = Evaluator(setup, exp.eval, exp.env)
    try:
        res = evaluator.run(params, str(out_dir / "videos") if exp.eval.videos else None)
    finally:
        evaluator.close()
    if jax.process_index():
        return res
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1))
    (out_dir / "table.txt").write_text(table(res) + "\n")
    return res


def main(argv):
    del argv
    launch.initialize(_DISTRIBUTED())
    config = _CONFIG.value
    extra = cli.recipe_sections(config)
    exp, sections = cli.to_experiment(config, extra)
    warm = pathlib.Path(_WORKDIR.value) / "sft"
    if "sft" in sections and not exp.model.checkpoint and (warm / "params").is_dir():
        # A run from before run.json: its warm start's checkpoint holds the norm stats it ran with.
        exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, checkpoint=str(warm)))
    launch.check(exp, jax.process_count(), jax.local_device_count(), with_eval=True)
    res = evaluate(exp, _WORKDIR.value)
    if jax.process_index() == 0:
        print(table(res))


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag()
    _WORKDIR = flags.DEFINE_string("workdir", None, "run directory (its checkpoints are evaluated)", required=True)
    _DISTRIBUTED = launch.define_flags()
    cli.run(main)
