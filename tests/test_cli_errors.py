"""Bad input to the four commands (pirl.train, pirl.eval, pirl.sft, pirl.plan), run as a user
would (subprocess): each exits non-zero with exactly one ``error:`` line that names the key or
path, and no traceback (that takes --verbosity=1)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHRINK = ["--config=configs/metaworld_ppo.py:shrink", "--config.env.task=reach-v3"]
BASE = {
    "pirl.train": SHRINK,
    "pirl.eval": SHRINK,
    "pirl.sft": ["--config=configs/sft_metaworld.py:shrink"],
    "pirl.plan": [*SHRINK, "--mesh=1"],
}


def _run(module: str, args: list[str], workdir: pathlib.Path, verbosity: int | None = None):
    cmd = [sys.executable, "-m", module, *BASE[module], *args]
    if module != "pirl.plan":
        cmd.append(f"--workdir={workdir}")
    if verbosity is not None:
        cmd.append(f"--verbosity={verbosity}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _check(out, must: list[str]) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode != 0, out.stderr[-3000:]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for text in must:
        assert text in errors[0], errors[0]
    return errors[0]


# (command, overrides, what the error line must contain)
CONFIG_CASES = [
    ("pirl.train", ["--config.env.num_workers=0"], ["env.num_workers", "got 0"]),
    ("pirl.train", ["--config.train.iterations=-3"], ["train.iterations", "got -3"]),
    ("pirl.train", ["--config.rl.lr=nan"], ["rl.lr", "got nan"]),
    ("pirl.train", ["--config.env.task=reach-v9"], ["env.task='reach-v9'", "reach-v3"]),
    ("pirl.train", ["--config.eval.num_envs=-4"], ["eval.num_envs"]),
    ("pirl.eval", ["--config.eval.num_workers=0"], ["eval.num_workers"]),
    ("pirl.eval", ["--config.policy.noise_level=nan"], ["policy.noise_level"]),
    ("pirl.sft", ["--config.sft.lr=nan"], ["sft.lr", "got nan"]),
    ("pirl.sft", ["--config.env.num_workers=0"], ["env.num_workers"]),
    ("pirl.plan", ["--config.rl.lr=nan"], ["rl.lr"]),
    ("pirl.plan", ["--config.mesh.fsdp=0"], ["mesh.fsdp", "got 0"]),
]


@pytest.mark.parametrize(("module", "args", "must"), CONFIG_CASES, ids=[f"{m}:{a[0]}" for m, a, _ in CONFIG_CASES])
def test_bad_config_values(tmp_path, module, args, must):
    _check(_run(module, args, tmp_path), must)


def test_the_traceback_is_there_with_verbosity_1(tmp_path):
    out = _run("pirl.train", ["--config.rl.lr=nan"], tmp_path, verbosity=1)
    assert out.returncode != 0 and "Traceback" in out.stderr and "rl.lr must be >= 0, got nan" in out.stderr


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> pathlib.Path:
    """An openpi checkpoint of the shrunk model (params + norm stats), as pirl.sft writes one."""
    from configs import metaworld_ppo
    from pirl import checkpoints, cli, rollout, runsetup

    c = metaworld_ppo.get_config("shrink")
    c.env.task = "reach-v3"
    exp, _ = cli.to_experiment(c)
    setup = runsetup.build(exp)
    path = tmp_path_factory.mktemp("ckpt") / "good"
    stats = rollout.identity_norm_stats(setup.model.action_dim, setup.model.action_dim)
    checkpoints.save_openpi(path, setup.params["model"], norm_stats=stats, asset_id="pirl/test")
    return path


def _variant(good: pathlib.Path, tmp: pathlib.Path, kind: str) -> pathlib.Path:
    """A copy of ``good`` broken in one way."""
    path = tmp / kind
    if kind == "empty":
        path.mkdir()
        return path
    shutil.copytree(good, path)
    params = path / "params"
    data = sorted((params / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    if kind == "no_metadata":
        (params / "_METADATA").unlink()
    elif kind == "data_deleted":
        data[-1].unlink()  # the largest data file: most of the arrays
    elif kind == "data_truncated":
        for f in data:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif kind == "norm_malformed":
        (path / "assets" / "pirl" / "test" / "norm_stats.json").write_text('{"norm_stats": {"state": ')
    elif kind == "norm_no_actions":
        f = path / "assets" / "pirl" / "test" / "norm_stats.json"
        stats = json.loads(f.read_text())
        del stats["norm_stats"]["actions"]
        f.write_text(json.dumps(stats))
    return path


# (broken checkpoint, what the error line must say besides its path)
CHECKPOINT_CASES = [
    ("empty", ["no params/ (openpi)", "found an empty directory"], ""),
    ("no_metadata", ["is incomplete: it has no _METADATA file"], "params"),
    ("data_deleted", ["is incomplete or corrupt"], "params"),
    ("data_truncated", ["is incomplete or corrupt"], "params"),
    ("norm_malformed", ["is not valid JSON"], "assets/pirl/test/norm_stats.json"),
    ("norm_no_actions", ["has no 'actions' entry"], "assets/pirl/test/norm_stats.json"),
]


@pytest.mark.parametrize("module", ["pirl.train", "pirl.eval"])
@pytest.mark.parametrize(("kind", "must", "inside"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoints(tmp_path, good_checkpoint, module, kind, must, inside):
    path = _variant(good_checkpoint, tmp_path, kind)
    named = str(path / inside) if inside else str(path)
    line = _check(_run(module, [f"--config.model.checkpoint={path}"], tmp_path / "run"), [*must, named])
    print(line)


def test_missing_checkpoint_directory(tmp_path):
    line = _check(_run("pirl.train", [f"--config.model.checkpoint={tmp_path / 'nowhere'}"], tmp_path), [])
    assert str(tmp_path / "nowhere") in line and "not found" in line
