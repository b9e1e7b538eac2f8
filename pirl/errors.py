"""The error type for failures the user can act on (a disk, a directory, a simulator that will not
start): pirl's commands print its ``summary`` as one ``error:`` line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A failure whose message says what happened and what to do; ``summary`` is that message on
    one line (``str`` may carry more, e.g. a worker's traceback)."""

    @property
    def summary(self) -> str:
        return " ".join(str(self).split("\n")[0].split())


class WriteError(UserError, OSError):
    """A run's output (checkpoint, metrics, logs) could not be written: a full disk, a read-only
    or vanished directory. The message names the path (and, from the trainer, the last complete
    checkpoint)."""

    @classmethod
    def of(cls, e: OSError, path) -> WriteError:
        """``e`` as "cannot write <file> (<reason>)": the file the OS names, else ``path``."""
        return cls(f"cannot write {e.filename or path} ({e.strerror or e})")
