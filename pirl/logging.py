"""Metric sinks for a run: metrics.jsonl (always), TensorBoard, wandb, and the learning curve.

metrics.jsonl is the run's own record (one JSON object per logged step, appended and flushed), so a
resumed run continues it and plots need no TensorBoard reader.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from collections.abc import Mapping

import numpy as np


class MetricWriter:
    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb_project: str = "",
        wandb_mode: str = "offline",
        config: Mapping | None = None,
        enabled: bool = True,
    ):
        """``enabled=False`` (non-zero processes of a multi-host job) writes nothing."""
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115  (closed in close())
        if tensorboard:
            # Late: optional sinks, imported only when enabled (wandb takes seconds to import).
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(
                project=wandb_project,
                mode=wandb_mode,
                dir=str(self.workdir),
                config=dict(config or {}),
                resume="allow",
                id=_run_id(self.workdir),
            )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))

    def write_video(self, step: int, tag: str, paths: list[str]) -> None:
        if self.enabled and self._wandb is not None:
            # Late: optional sink (see __init__).
            import wandb

            for p in paths[:4]:
                self._wandb.log({tag: wandb.Video(p)}, step=int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _run_id(workdir: pathlib.Path) -> str:
    """A wandb run id stored in the workdir, so a resumed run continues the same wandb run."""
    path = workdir / "wandb_run_id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """metrics.jsonl as a list; a step logged twice (a run resumed from an earlier checkpoint)
    keeps its last record."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows: dict[tuple[int, tuple], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["step"], tuple(sorted(row)))] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def plot_learning_curve(workdir: str | os.PathLike, keys: tuple[str, ...], out: str = "learning_curve.png") -> str:
    """PNG of the given metrics against iteration (one panel each); returns its path."""
    # Late: matplotlib is slow to import and needed only for this PNG.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    present = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(4.5 * max(len(present), 1), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present, strict=False):
        pts = np.array([(r["step"], r[key]) for r in rows if key in r])
        ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = str(pathlib.Path(workdir) / out)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
