"""A pirl run directory as a checkpoint: what the run started from, and its run checkpoints.

pirl.train writes, besides `checkpoints/<iteration>/` (orbax: the TrainState and a JSON record),
  run.json                             the model and transform conventions the run trains with
                                       (π0.5 or π0, horizon, prompt length, discrete state input,
                                       normalization, cameras, delta-action dims, executed chunk),
                                       the policy's sampling settings, and where it started
                                       (checkpoint, layout, asset id);
  assets/<asset_id>/norm_stats.json    the norm stats it normalizes with (its start's, or the
                                       identity for a random start).
So a run directory alone says how to run its policy: pirl.eval, pirl.export and `model.checkpoint=
<run dir>` read the norm stats and conventions from here, never the recipe's defaults.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from pirl.checkpoints import openpi, validation
from pirl.data import norm_stats as ns

RECORD = "run.json"
CHECKPOINTS = "checkpoints"
VERSION = 1


def is_run(path: pathlib.Path) -> bool:
    return (path / RECORD).is_file() and (path / CHECKPOINTS).is_dir()


def write_record(workdir: str | os.PathLike, record: Mapping, norm_stats: Mapping[str, ns.NormStats]) -> None:
    """Writes run.json and assets/<record["start"]["asset_id"]>/norm_stats.json (process 0 only)."""
    workdir = pathlib.Path(workdir)
    asset_id = record["start"]["asset_id"]
    ns.save(workdir / "assets" / asset_id, norm_stats)
    tmp = workdir / (RECORD + ".tmp")
    tmp.write_text(json.dumps({"version": VERSION, **record}, indent=1, default=_json_default))
    os.replace(tmp, workdir / RECORD)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):  # an explicit Gemma/SigLIP size (not a variant name)
        return {f: getattr(value, f) for f in value.__dataclass_fields__}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_record(path: pathlib.Path) -> dict:
    file = path / RECORD
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise validation.CheckpointError(f"{file}: not a readable run record ({e})") from None
    for key in ("model", "transform", "start"):
        if key not in record:
            raise validation.CheckpointError(f"{file}: no {key!r} entry (found {sorted(record)})")
    return record


def norm_stats(path: pathlib.Path, record: Mapping) -> dict[str, ns.NormStats]:
    asset_id = record["start"]["asset_id"]
    file = path / "assets" / asset_id / ns.FILENAME
    if not file.is_file():
        raise validation.CheckpointError(f"{path}: the run's norm stats {file.relative_to(path)} are missing")
    return validation.load_norm_stats(file)


def steps(path: pathlib.Path) -> list[int]:
    """The iterations with a complete run checkpoint, ascending."""
    root = path / CHECKPOINTS
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def restore_params(path: pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """(iteration, params {"model", heads} as stored) of run checkpoint ``step`` (default: the
    latest), read without the optimizer state."""
    found = steps(path)
    if not found:
        raise validation.CheckpointError(f"{path / CHECKPOINTS} holds no run checkpoint")
    step = found[-1] if step is None else step
    if step not in found:
        raise validation.CheckpointError(f"{path / CHECKPOINTS} has no iteration {step} (found {found})")
    return step, openpi.restore_item(path / CHECKPOINTS / str(step) / "state", "params")
