"""Simulator code stays numpy-only: importing any pirl.envs module (workers included) loads no JAX."""

import pathlib
import subprocess
import sys

import pirl.envs


def test_env_modules_do_not_import_jax():
    package = pathlib.Path(pirl.envs.__file__).parent
    modules = sorted(f"pirl.envs.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__")
    assert "pirl.envs.worker" in modules and "pirl.envs.pool" in modules
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
