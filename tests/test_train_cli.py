"""The pirl.train command: mistyped overrides, Ctrl-C with a final checkpoint, metric sinks."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from pirl import logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHRUNK = [
    "--config=configs/metaworld_ppo.py:shrink",
    "--config.env.task=reach-v3",
    "--config.train.iterations=50",
    "--config.train.tensorboard=False",
]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
    return env


def test_mistyped_override_names_the_closest_field(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pirl.train", *SHRUNK, "--config.rl.cliip_eps=0.3", f"--workdir={tmp_path}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "cliip_eps" in last and '"clip_eps"' in last, last


@pytest.mark.slow
def test_ctrl_c_saves_a_final_checkpoint_and_the_run_resumes(tmp_path):
    # Far more iterations than can finish before the signal (a shrunk iteration takes well under a
    # second), so the run is always interrupted mid-way.
    long = [*SHRUNK, "--config.train.iterations=100000", "--config.train.save_every=0"]
    cmd = [sys.executable, "-m", "pirl.train", *long, f"--workdir={tmp_path}"]
    # faulthandler prints every thread's stack on SIGABRT: a run that does not stop says where.
    env = _env() | {"PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not logging.read_metrics(tmp_path) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, _ = proc.communicate(timeout=60)
            pytest.fail(f"no exit 300 s after SIGINT; its stacks:\n{out[-6000:]}")
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    # save_every=0 means no periodic saves: the checkpoint on disk is the one Ctrl-C wrote, at the
    # last completed iteration.
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    done = max(r["step"] for r in logging.read_metrics(tmp_path))
    assert steps == [done] and done >= 1, (steps, done)
    assert "interrupted: saving iteration" in out
    # Running the same command again resumes from it.
    again = subprocess.run(
        [*cmd[:-2], f"--config.train.iterations={done + 1}", cmd[-1]],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints'} at iteration {done}" in again.stdout + again.stderr
    assert max(r["step"] for r in logging.read_metrics(tmp_path)) == done + 1


def test_metric_writer_jsonl_and_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    w = logging.MetricWriter(tmp_path, tensorboard=True, wandb_project="pirl-test", wandb_mode="offline")
    w.write(1, {"env/success_once": 0.25, "train/actor/approx_kl": 1e-3})
    w.write(2, {"env/success_once": 0.5})
    w.close()
    rows = logging.read_metrics(tmp_path)
    assert rows == [
        {"step": 1, "env/success_once": 0.25, "train/actor/approx_kl": 1e-3},
        {"step": 2, "env/success_once": 0.5},
    ]
    assert list((tmp_path / "tensorboard").iterdir())
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    png = logging.plot_learning_curve(tmp_path, ("env/success_once", "eval/success"))
    assert pathlib.Path(png).stat().st_size > 1000
