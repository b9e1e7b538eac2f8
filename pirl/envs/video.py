"""Per-env mp4 recording of pool observations, with an optional text overlay.

    rec = VideoRecorder("runs/x/videos", camera="main", fps=10)
    rec.add(obs)                                  # after reset: frame 0 of every env
    rec.add(result.obs, success=result.success_once, step=result.episode_length)
    rec.save(prefix="iter_000")                   # one file per env, buffers cleared

The overlay (instruction, step, success) is drawn with OpenCV's Hershey font on a strip below the
image so it never hides the scene; frames are upscaled to at least ``min_size`` pixels high so the
text stays legible on 64x64 or 128x128 renders.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from jaxtyping import UInt8

from pirl.envs import base


def overlay(
    frame: UInt8[np.ndarray, "H W 3"], lines: list[str], min_size: int = 256, color=(255, 255, 255)
) -> UInt8[np.ndarray, "H2 W2 3"]:
    """Returns the frame (nearest-upscaled to >= min_size high) with text lines in a strip below it."""
    try:
        # Late: OpenCV is optional (installed with the simulators).
        import cv2
    except ImportError as e:  # installed with the simulators (third_party/install_sims.sh)
        raise ImportError("video overlays need OpenCV: pip install opencv-python-headless") from e
    scale = max(1, -(-min_size // frame.shape[0]))
    img = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    w = img.shape[1]
    font, size, thick, line_h = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1, 14
    chars = max(8, int(w / 7.5))  # ~7.5 px per character at size 0.4
    wrapped = [piece for line in lines for piece in (textwrap.wrap(line, chars) or [""])]
    strip = np.zeros((line_h * len(wrapped) + 6, w, 3), np.uint8)
    for k, line in enumerate(wrapped):
        cv2.putText(strip, line, (3, line_h * (k + 1)), font, size, color, thick, cv2.LINE_AA)
    return np.concatenate([img, strip], axis=0)


class VideoRecorder:
    """Buffers one camera's frames per env and writes one mp4 per env on ``save``."""

    def __init__(self, out_dir: str, camera: str = "main", fps: int = 10, text: bool = True):
        self.out_dir, self.camera, self.fps, self.text = out_dir, camera, fps, text
        self.frames: dict[int, list[np.ndarray]] = {}

    def add(self, obs: base.BatchObs, success=None, step=None, envs=None):
        """Appends a frame for each env in ``envs`` (default all); success/step are (N,) arrays."""
        if self.camera not in obs.images:
            raise KeyError(f"camera {self.camera!r} not in observation images {sorted(obs.images)}")
        imgs = obs.images[self.camera]
        for i in range(len(imgs)) if envs is None else envs:
            frame = imgs[i]
            if self.text:
                lines = [obs.instruction[i]]
                status = []
                if step is not None:
                    status.append(f"step {int(step[i])}")
                if success is not None:
                    status.append("success" if bool(success[i]) else "no success yet")
                if status:
                    lines.append("  ".join(status))
                frame = overlay(frame, lines)
            self.frames.setdefault(int(i), []).append(np.ascontiguousarray(frame))

    def save(self, prefix: str = "episode") -> list[str]:
        """Writes ``{out_dir}/{prefix}_env{i}.mp4`` for every env with frames; returns the paths.

        H.264 in yuv420p (what browsers, TensorBoard and wandb play), encoded in this process by
        PyAV: no ffmpeg subprocess is forked from a process that runs JAX's threads. A frame of odd
        height or width gets its last row or column repeated (4:2:0 needs even sizes)."""
        # Late: imageio's PyAV plugin is needed only when a video is written.
        import imageio.v3 as iio

        os.makedirs(self.out_dir, exist_ok=True)
        paths = []
        for i, frames in sorted(self.frames.items()):
            path = os.path.join(self.out_dir, f"{prefix}_env{i:03d}.mp4")
            iio.imwrite(
                path,
                even_sized(np.stack(frames)),
                plugin="pyav",
                codec="libx264",
                out_pixel_format="yuv420p",
                fps=self.fps,
            )
            paths.append(path)
        self.frames.clear()
        return paths


def even_sized(frames: UInt8[np.ndarray, "T H W 3"]) -> UInt8[np.ndarray, "T H2 W2 3"]:
    """``frames`` with the last row / column repeated where H / W is odd (H2, W2 even)."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
