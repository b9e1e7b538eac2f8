"""The repository on its own: tests that need inputs from outside it (LIBERO's scene assets) skip
with the reason in a copy with nothing beside it, and the asset download says what to do offline."""

import pathlib
import re
import subprocess
import sys
import time

import pytest
from checkout_helpers import ROOT, bare_env, copy_checkout, is_git_checkout

from pirl.envs import libero

# Every test marked libero_assets, wherever it is.
SELECT = ("-m", "libero_assets", "tests")
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist")


def _bare_env(home: pathlib.Path) -> dict:
    """No pointer to LIBERO assets, an empty home (no LIBERO cache)."""
    return bare_env(home, drop=(libero.ASSETS_ENV, "LIBERO_CONFIG_PATH"))


def _missing_assets_error(home: pathlib.Path) -> FileNotFoundError:
    """The error find_assets raises with no assets named and none in ``home``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(libero.ASSETS_ENV, raising=False)
        mp.setenv("HOME", str(home))
        with pytest.raises(FileNotFoundError) as e:
            libero.find_assets()
    return e.value


def test_a_fresh_copy_skips_the_libero_asset_tests_with_the_reason(tmp_path):
    if not is_git_checkout():
        pytest.skip("not a git checkout")
    package_assets = libero.package_assets_dir()
    if package_assets and libero.has_assets(package_assets):
        pytest.skip(f"the LIBERO package holds its assets ({package_assets}): a fresh copy finds them too")
    copy = tmp_path / "pirl"
    copy_checkout(copy)
    assert not (copy.parent / "shared").exists()
    start = time.monotonic()
    run = dict(cwd=copy, env=_bare_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    listed = subprocess.run([*PYTEST, "--co", "-q", *SELECT], **run)
    marked = [line for line in listed.stdout.splitlines() if "::" in line]
    out = subprocess.run([*PYTEST, "-q", "-rs", *SELECT], **run)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    # The summary line, wherever plugins' warnings put it among the last lines.
    found = re.search(r"^(\d+ skipped, \d+ deselected(?:, \d+ warnings?)? in [\d.]+s)$", out.stdout, re.MULTILINE)
    assert found, text[-3000:]
    summary = found.group(1)
    # Without LIBERO installed whole modules skip on the import; with it, every asset test skips, each
    # with the lookup's reason. -rs lists each reason once with its count: "SKIPPED [n] file:line: why".
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", text, re.MULTILINE)
    if libero.package_assets_dir() is not None:
        n = len(marked)
        assert n >= 7 and int(summary.split()[0]) == n, (summary, marked)
        assert [(int(k), r) for k, r in reasons] == [(n, str(_missing_assets_error(tmp_path / "home")))], reasons
    print(f"fresh copy: {summary} ({time.monotonic() - start:.1f} s)")


def test_asset_download_offline_says_what_to_do_in_one_line(tmp_path):
    # An endpoint that refuses at once stands for a machine without the Hub, wherever this runs.
    env = _bare_env(tmp_path / "home") | {"HF_ENDPOINT": "http://127.0.0.1:9"}
    script = ROOT / "third_party" / "download_libero_assets.py"
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.monotonic() - start < 60
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    assert lines[0].startswith("LIBERO assets: not downloaded, the Hugging Face Hub is not reachable")
    assert f"--local-dir DIR` and copy DIR here as {tmp_path / 'home' / '.cache' / 'libero' / 'assets'}" in lines[0]
    assert "PIRL_LIBERO_ASSETS=DIR" in lines[0]
    # Assets already found: nothing is downloaded.
    assets = tmp_path / "assets"
    (assets / "scenes").mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, str(script)], env=env | {libero.ASSETS_ENV: str(assets)}, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"LIBERO assets: found at {assets}", out


def test_find_assets_order_and_errors(tmp_path, monkeypatch):
    home, named = tmp_path / "home", tmp_path / "named"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(libero.ASSETS_ENV, raising=False)
    monkeypatch.setattr(libero, "package_assets_dir", lambda: str(tmp_path / "package" / "assets"))
    with pytest.raises(FileNotFoundError, match=r"LIBERO assets not found \(PIRL_LIBERO_ASSETS unset; searched ") as e:
        libero.find_assets()
    assert "\n" not in str(e.value) and "third_party/install_sims.sh" in str(e.value)
    # hf-libero's download folder, then the package's own (a source install) before it.
    cache = home / ".cache" / "libero" / "assets"
    (cache / "scenes").mkdir(parents=True)
    assert libero.find_assets() == str(cache)
    (tmp_path / "package" / "assets" / "scenes").mkdir(parents=True)
    assert libero.find_assets() == str(tmp_path / "package" / "assets")
    # A named folder wins, and one without scenes fails naming it and where the name came from.
    (named / "scenes").mkdir(parents=True)
    monkeypatch.setenv(libero.ASSETS_ENV, str(named))
    assert libero.find_assets() == str(named)
    assert libero.LiberoConfig(render=False).resolved_assets_dir() == str(named)
    with pytest.raises(FileNotFoundError, match=r"'/nonexistent' \(assets_dir\) has no 'scenes' folder"):
        libero.find_assets("/nonexistent")
    monkeypatch.setenv(libero.ASSETS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\(\$PIRL_LIBERO_ASSETS\) has no 'scenes' folder"):
        libero.find_assets()
