"""The checkpoint error type, the check of a loaded parameter tree against the model's, and the
checks around checkpoint reads, so that a checkpoint that is not there, not complete or not
readable fails with one line naming its path and what is wrong, whatever format loads it.

orbax alone reports these cases as ``TypeError: argument of type 'NoneType' is not iterable`` (a
directory without ``_METADATA``: its tree metadata reads as None) or as a tensorstore trace of
100+ lines (a data file deleted or cut short); a malformed ``norm_stats.json`` as a
JSONDecodeError without the file's name, and norm stats without an ``actions`` entry only at the
first rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np
from flax import traverse_util

from pirl.data import norm_stats as ns


class CheckpointError(ValueError):
    """A checkpoint file or tree does not match what the model expects."""


def validate_params(params: dict, expected: dict, *, check_dtype: bool = True) -> None:
    """Raises CheckpointError naming the first path (sorted) that is missing, unexpected, or
    differs in shape (or dtype) from `expected` (a params or `param_shapes` tree)."""
    want = traverse_util.flatten_dict(expected, sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    for key in sorted(want.keys() | got.keys()):
        if key not in got:
            raise CheckpointError(f"parameter {key}: missing (expected shape {tuple(want[key].shape)})")
        if key not in want:
            raise CheckpointError(f"parameter {key}: unexpected (found shape {np.shape(got[key])})")
        w_shape, g_shape = tuple(want[key].shape), tuple(np.shape(got[key]))
        if w_shape != g_shape:
            raise CheckpointError(f"parameter {key}: expected shape {w_shape}, found {g_shape}")
        if check_dtype and np.dtype(want[key].dtype) != np.dtype(got[key].dtype):
            raise CheckpointError(f"parameter {key}: expected dtype {want[key].dtype}, found {got[key].dtype}")


# Entries every policy's transforms read (state normalization in, action unnormalization out).
NORM_STATS_KEYS = ("state", "actions")


def _listing(path: pathlib.Path, limit: int = 6) -> str:
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return "it is empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return f"it holds {', '.join(names[:limit])}{more}"


def check_orbax_dir(path: str | os.PathLike, what: str = "checkpoint") -> pathlib.Path:
    """``path`` if it is a directory with orbax's ``_METADATA`` (written last, when a save
    completes); else CheckpointError naming the path and what it holds."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{what} {path}: no such directory")
    if not (path / "_METADATA").is_file():
        raise CheckpointError(
            f"{what} {path} is incomplete: it has no _METADATA file, which an orbax save writes when it "
            f"completes ({_listing(path)})"
        )
    return path


def openpi_params_dir(path: str | os.PathLike) -> pathlib.Path:
    """The orbax params directory of an openpi checkpoint: ``<path>/params``, or ``path`` itself
    if it is one; CheckpointError if neither is."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    if (path / "params").is_dir():
        return check_orbax_dir(path / "params")
    if (path / "_METADATA").is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory (expected an openpi checkpoint with params/)")
    raise CheckpointError(
        f"checkpoint {path} holds no params/ directory and no orbax _METADATA: not an openpi checkpoint "
        f"({_listing(path)})"
    )


def _cause(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> Iterator[None]:
    """Turns what orbax/tensorstore raise while reading ``path`` (missing or cut-short data files:
    ValueError; unreadable tree metadata: TypeError/KeyError; OS errors) into one CheckpointError
    naming the checkpoint; ``hint`` says what to do about it."""
    try:
        yield
    except CheckpointError as e:
        if hint and "incomplete" in str(e):  # the hint is for damage, not for a mismatch
            raise CheckpointError(f"{e}; {hint}") from e
        raise
    except (ValueError, TypeError, KeyError, OSError) as e:
        tail = f"; {hint}" if hint else ""
        raise CheckpointError(f"{what} {path} is incomplete or corrupt ({_cause(e)}){tail}") from e


def check_norm_stats(stats: Mapping, source: str, required: tuple[str, ...] = NORM_STATS_KEYS) -> None:
    """CheckpointError naming ``source`` if an entry the policy reads is missing."""
    missing = [k for k in required if k not in stats]
    if missing:
        raise CheckpointError(
            f"{source} has no {', '.join(repr(k) for k in missing)} entry (found {sorted(stats)}); the policy "
            f"needs {', '.join(required)}"
        )


def load_norm_stats(file: str | os.PathLike, required: tuple[str, ...] = NORM_STATS_KEYS) -> dict[str, ns.NormStats]:
    """norm_stats.json (the file or its directory) read and checked at load: malformed JSON and
    missing entries name the file."""
    path = pathlib.Path(file)
    path = path if path.suffix == ".json" else path / ns.FILENAME
    try:
        stats = ns.load(path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: {_cause(e)}") from None
    check_norm_stats(stats, str(path), required)
    return stats
