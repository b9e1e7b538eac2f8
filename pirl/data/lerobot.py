"""Reads a local LeRobot dataset (layouts v2.0, v2.1 and v3.0, as published on the Hugging Face
Hub, e.g. a ``hf download lerobot/<name> --repo-type dataset`` folder) into demonstration episodes.

Layouts (lerobot/datasets/utils.py: DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH, LEGACY_* paths; the
v2.1 → v3.0 converter lerobot/datasets/v30/convert_dataset_v21_to_v30.py documents both)::

    meta/info.json    codebase_version, fps, chunks_size, data_path / video_path templates, features
    v2.x  meta/episodes.jsonl   {"episode_index", "tasks", "length"} per line
          meta/tasks.jsonl      {"task_index", "task"} per line
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet        one episode
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
    v3.0  meta/episodes/chunk-{c:03d}/file-{f:03d}.parquet   one row per episode: episode_index,
            tasks, length, data/chunk_index, data/file_index, videos/{key}/chunk_index,
            videos/{key}/file_index, videos/{key}/from_timestamp, videos/{key}/to_timestamp
          meta/tasks.parquet    task_index per task (the task strings are the pandas index)
          data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet   many episodes, by episode_index
          videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4   episodes back to back

Every data row is one frame (frame_index, timestamp in seconds from the episode start, task_index,
the features). Image features (dtype "image") are parquet structs {"bytes", "path"} holding an
encoded PNG/JPEG (or a path relative to the root). Video features (dtype "video") are decoded from
their mp4 with PyAV at each frame's timestamp (v3: plus the episode's from_timestamp in its file),
frame-exact within LeRobot's 1e-4 s tolerance (pirl.data.video).

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

from pirl.data import video
from pirl.data.demos import Episode

V2_VERSIONS = ("v2.0", "v2.1")
V3_VERSIONS = ("v3.0",)
SUPPORTED_VERSIONS = V2_VERSIONS + V3_VERSIONS
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DEFAULT_CHUNK_SIZE = 1000  # lerobot/datasets/utils.py DEFAULT_CHUNK_SIZE


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
        if dtype not in ("image", "video"):
            raise ValueError(f"{source}: feature {key!r} has dtype {dtype!r}, not 'image' or 'video'")
        if dtype == "video" and not info.get("video_path"):
            raise ValueError(f"{source}: feature {key!r} is a video but meta/info.json has no video_path")


@dataclasses.dataclass(frozen=True)
class EpisodeRef:
    """Where one episode's frames are: its data file (v3: shared, rows selected by episode_index),
    each video feature's file and the episode's start time in it (0 in v2.x), its first task."""

    index: int
    data: pathlib.Path
    videos: dict[str, tuple[pathlib.Path, float]]
    task: str


def _v2_episodes(root: pathlib.Path, info: dict, video_keys: Sequence[str]) -> dict[int, EpisodeRef]:
    chunk = int(info.get("chunks_size", DEFAULT_CHUNK_SIZE))
    data_path, video_path = info.get("data_path", V2_DATA_PATH), info.get("video_path") or V2_VIDEO_PATH
    refs = {}
    for e in _read_jsonl(root / "meta" / "episodes.jsonl"):
        i = int(e["episode_index"])
        where = dict(episode_chunk=i // chunk, episode_index=i)
        videos = {k: (root / video_path.format(video_key=k, **where), 0.0) for k in video_keys}
        refs[i] = EpisodeRef(i, root / data_path.format(**where), videos, (e.get("tasks") or [""])[0])
    return refs


def _read_parquet_dir(folder: pathlib.Path, source: str):
    """Every parquet file under ``folder`` (sorted by path) as one table."""
    # Late: pyarrow is needed only when a LeRobot dataset is read.
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{source}: no parquet files under {folder}")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _v3_episodes(root: pathlib.Path, info: dict, video_keys: Sequence[str]) -> dict[int, EpisodeRef]:
    table = _read_parquet_dir(root / "meta" / "episodes", str(root))
    needed = ["episode_index", "data/chunk_index", "data/file_index"]
    for k in video_keys:
        needed += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
    if absent := [c for c in needed if c not in table.column_names]:
        raise KeyError(f"{root / 'meta' / 'episodes'}: no column {absent[0]!r}")
    rows = table.select([*needed, *(["tasks"] if "tasks" in table.column_names else [])]).to_pylist()
    data_path, video_path = info.get("data_path", V3_DATA_PATH), info.get("video_path") or V3_VIDEO_PATH
    refs = {}
    for r in rows:
        i = int(r["episode_index"])
        data = root / data_path.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
        videos = {}
        for k in video_keys:
            where = dict(chunk_index=r[f"videos/{k}/chunk_index"], file_index=r[f"videos/{k}/file_index"])
            videos[k] = (root / video_path.format(video_key=k, **where), float(r[f"videos/{k}/from_timestamp"]))
        refs[i] = EpisodeRef(i, data, videos, (r.get("tasks") or [""])[0])
    return refs


def _tasks(root: pathlib.Path, version: str) -> dict[int, str]:
    """{task_index: task}: meta/tasks.jsonl (v2.x) or meta/tasks.parquet (v3.0), whose task strings
    LeRobot writes as the pandas index (a "task" column is read too)."""
    if version in V2_VERSIONS:
        return {t["task_index"]: t["task"] for t in _read_jsonl(root / "meta" / "tasks.jsonl")}
    # Late: pyarrow is needed only when a LeRobot dataset is read.
    import pyarrow.parquet as pq

    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"LeRobot dataset file not found: {path}")
    table = pq.read_table(path)
    index = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    text = "task" if "task" in table.column_names else (index[0] if index else None)
    if text is None or "task_index" not in table.column_names:
        raise KeyError(f"{path}: expected task_index and the task strings (columns: {table.column_names})")
    return dict(zip(table.column("task_index").to_pylist(), table.column(text).to_pylist(), strict=True))


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
    tolerance_s: float = video.TOLERANCE_S,
) -> list[Episode]:
    """The dataset's episodes (all, the listed indices, or the first ``max_episodes``).

    Instructions come from the frames' task_index (the tasks file), falling back to the episode's
    first task in the episodes metadata. Video frames are those nearest each frame's timestamp,
    within ``tolerance_s`` seconds. Demonstrations count as successful.
    """
    # Late: pyarrow is needed only when a LeRobot dataset is read.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = pathlib.Path(root).expanduser()
    info = read_info(root)
    source = str(root)
    version = info["codebase_version"]
    images = _image_keys(info, keys, source)
    _check_features(info, keys, images, source)
    video_keys = [k for k in images if info["features"][k]["dtype"] == "video"]
    refs = (_v2_episodes if version in V2_VERSIONS else _v3_episodes)(root, info, video_keys)
    tasks = _tasks(root, version)
    wanted = list(episodes) if episodes is not None else sorted(refs)
    if missing := [i for i in wanted if i not in refs]:
        raise KeyError(f"{source}: episodes {missing} are not in its episodes metadata")
    if max_episodes is not None:
        wanted = wanted[:max_episodes]
    fps = float(info.get("fps", 0))
    out = []
    for index in wanted:
        ref = refs[index]
        if not ref.data.is_file():
            raise FileNotFoundError(f"LeRobot episode file not found: {ref.data}")
        table = pq.read_table(ref.data)
        if "episode_index" in table.column_names:  # v3 files hold many episodes
            table = table.filter(pc.equal(table.column("episode_index"), index))
        if table.num_rows == 0:
            raise ValueError(f"{ref.data}: no rows of episode {index}")
        columns = [keys.state, keys.actions, *(k for k in images if k not in video_keys)]
        if absent := [c for c in columns if c not in table.column_names]:
            raise KeyError(f"{ref.data}: no column {absent[0]!r} (columns: {table.column_names})")
        if "frame_index" in table.column_names:
            table = table.take(np.argsort(table.column("frame_index").to_numpy(), kind="stable"))
        data = {c: table.column(c).to_pylist() for c in columns}
        frames = {k: np.stack([decode_image(v, root, k) for v in data[k]]) for k in images if k not in video_keys}
        if video_keys:
            times = _timestamps(table, fps, ref.data)
            for k in video_keys:
                path, start = ref.videos[k]
                frames[k] = video.decode_frames(path, start + times, tolerance_s)
        if "task_index" in table.column_names:
            instruction = tasks.get(table.column("task_index")[0].as_py(), "")
        else:
            instruction = ref.task
        out.append(
            Episode(
                images={k: frames[k] for k in images},
                state=_vectors(data[keys.state], keys.state, ref.data),
                actions=_vectors(data[keys.actions], keys.actions, ref.data),
                instruction=instruction,
                success=True,
            )
        )
    return out


def _timestamps(table, fps: float, path: pathlib.Path) -> np.ndarray:
    """Seconds from the episode start of each row: the timestamp column, else frame_index / fps."""
    if "timestamp" in table.column_names:
        return table.column("timestamp").to_numpy().astype(np.float64)
    if "frame_index" in table.column_names and fps > 0:
        return table.column("frame_index").to_numpy().astype(np.float64) / fps
    raise KeyError(f"{path}: video features need a timestamp column (or frame_index and info.json fps)")
