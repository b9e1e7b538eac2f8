"""Multi-host runs: joining the job (jax.distributed) and checking that a config divides over it.

One process per host; every process runs the same program on its share of the envs and feeds
its rows of each global batch (see pirl.sharding). The launchers in launch/ call

    python -m pirl.launch check --config=configs/libero_ppo.py --num_hosts=4 --devices_per_host=8

before starting anything, so a config that does not divide fails on the login node with the
fields to change, not minutes later on every host. ``pirl.train`` runs the same check.

How a process learns its place, in order: ``--coordinator_address``/``--num_processes``/
``--process_id`` flags, else the PIRL_COORDINATOR / PIRL_NUM_PROCESSES / PIRL_PROCESS_ID
environment variables (what launch/local.sh sets), else nothing: a single process.
``--coordinator_address=auto`` lets JAX read everything from the cluster (SLURM, Cloud TPU pods,
Kubernetes).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import numpy as np
from absl import app, flags

from pirl import cli, envsetup, experiment, sharding

ENV_COORDINATOR = "PIRL_COORDINATOR"
ENV_NUM_PROCESSES = "PIRL_NUM_PROCESSES"
ENV_PROCESS_ID = "PIRL_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Distributed:
    """coordinator_address: "host:port" of process 0, "auto" (JAX asks the cluster), or "" (one
    process). num_processes 0 and process_id −1 mean "not given"."""

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1

    @property
    def single(self) -> bool:
        return self.num_processes == 1 or (not self.coordinator_address and self.num_processes <= 1)


def from_environ(environ=None) -> Distributed:
    env = os.environ if environ is None else environ
    return Distributed(
        coordinator_address=env.get(ENV_COORDINATOR, ""),
        num_processes=int(env.get(ENV_NUM_PROCESSES, "0") or 0),
        process_id=int(env.get(ENV_PROCESS_ID, "-1") or -1),
    )


def initialize(dist: Distributed) -> None:
    """Joins the multi-controller job; must run before anything touches a JAX device."""
    if dist.single:
        return
    if dist.coordinator_address != "auto" and (not dist.coordinator_address or dist.num_processes < 1):
        raise ValueError(
            f"multi-host run needs a coordinator address and num_processes (got {dist}); "
            "or --coordinator_address=auto on SLURM / TPU pods"
        )
    if dist.coordinator_address != "auto" and not 0 <= dist.process_id < dist.num_processes:
        raise ValueError(f"process_id={dist.process_id} is not in [0, num_processes={dist.num_processes})")
    address = None if dist.coordinator_address == "auto" else dist.coordinator_address
    jax.distributed.initialize(address, dist.num_processes or None, dist.process_id if dist.process_id >= 0 else None)


def define_flags():
    """The distributed flags of a CLI (defaults from the PIRL_* environment); returns a getter."""
    env = from_environ()
    coord = flags.DEFINE_string(
        "coordinator_address", env.coordinator_address, f"host:port of process 0, or 'auto' (${ENV_COORDINATOR})"
    )
    nproc = flags.DEFINE_integer("num_processes", env.num_processes, f"processes in the job (${ENV_NUM_PROCESSES})")
    pid = flags.DEFINE_integer("process_id", env.process_id, f"this process's index (${ENV_PROCESS_ID})")
    return lambda: Distributed(coord.value, nproc.value, pid.value)


# ---------------------------------------------------------------- divisibility


def problems(exp: experiment.Experiment, num_hosts: int, devices_per_host: int, *, with_eval: bool | None = None):
    """What does not divide when ``exp`` runs on num_hosts × devices_per_host devices, each line
    naming the field to change; [] when it fits. ``with_eval`` (default: train.eval_every > 0)
    includes the eval section."""
    out: list[str] = []
    hosts, devices = num_hosts, num_hosts * devices_per_host
    env, rl = exp.env, exp.rl
    if hosts < 1 or devices_per_host < 1:
        return [f"need at least one host and one device per host, got {hosts} × {devices_per_host}"]
    try:
        sharding.mesh_shape(exp.mesh, devices)
    except ValueError as e:
        out.append(f"{e} ({hosts} hosts × {devices_per_host}): set mesh.data=-1, mesh.fsdp a divisor of {devices}")
    if env.num_envs % hosts:
        out.append(f"env.num_envs={env.num_envs} does not split over {hosts} hosts: use a multiple of {hosts}")
    elif hosts > 1:
        local = env.num_envs // hosts
        if env.num_workers % hosts:
            out.append(
                f"env.num_workers={env.num_workers} does not split over {hosts} hosts (each runs its share of "
                f"the workers): use a multiple of {hosts}"
            )
        elif env.num_stages > env.num_workers // hosts:
            out.append(
                f"env.num_stages={env.num_stages} exceeds the {env.num_workers // hosts} workers of a host: "
                f"lower env.num_stages or raise env.num_workers"
            )
        if local % env.group_size:
            out.append(
                f"env.group_size={env.group_size} does not divide the {local} envs of a host (a group may not "
                f"span hosts): make env.num_envs a multiple of {hosts * env.group_size}"
            )
        if not env.num_workers % hosts and env.num_stages <= env.num_workers // hosts:
            per_worker = env.num_envs // env.num_workers
            stages = np.array_split(np.arange(env.num_workers // hosts), env.num_stages)
            sizes = sorted({len(st) * per_worker for st in stages})
            if any(size % devices_per_host for size in sizes):
                # A policy call takes one pool stage of every host, devices_per_host rows at a time.
                out.append(
                    f"a host's pool stages hold {sizes} envs, not multiples of its {devices_per_host} devices: make "
                    f"env.num_envs / (hosts × env.num_stages) = {env.num_envs / (hosts * env.num_stages):g} a "
                    f"multiple of {devices_per_host}"
                )
    if rl.micro_batch_size % devices:
        out.append(
            f"rl.micro_batch_size={rl.micro_batch_size} is not a multiple of the {devices} devices "
            f"({hosts} hosts × {devices_per_host}): each device takes an equal share of a micro-batch"
        )
    samples = experiment.rollout_samples(exp)
    if samples % devices:
        out.append(f"a rollout's {samples} samples do not split over {devices} devices: change env.num_envs")
    if with_eval is None:
        with_eval = exp.train.eval_every > 0
    ev = envsetup.resolve_eval(exp.eval, exp.env)  # as it runs (a protocol may fix its envs)
    if with_eval and hosts > 1 and (ev.num_envs % hosts or ev.num_workers % hosts):
        out.append(
            f"eval.num_envs={ev.num_envs} and eval.num_workers={ev.num_workers} must both be multiples of "
            f"the {hosts} hosts (each host evaluates its share)"
        )
    elif with_eval and hosts > 1 and (ev.num_envs // hosts) % devices_per_host:
        out.append(
            f"eval.num_envs={ev.num_envs} gives each host {ev.num_envs // hosts} envs, not a multiple of its "
            f"{devices_per_host} devices: use a multiple of {hosts * devices_per_host}"
        )
    return out


def check(exp: experiment.Experiment, num_hosts: int, devices_per_host: int, **kw) -> None:
    found = problems(exp, num_hosts, devices_per_host, **kw)
    if found:
        where = f"{num_hosts} host(s) × {devices_per_host} device(s)"
        raise ValueError(f"the config does not fit {where}:\n  " + "\n  ".join(found))


def summary(exp: experiment.Experiment, num_hosts: int, devices_per_host: int) -> str:
    data, fsdp = sharding.mesh_shape(exp.mesh, num_hosts * devices_per_host)
    return (
        f"ok: {num_hosts} host(s) × {devices_per_host} device(s), mesh data={data} fsdp={fsdp}; per host "
        f"{exp.env.num_envs // num_hosts} envs on {exp.env.num_workers // num_hosts} workers; "
        f"{experiment.rollout_samples(exp)} samples per rollout, minibatch {exp.rl.minibatch_size}, "
        f"micro-batch {exp.rl.micro_batch_size} ({exp.rl.micro_batch_size // (num_hosts * devices_per_host)} "
        f"per device)"
    )


def main(argv):
    if argv[1:] != ["check"]:
        print(f"usage: python -m pirl.launch check --config=... --num_hosts=N --devices_per_host=D (got {argv[1:]})")
        sys.exit(2)
    config = _CONFIG.value
    extra = cli.recipe_sections(config)
    try:
        exp, _ = cli.to_experiment(config, extra)
        check(exp, _HOSTS.value, _DEVICES.value)
    except ValueError as e:  # cli.ConfigError included
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(summary(exp, _HOSTS.value, _DEVICES.value))


def _parse_known(argv: list[str]) -> list[str]:
    """cli.parse_flags over this tool's own flags and the config overrides only: the train flags
    that the launchers pass along too (--workdir, ...) are not check's business."""

    def own(arg: str) -> bool:
        name = arg.split("=")[0].lstrip("-")
        return not arg.startswith("-") or name in _OWN or name.startswith("config.")

    return cli.parse_flags([argv[0]] + [a for a in argv[1:] if own(a)])


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag()
    _HOSTS = flags.DEFINE_integer("num_hosts", 1, "processes (one per host)")
    _DEVICES = flags.DEFINE_integer("devices_per_host", 1, "accelerators per host (CPU: fake devices)")
    _OWN = {"config", "num_hosts", "devices_per_host"}
    app.run(main, flags_parser=_parse_known)
