"""pirl as an installed package: pyproject's dependencies agree with requirements.txt's pins and
install_sims.sh's, and `pip install -e .` gives `import pirl` and the pirl-* commands anywhere."""

import re
import subprocess
import sys
import tomllib

import pytest
from checkout_helpers import ROOT, bare_env, copy_checkout, is_git_checkout

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
COMMANDS = ("pirl-train", "pirl-eval", "pirl-sft", "pirl-plan", "pirl-export")


def _requirement(line: str) -> tuple[str, str, str]:
    """'jax==0.10.2  # why' → ('jax', '==', '0.10.2'); names compared case- and -/_-insensitively."""
    spec = line.split("#")[0].strip()
    name, op, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|~=|>=)?\s*([^\s;#]*)", spec).groups()
    return name.lower().replace("_", "-"), op or "", version


def _requirements_txt() -> dict[str, tuple[str, str]]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {n: (op, v) for n, op, v in map(_requirement, (ln for ln in lines if ln.split("#")[0].strip()))}


def test_pyproject_ranges_hold_the_pinned_requirements():
    pins = _requirements_txt()
    declared = [*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"]["dev"]]
    ranges = {n: (op, v) for n, op, v in map(_requirement, declared)}
    assert sorted(ranges) == sorted(pins), set(ranges) ^ set(pins)
    for name, (op, version) in pins.items():
        # A pin X becomes ~=X (same minor release); a lower bound stays the same lower bound.
        assert ranges[name] == ({"==": "~="}.get(op, op), version), (name, ranges[name], (op, version))


def test_sims_extra_matches_the_install_script_pins():
    script = (ROOT / "third_party" / "install_sims.sh").read_text()
    pinned = [d for d in PYPROJECT["optional-dependencies"]["sims"] if "==" in d]
    assert len(pinned) >= 8
    for dep in pinned:
        assert re.search(rf"(^|[\s\"']){re.escape(dep)}($|[\s\"'])", script, re.MULTILINE), dep


def test_every_command_runs_its_module():
    scripts = PYPROJECT["scripts"]
    assert sorted(scripts) == sorted(COMMANDS)
    for command, target in scripts.items():
        module, func = target.split(":")
        assert module == "pirl.scripts", target
        name = command.removeprefix("pirl-")
        source = (ROOT / "pirl" / "scripts.py").read_text()
        assert re.search(rf"def {func}\(\) -> None:\n    run_module\(\"{name}\"\)", source), command
        if (ROOT / "pirl" / f"{name}.py").is_file():
            assert 'if __name__ == "__main__":' in (ROOT / "pirl" / f"{name}.py").read_text(), name


def test_a_module_not_installed_is_one_line():
    code = "import sys; sys.argv = ['pirl-x']; from pirl import scripts; scripts.run_module('no_such_command')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == "error: pirl.no_such_command is not part of this pirl installation"


@pytest.mark.slow
def test_editable_install_in_a_fresh_venv(tmp_path):
    """pip install -e of a copy of the repository into a venv that sees this interpreter's packages
    (no downloads: --no-deps, and pip and setuptools from here, so the venv gets none of its own);
    then, from another directory, import pirl and the recipes, and the commands' --help."""
    if not is_git_checkout():
        pytest.skip("not a git checkout")
    copy, venv, elsewhere = tmp_path / "pirl", tmp_path / "venv", tmp_path / "elsewhere"
    copy_checkout(copy)
    elsewhere.mkdir()
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(copy)]
    out = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    env = bare_env(tmp_path / "home") | {"JAX_PLATFORMS": "cpu"}
    code = "import configs.quickstart, pirl, pirl.train; print(pirl.__file__); print(configs.quickstart.__file__)"
    out = subprocess.run([str(python), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(copy / "pirl" / "__init__.py"), str(copy / "configs" / "quickstart.py")]
    for command in COMMANDS:
        run = [str(venv / "bin" / command), "--help"]
        out = subprocess.run(run, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        if (copy / "pirl" / f"{command.removeprefix('pirl-')}.py").is_file():
            # The module's usage and its flags; asking for help succeeds.
            assert out.returncode == 0 and "Try --helpfull to get a list of all flags." in out.stdout, out
            assert "USAGE" in out.stdout or "flags:" in out.stdout, out.stdout[:2000]
        else:  # a command whose module this checkout does not have yet
            name = command.removeprefix("pirl-")
            assert out.stderr.strip() == f"error: pirl.{name} is not part of this pirl installation", out
