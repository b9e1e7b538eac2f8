"""The checkpoint error type and the check of a loaded parameter tree against the model's."""

from __future__ import annotations

import numpy as np
from flax import traverse_util


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
