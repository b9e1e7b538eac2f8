"""Metric sinks for a run: metrics.jsonl (always), TensorBoard, wandb, and the learning curve.

metrics.jsonl is the run's own record (one JSON object per logged step, appended and flushed), so a
resumed run continues it and plots need no TensorBoard reader.

Each ``write`` is on disk (in the OS's hands: it survives a SIGKILL) in every local sink when it
returns: tensorboardX's SummaryWriter hands events to a background thread whose ``flush`` does not
wait for the queue, so the TensorBoard events are written here synchronously with tensorboardX's
own event-file writer. A run resumed at iteration S passes ``purge_step=S + 1``: metrics.jsonl drops
the rows of later steps (logged by a run that was stopped before it checkpointed them, about to
be logged again) and TensorBoard is told to hide them (a SessionLog START event). A line cut short
by a full disk or a kill is dropped when the file is next opened, and skipped by ``read_metrics``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
import uuid
from collections.abc import Mapping

import numpy as np

from pirl import errors

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _parse_lines(text: str, source: str) -> list[dict]:
    """The JSON objects of a metrics file, skipping lines that are not whole JSON (a write cut
    short by a full disk or a kill), with one warning."""
    rows, bad = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
        else:
            bad.append(n)
    if bad:
        logger.warning("%s: skipped %d line(s) that are not whole metric records: %s", source, len(bad), bad[:10])
    return rows


def repair(path: pathlib.Path, purge_step: int | None = None) -> None:
    """Drops a last line cut short (no newline at the end) and, with ``purge_step``, every row of
    a step >= purge_step; the file is replaced atomically (written beside it, then renamed)."""
    if not path.is_file() or not path.stat().st_size:  # absent, empty, or not a file (e.g. a device)
        return
    if purge_step is None:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return  # whole: nothing to read
    data = path.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    if purge_step is not None:
        lines = keep.decode(errors="replace").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                step = None  # not ours to judge: read_metrics skips it
            if step is None or step < purge_step:
                kept.append(line)
        keep = "".join(kept).encode()
    if keep == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(keep)
    os.replace(tmp, path)


class _EventFile:
    """A TensorBoard event file written synchronously: flushed (and fsynced by tensorboardX's
    RecordWriter) after each step's scalars."""

    def __init__(self, logdir: pathlib.Path, purge_step: int | None):
        # Late: an optional sink, imported only when enabled.
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._event = Event
        logdir.mkdir(parents=True, exist_ok=True)
        # The pid keeps a run restarted within the same second from reopening (truncating) the
        # previous process's file, whose name otherwise only carries the time in seconds.
        self._writer = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}")
        self.path = self._writer._file_name
        if purge_step is not None:
            start = SessionLog(status=SessionLog.START)
            self._writer.write_event(Event(wall_time=time.time(), step=purge_step, session_log=start))
        self._writer.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboardX import summary  # late: see __init__

        now = time.time()
        for k, v in scalars.items():
            self._writer.write_event(self._event(wall_time=now, step=step, summary=summary.scalar(k, v)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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
        purge_step: int | None = None,
    ):
        """``enabled=False`` (non-zero processes of a multi-host job) writes nothing;
        ``purge_step``: see the module docstring. Raises errors.WriteError naming the file that
        cannot be written."""
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tb = self._wandb = None
        self._fd: int | None = None
        if not enabled:
            return
        self.jsonl = self.workdir / METRICS_FILE
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            repair(self.jsonl, purge_step)
            self._fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if tensorboard:
                self._tb = _EventFile(self.workdir / "tensorboard", purge_step)
        except OSError as e:
            raise errors.WriteError.of(e, self.jsonl) from e
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
        """Appends one step's metrics to every sink; errors.WriteError names the file that failed."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        try:
            _write_all(self._fd, (json.dumps({"step": int(step), **clean}) + "\n").encode())
        except OSError as e:
            raise errors.WriteError.of(e, self.jsonl) from e
        if self._tb is not None:
            try:
                self._tb.write(step, clean)
            except OSError as e:
                raise errors.WriteError.of(e, self._tb.path) from e
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            # A disk that filled up fails the final flush too; what was written is on disk.
            try:
                self._tb.close()
            except OSError as e:
                logger.warning("closing %s: %s", self._tb.path, e)
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _run_id(workdir: pathlib.Path) -> str:
    """A wandb run id stored in the workdir, so a resumed run continues the same wandb run."""
    path = workdir / "wandb_run_id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """metrics.jsonl as one dict per step, in step order. Records of the same step merge, later
    values winning: a step redone after a resume replaces its earlier record, and an evaluation
    finished by a resumed run joins the training metrics its step logged before the interrupt.
    Lines that are not whole JSON records (cut short by a full disk or a kill) are skipped."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for row in _parse_lines(path.read_text(errors="replace"), str(path)):
        rows.setdefault(row["step"], {}).update(row)
    return [rows[k] for k in sorted(rows)]


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
