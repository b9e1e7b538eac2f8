"""Export a run's policy for the tools it came from: openpi (JAX, serve_policy.py), PyTorch (openpi's
PyTorch port, the reference system) or LeRobot.

    python -m pirl.export --workdir=runs/libero_ppo --format=openpi --out=exports/libero_openpi
    python -m pirl.export --workdir=runs/libero_ppo --format=pytorch --out=exports/libero_pt --dtype=bfloat16
    python -m pirl.export --workdir=runs/mt50_ppo --format=lerobot --out=exports/mt50_lerobot --step=500

The policy is the run's latest run checkpoint (or ``--step``), with the norm stats and the prompt /
state conventions the run trained with (from the run directory: see pirl.checkpoints.run); float
params are written as ``--dtype`` (float32 by default: bitwise the trained params). Formats and
what each tool reads: pirl.checkpoints.export. Errors are one line (``error: ...``).
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from pirl import checkpoints, cli
from pirl.checkpoints import export as export_lib
from pirl.models import pi0


def export_run(workdir: str, fmt: str, out: str, *, step: int | None = None, dtype: str = "float32") -> pathlib.Path:
    """Loads the run in ``workdir`` (iteration ``step``, default latest) and writes it to ``out``."""
    path = pathlib.Path(workdir).expanduser().resolve()
    if not checkpoints.run.is_run(path):
        raise checkpoints.CheckpointError(
            f"{path}: not a pirl run directory (no {checkpoints.run.RECORD} with {checkpoints.run.CHECKPOINTS}/)"
        )
    # A run directory records every convention itself: no model config is needed.
    ckpt = checkpoints.load(path, pi0.Pi0Config(), step=step)
    return export_lib.export(ckpt, fmt, out, dtype)


def _define_flags():
    flags.DEFINE_string("workdir", None, "the run directory to export", required=True)
    flags.DEFINE_enum("format", None, export_lib.FORMATS, "checkpoint format to write", required=True)
    flags.DEFINE_string("out", None, "output directory (new or empty)", required=True)
    flags.DEFINE_integer("step", None, "run checkpoint iteration (default: the latest)")
    flags.DEFINE_enum("dtype", "float32", export_lib.DTYPES, "dtype of the written float params")


def _run(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    try:
        out = export_run(f.workdir, f.format, f.out, step=f.step, dtype=f.dtype)
    except (checkpoints.CheckpointError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{f.format} checkpoint: {out}")


def main() -> None:
    """``pirl-export`` and ``python -m pirl.export``."""
    _define_flags()
    cli.run(_run)


if __name__ == "__main__":
    main()
