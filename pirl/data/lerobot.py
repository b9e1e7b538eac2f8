"""Reads a local LeRobot-format dataset (layout v2.0 / v2.1) into demonstration episodes.

Layout::

    <root>/meta/info.json         codebase_version, chunks_size, data_path template, features
    <root>/meta/episodes.jsonl    {"episode_index": i, "tasks": [...], "length": T} per line
    <root>/meta/tasks.jsonl       {"task_index": k, "task": "..."} per line
    <root>/data/chunk-000/episode_000000.parquet   one row per frame

Image features (dtype "image") are parquet structs {"bytes", "path"} holding an encoded PNG/JPEG
(or a path relative to the root). Video features (dtype "video") live in mp4 files, which this
reader does not decode; asking for one is an error naming it.

Axis letters: T frames of an episode, H/W image height/width, S state dims, E action dims.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pirl.data.demos import Episode

SUPPORTED_VERSIONS = ("v2.0", "v2.1")
DEFAULT_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"


@dataclasses.dataclass(frozen=True)
class LeRobotKeys:
    """Which features are the cameras, the state and the actions.

    images: image feature keys, in model-slot order (the first fills the base camera slot); empty
      takes every feature of dtype "image" or "video" in info.json order. The episode's camera
      names are these keys.
    """

    images: tuple[str, ...] = ()
    state: str = "observation.state"
    actions: str = "action"


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot dataset file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_info(root: str | os.PathLike) -> dict:
    """meta/info.json of the dataset at ``root``, after checking that the layout is one we read."""
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobot dataset not found: {root} is not a directory")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"LeRobot dataset {root} has no meta/info.json")
    info = json.loads(info_path.read_text())
    version = info.get("codebase_version", "")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{info_path}: codebase_version {version!r} is not one of {SUPPORTED_VERSIONS}")
    if not isinstance(info.get("features"), dict):
        raise ValueError(f"{info_path}: no 'features' object")
    return info


def _image_keys(info: dict, keys: LeRobotKeys, source: str) -> tuple[str, ...]:
    features = info["features"]
    if not keys.images:
        return tuple(k for k, f in features.items() if f.get("dtype") in ("image", "video"))
    for key in keys.images:
        if key not in features:
            raise KeyError(f"{source}: no image feature {key!r} (features: {sorted(features)})")
    return keys.images


def _check_features(info: dict, keys: LeRobotKeys, images: Sequence[str], source: str) -> None:
    features = info["features"]
    for role, key in (("state", keys.state), ("actions", keys.actions)):
        if key not in features:
            raise KeyError(f"{source}: no {role} feature {key!r} (features: {sorted(features)})")
    for key in images:
        dtype = features[key].get("dtype")
        if dtype == "video":
            raise NotImplementedError(
                f"{source}: feature {key!r} is stored as video (mp4), which this reader does not decode; "
                "convert the dataset to image features or leave that camera out"
            )
        if dtype != "image":
            raise ValueError(f"{source}: feature {key!r} has dtype {dtype!r}, not 'image'")


def decode_image(value, root: pathlib.Path, key: str) -> np.ndarray:
    """One parquet image cell ({"bytes", "path"} struct, or a nested list of pixels) → uint8 [H, W, 3]."""
    if isinstance(value, dict):
        if value.get("bytes"):
            source = io.BytesIO(value["bytes"])
        elif value.get("path"):
            source = root / value["path"]
            if not source.is_file():
                raise FileNotFoundError(f"image of feature {key!r} not found: {source}")
        else:
            raise ValueError(f"image cell of feature {key!r} has neither bytes nor path")
        with Image.open(source) as im:
            return np.asarray(im.convert("RGB"))
    array = np.asarray(value)
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise ValueError(f"image cell of feature {key!r} has shape {array.shape}, expected [H, W, 3]")
    if array.shape[-1] != 3:  # stored channels-first
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:  # float images in [0, 1]
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return array


def _vectors(column: list, key: str, path: pathlib.Path) -> np.ndarray:
    out = np.asarray(column, np.float32)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"{path}: feature {key!r} is not one vector per frame (shape {out.shape})")
    return out


def load(
    root: str | os.PathLike,
    keys: LeRobotKeys = LeRobotKeys(),
    *,
    episodes: Sequence[int] | None = None,
    max_episodes: int | None = None,
) -> list[Episode]:
    """The dataset's episodes (all, the listed indices, or the first ``max_episodes``).

    Instructions come from the frames' task_index (meta/tasks.jsonl), falling back to the
    episode's first task in meta/episodes.jsonl. Demonstrations count as successful.
    """
    # Late: pyarrow is needed only when a LeRobot dataset is read.
    import pyarrow.parquet as pq

    root = pathlib.Path(root).expanduser()
    info = read_info(root)
    source = str(root)
    images = _image_keys(info, keys, source)
    _check_features(info, keys, images, source)
    listed = _read_jsonl(root / "meta" / "episodes.jsonl")
    tasks = {t["task_index"]: t["task"] for t in _read_jsonl(root / "meta" / "tasks.jsonl")}
    by_index = {e["episode_index"]: e for e in listed}
    wanted = list(episodes) if episodes is not None else sorted(by_index)
    if missing := [i for i in wanted if i not in by_index]:
        raise KeyError(f"{source}: episodes {missing} are not in meta/episodes.jsonl")
    if max_episodes is not None:
        wanted = wanted[:max_episodes]
    chunk_size = int(info.get("chunks_size", 1000))
    template = info.get("data_path", DEFAULT_DATA_PATH)
    out = []
    for index in wanted:
        path = root / template.format(episode_chunk=index // chunk_size, episode_index=index)
        if not path.is_file():
            raise FileNotFoundError(f"LeRobot episode file not found: {path}")
        columns = [keys.state, keys.actions, *images]
        table = pq.read_table(path)
        if absent := [c for c in columns if c not in table.column_names]:
            raise KeyError(f"{path}: no column {absent[0]!r} (columns: {table.column_names})")
        if "frame_index" in table.column_names:
            table = table.take(np.argsort(table.column("frame_index").to_numpy(), kind="stable"))
        data = {c: table.column(c).to_pylist() for c in columns}
        if "task_index" in table.column_names:
            instruction = tasks.get(table.column("task_index")[0].as_py(), "")
        else:
            instruction = (by_index[index].get("tasks") or [""])[0]
        out.append(
            Episode(
                images={k: np.stack([decode_image(v, root, k) for v in data[k]]) for k in images},
                state=_vectors(data[keys.state], keys.state, path),
                actions=_vectors(data[keys.actions], keys.actions, path),
                instruction=instruction,
                success=True,
            )
        )
    return out
