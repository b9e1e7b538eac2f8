"""Recipes name the reference's published starting checkpoints, and `model.checkpoint=hf://<name>`
loads such a checkpoint from the Hugging Face cache offline (this test fills a temporary cache with
tiny files in the reference's layout: model.safetensors + physical-intelligence/libero/norm_stats.json
for LIBERO; the names are those of the reference's model table, RLinf docs
docs/source-en/rst_source/examples/embodied/pi0.rst)."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from configs import metaworld_ppo
from pirl import checkpoints, cli, runsetup
from pirl.data import norm_stats as ns
from pirl.models import pi0
from tests.test_checkpoints_torch import independent_torch_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPECTED = {
    "libero_ppo.py": {
        "RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT",
        "RLinf/RLinf-Pi0-LIBERO-Long-SFT",
        "RLinf/RLinf-Pi05-LIBERO-SFT",
    },
    "libero_grpo.py": {
        "RLinf/RLinf-Pi0-LIBERO-Spatial-Object-Goal-SFT",
        "RLinf/RLinf-Pi0-LIBERO-Long-SFT",
        "RLinf/RLinf-Pi05-LIBERO-SFT",
    },
    "maniskill_ppo.py": {"RLinf/RLinf-Pi0-ManiSkill-25Main-SFT", "RLinf/RLinf-Pi05-ManiSkill-25Main-SFT"},
    "metaworld_ppo.py": {"RLinf/RLinf-Pi0-MetaWorld-SFT", "RLinf/RLinf-Pi05-MetaWorld-SFT"},
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def named(recipe: str) -> set[str]:
    doc = (ROOT / "configs" / recipe).read_text().split('"""')[1]
    return set(re.findall(r"hf://(RLinf/[\w.-]+)", doc))


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_docstring_names_its_reference_checkpoints(recipe):
    assert EXPECTED[recipe] <= named(recipe)


def fill_hf_cache(hub: pathlib.Path, repo: str, config: pi0.Pi0Config, asset: str, seed: int = 0) -> dict:
    """A snapshot of ``repo`` in the layout huggingface_hub keeps (refs/main → snapshots/<commit>)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), pi0.param_shapes(config))
    snap = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    safetensors.numpy.save_file(independent_torch_state_dict(params, config.pi05), snap / "model.safetensors")
    ns.save(
        snap / asset, {"state": ns.compute(rng.normal(size=(8, 32))), "actions": ns.compute(rng.normal(size=(8, 32)))}
    )
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(COMMIT)
    return params


def test_every_named_checkpoint_loads_from_the_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    config = pi0.Pi0Config.tiny()
    for i, repo in enumerate(sorted(set().union(*EXPECTED.values()))):
        cfg = pi0.Pi0Config.tiny(pi05="Pi05" in repo)
        params = fill_hf_cache(tmp_path, repo, cfg, "physical-intelligence/libero", seed=i)
        ckpt = checkpoints.load(f"hf://{repo}", config)
        assert (
            ckpt.layout == "safetensors"
            and ckpt.config.pi05 == cfg.pi05
            and ckpt.asset_id == "physical-intelligence/libero"
        )
        for got, want in zip(jax.tree.leaves(ckpt.params), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(got, want)


def test_recipe_builds_from_hf_name(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    c = metaworld_ppo.get_config("shrink")
    c.model.checkpoint = "hf://RLinf/RLinf-Pi0-MetaWorld-SFT"
    exp, _ = cli.to_experiment(c)
    params = fill_hf_cache(tmp_path, "RLinf/RLinf-Pi0-MetaWorld-SFT", exp.model.pi0_config(), "lerobot/metaworld_mt50")
    setup = runsetup.build(exp)
    assert setup.exp.model.asset_id == "lerobot/metaworld_mt50"
    for got, want in zip(jax.tree.leaves(setup.params["model"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_train_cli_from_hf_name_offline(tmp_path):
    """The command line, with the hub's own environment variables: HF_HOME=tmp, HF_HUB_OFFLINE=1."""
    c = metaworld_ppo.get_config("shrink")
    exp, _ = cli.to_experiment(c)
    fill_hf_cache(
        tmp_path / "hf" / "hub", "RLinf/RLinf-Pi0-MetaWorld-SFT", exp.model.pi0_config(), "lerobot/metaworld_mt50"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    cmd = [
        sys.executable,
        "-m",
        "pirl.train",
        "--config=configs/metaworld_ppo.py:shrink",
        "--config.env.task=reach-v3",
        "--config.model.checkpoint=hf://RLinf/RLinf-Pi0-MetaWorld-SFT",
        "--config.train.iterations=1",
        "--config.train.tensorboard=False",
        f"--workdir={tmp_path / 'run'}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    record = (tmp_path / "run" / "run.json").read_text()
    assert "hf://RLinf/RLinf-Pi0-MetaWorld-SFT" in record and "lerobot/metaworld_mt50" in record
