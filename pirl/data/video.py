"""Frames of a video file at given timestamps, decoded with PyAV (FFmpeg), as LeRobot reads the
camera features it stores as mp4 (AV1, H.264, HEVC, ...).

A frame's time is its presentation timestamp × the stream's time base; each requested timestamp
gets the decoded frame closest to it, which must lie within ``tolerance_s`` (LeRobot's rule and
default: lerobot/datasets/video_utils.py decode_video_frames_torchvision, LeRobotDataset's
tolerance_s=1e-4), so a dataset whose frame times do not match its videos fails instead of
silently pairing states with the wrong images.

Axis letters: N requested frames, H/W image height/width.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from jaxtyping import UInt8

TOLERANCE_S = 1e-4


def decode_frames(
    path: str | os.PathLike, timestamps: Sequence[float], tolerance_s: float = TOLERANCE_S
) -> UInt8[np.ndarray, "N H W 3"]:
    """RGB frames of the first video stream of ``path`` at ``timestamps`` (seconds from the start
    of the file), in the order asked.

    Decodes from the last keyframe at or before the earliest timestamp up to the latest one only.
    Raises FileNotFoundError for a missing file and ValueError (naming the file, the timestamp and
    the nearest frame time) when a timestamp has no frame within ``tolerance_s``.
    """
    # Late: only video-encoded datasets need PyAV (FFmpeg).
    import av

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    wanted = np.asarray(timestamps, np.float64)
    if wanted.ndim != 1 or wanted.size == 0:
        raise ValueError(f"{path}: timestamps must be a non-empty 1-d sequence, got shape {wanted.shape}")
    first, last = float(wanted.min()), float(wanted.max())
    times, frames = [], []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if first > 0:  # to the keyframe before ``first``: later frames decode from it
            container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * stream.time_base)
            if t < first - tolerance_s:
                continue
            if t > last + tolerance_s:
                break
            times.append(t)
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: no frame within {tolerance_s} s of timestamps {first:.6f}..{last:.6f} s")
    times = np.asarray(times)
    nearest = np.abs(wanted[:, None] - times[None, :]).argmin(axis=1)
    error = np.abs(times[nearest] - wanted)
    if (bad := np.flatnonzero(error > tolerance_s)).size:
        i = bad[0]
        raise ValueError(
            f"{path}: no frame within {tolerance_s} s of timestamp {wanted[i]:.6f} s "
            f"(nearest decoded frame at {times[nearest[i]]:.6f} s; {bad.size} timestamps off)"
        )
    return np.stack([frames[i] for i in nearest])
