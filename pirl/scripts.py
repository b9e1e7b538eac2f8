"""Console entry points of the installed package (pyproject's [project.scripts]): ``pirl-train``
runs pirl.train exactly as ``python -m pirl.train`` does (same flags, same ``__main__`` block), and
likewise pirl-eval, pirl-sft, pirl-plan and pirl-export."""

from __future__ import annotations

import importlib.util
import runpy


def run_module(name: str) -> None:
    """Runs ``pirl.<name>`` as ``__main__`` with the command line as it is; a module this
    installation lacks is a one-line error."""
    module = f"pirl.{name}"
    if importlib.util.find_spec(module) is None:
        raise SystemExit(f"error: {module} is not part of this pirl installation")
    # alter_sys: sys.modules["__main__"] is the module while it runs, as under `python -m`, so
    # spawned env workers re-import it by name.
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def train() -> None:
    run_module("train")


def evaluate() -> None:
    run_module("eval")


def sft() -> None:
    run_module("sft")


def plan() -> None:
    run_module("plan")


def export() -> None:
    run_module("export")
