"""Run checkpoints: the TrainState (params, optimizer, step, skipped-update count) and a small JSON
record (iteration, seed, work still owed) in one orbax CheckpointManager step; atomic and
asynchronous.

orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest; the next save waits for the
previous asynchronous one. The temporary directories such a kill leaves (``*.orbax-checkpoint-tmp``,
as large as a checkpoint) are removed when the next run opens the directory.

A save that cannot be written (a full disk, a read-only or vanished directory) raises
``errors.WriteError`` naming the directory and the last checkpoint that is complete, and is never
retried: orbax's threads can then be left waiting for a commit that will not come, and the
command exits without them (``cli.exit_now``).
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid

import jax
import orbax.checkpoint as ocp

from pirl import errors
from pirl.checkpoints import validation


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        # Handlers named up front, so a step's stored tree can be read before restoring it.
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._failed: errors.WriteError | None = None
        self._pending = -1  # the step of the last save started

    def latest(self) -> int | None:
        return self._mngr.latest_step()

    def describe_latest(self) -> str:
        """'<dir>/<step>' of the newest complete checkpoint, or a sentence saying there is none."""
        step = self._complete_steps()
        return str(self.directory / str(step[-1])) if step else f"none (no complete checkpoint in {self.directory})"

    def _complete_steps(self) -> list[int]:
        # From the directory, not orbax's cache: a save that failed may be listed there.
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and (p / "state").is_dir())

    def _write_error(self, step: int, cause: BaseException) -> errors.WriteError:
        text = _reason(cause)
        return errors.WriteError(
            f"cannot write checkpoint {self.directory / str(step)} ({text}); the last good checkpoint is "
            f"{self.describe_latest()}"
        )

    def _probe(self, step: int) -> None:
        """Fails before orbax starts its threads if nothing can be created in the directory."""
        probe = self.directory / f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise self._write_error(step, e) from e

    def save(self, step: int, state, meta: dict) -> None:
        """Starts an asynchronous save of ``step`` (waiting for the previous one); errors.WriteError if
        this or the previous save cannot be written."""
        if self._failed is not None:
            raise self._failed
        if step in self._mngr.all_steps():
            return
        self.wait()
        if step in self._mngr.all_steps():  # the save in flight was this step's
            return
        if jax.process_index() == 0:
            self._probe(step)
        try:
            self._mngr.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            )
        except Exception as e:
            self._failed = self._write_error(step, e)
            raise self._failed from e
        self._pending = step

    def restore(self, like, step: int | None = None):
        """(state with the shapes, dtypes and shardings of ``like``, meta) of ``step`` (default latest)."""
        step = self.latest() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        where = self.directory / str(step)
        hint = f"delete {where} to resume from the checkpoint before it"
        with validation.reading(where, "run checkpoint", hint):
            validation.check_orbax_dir(where / "state", "run checkpoint")
            stored = self._mngr.item_metadata(step)["state"]
            if stored is None:
                raise validation.CheckpointError(f"run checkpoint {where} is incomplete or corrupt: no tree metadata")
            _check_fits(where, stored.tree, like)
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
            out = self._mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        return out["state"], out["meta"]

    def wait(self) -> None:
        """Waits for the asynchronous save in flight; errors.WriteError if it failed."""
        if self._failed is not None:
            raise self._failed
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            self._failed = self._write_error(self._pending, e)
            raise self._failed from e

    def close(self) -> None:
        """Waits for the save in flight and closes; after a failed save it only raises (closing
        would wait on the failed save's threads again)."""
        self.wait()
        self._mngr.close()


def _check_fits(where: pathlib.Path, stored, like) -> None:
    """CheckpointError if the stored tree's paths or shapes are not those of ``like``: a workdir
    of another config (not a damaged checkpoint, which deleting would wrongly fix)."""
    have = {k: tuple(getattr(v, "shape", ())) for k, v in ocp.tree.to_flat_dict(stored).items()}
    want = {
        k: tuple(v.shape)
        for k, v in ocp.tree.to_flat_dict(ocp.tree.serialize_tree(like, keep_empty_nodes=True)).items()
    }
    diffs = [
        f"{'/'.join(k)} is {'missing' if k not in have else f'stored as {have[k]}'}"
        + (f", the config needs {want[k]}" if k in want else ", which the config does not have")
        for k in sorted(have.keys() | want.keys())
        if have.get(k) != want.get(k)
    ]
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise validation.CheckpointError(
            f"run checkpoint {where} was written by another config: {diffs[0]}{more}; run this config in "
            "another --workdir, or the config that wrote it here"
        )


def _reason(e: BaseException) -> str:
    """The cause of a failed write in a few words: the OS error when there is one (tensorstore
    reports it inside a long message as os_error_code), else the message cut short."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join(str(e).split()) or type(e).__name__
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return os.strerror(int(code.group(1)))
    return text if len(text) <= 200 else text[:197] + "..."
