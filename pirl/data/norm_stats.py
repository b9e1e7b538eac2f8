"""Normalization statistics (openpi's norm_stats.json) and z-score / quantile (un)normalization.

File layout: {"norm_stats": {"state": {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
"actions": {...}}}, one number per (unpadded) dimension. Checkpoints keep it at
<checkpoint>/assets/<asset_id>/norm_stats.json.

Axis letters: N samples, D dims (unpadded, as stored), P dims of the array being (un)normalized.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
from jaxtyping import Float

NormType = Literal["zscore", "quantile"]
FILENAME = "norm_stats.json"
# Guards against zero spread; part of the formula the checkpoints were trained with.
EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one key ("state" or "actions"); arrays are float32 [D]."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self):
        dims = None
        for name in ("mean", "std", "q01", "q99"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, np.float32)
            if value.ndim != 1 or (dims is not None and value.shape[0] != dims):
                raise ValueError(f"NormStats.{name} has shape {value.shape}, expected [{dims or 'D'}]")
            dims = value.shape[0]
            object.__setattr__(self, name, value)
        if (self.q01 is None) != (self.q99 is None):
            raise ValueError("NormStats needs both q01 and q99 or neither")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]


def compute(x: Float[np.ndarray, "... D"]) -> NormStats:
    """Exact statistics of samples x (all leading axes are samples): mean, population std,
    1st and 99th percentiles (linear interpolation between order statistics)."""
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to compute norm stats, got {x.shape[0]}")
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return NormStats(mean=x.mean(0), std=x.std(0), q01=q01, q99=q99)


class StatsAccumulator:
    """Collects batches of one key and computes exact NormStats at the end.

    State and action data are small (a million 32-d frames is 128 MB in float32), so keeping the
    samples gives exact quantiles instead of a histogram approximation.
    """

    def __init__(self):
        self._chunks: list[np.ndarray] = []

    def update(self, batch: Float[np.ndarray, "... D"]) -> None:
        batch = np.asarray(batch, np.float32)
        batch = batch.reshape(-1, batch.shape[-1])
        if self._chunks and batch.shape[-1] != self._chunks[0].shape[-1]:
            raise ValueError(f"batch has {batch.shape[-1]} dims, earlier batches {self._chunks[0].shape[-1]}")
        self._chunks.append(batch)

    def result(self) -> NormStats:
        if not self._chunks:
            raise ValueError("no data was added")
        return compute(np.concatenate(self._chunks))


def to_json(stats: Mapping[str, NormStats]) -> str:
    def entry(s: NormStats) -> dict:
        values = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
        return {name: None if v is None else v.tolist() for name, v in values.items()}

    body = {key: entry(s) for key, s in stats.items()}
    return json.dumps({"norm_stats": body}, indent=2)


def from_json(text: str, source: str = "norm_stats.json") -> dict[str, NormStats]:
    """Parses openpi's norm_stats.json text; errors name `source` and the offending key."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        raise ValueError(f"{source}: expected a top-level 'norm_stats' object")
    out = {}
    for key, entry in data["norm_stats"].items():
        missing = [name for name in ("mean", "std") if entry.get(name) is None]
        if missing:
            raise ValueError(f"{source}: norm_stats[{key!r}] lacks {', '.join(missing)}")
        try:
            out[key] = NormStats(**{n: entry.get(n) for n in ("mean", "std", "q01", "q99")})
        except ValueError as e:
            raise ValueError(f"{source}: norm_stats[{key!r}]: {e}") from None
    return out


def _file(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.suffix == ".json" else path / FILENAME


def save(path: str | os.PathLike, stats: Mapping[str, NormStats]) -> pathlib.Path:
    """Writes norm_stats.json to `path` (a .json file, or a directory that gets one)."""
    file = _file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(to_json(stats))
    return file


def load(path: str | os.PathLike) -> dict[str, NormStats]:
    """Reads norm_stats.json from `path` (the file or its directory)."""
    file = _file(path)
    if not file.is_file():
        raise FileNotFoundError(f"norm stats file not found: {file}")
    return from_json(file.read_text(), str(file))


def _check_kind(stats: NormStats, kind: NormType) -> None:
    if kind == "quantile" and stats.q01 is None:
        raise ValueError("quantile normalization needs q01/q99, but these norm stats have none")
    if kind not in ("zscore", "quantile"):
        raise ValueError(f"unknown normalization {kind!r}; expected 'zscore' or 'quantile'")


def normalize(x: Float[np.ndarray, "*b P"], stats: NormStats, kind: NormType) -> Float[np.ndarray, "*b P"]:
    """z-score (x - mean) / (std + 1e-6) or quantile (x - q01) / (q99 - q01 + 1e-6) * 2 - 1.

    x may have fewer dims than the stats (the stats are sliced to P); no clipping.
    """
    _check_kind(stats, kind)
    p = x.shape[-1]
    if p > stats.dim:
        raise ValueError(f"cannot normalize {p} dims with norm stats of {stats.dim} dims")
    x = np.asarray(x, np.float32)
    if kind == "zscore":
        return (x - stats.mean[:p]) / (stats.std[:p] + EPS)
    return (x - stats.q01[:p]) / (stats.q99[:p] - stats.q01[:p] + EPS) * 2.0 - 1.0


def unnormalize(x: Float[np.ndarray, "*b P"], stats: NormStats, kind: NormType) -> Float[np.ndarray, "*b P"]:
    """Inverse of normalize. Dims beyond the stats (model padding) follow openpi: z-score pads
    mean 0 / std 1 (so they come out as x * (1 + 1e-6)); quantile passes them through."""
    _check_kind(stats, kind)
    x = np.asarray(x, np.float32)
    p, d = x.shape[-1], stats.dim
    if p < d:
        raise ValueError(f"cannot unnormalize {p} dims with norm stats of {d} dims (pad to {d} first)")
    if kind == "zscore":
        mean = np.pad(stats.mean, (0, p - d), constant_values=0.0)
        std = np.pad(stats.std, (0, p - d), constant_values=1.0)
        return x * (std + EPS) + mean
    head = (x[..., :d] + 1.0) / 2.0 * (stats.q99 - stats.q01 + EPS) + stats.q01
    return np.concatenate([head, x[..., d:]], axis=-1)
