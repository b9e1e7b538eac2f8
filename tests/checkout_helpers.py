"""A copy of the repository on its own, for tests of what a fresh clone or install sees."""

import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def is_git_checkout() -> bool:
    return shutil.which("git") is not None and (ROOT / ".git").exists()


def copy_checkout(dest: pathlib.Path) -> None:
    """The files git tracks (and untracked, unignored ones), as they are in the work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a file deleted in the work tree but still in the index is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def bare_env(home: pathlib.Path, drop=()) -> dict:
    """This environment less PYTHONPATH and ``drop``, with an empty home (no caches)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", *drop)}
    home.mkdir(parents=True, exist_ok=True)
    return env | {"HOME": str(home)}
