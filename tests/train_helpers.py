"""Helpers shared by the training tests."""

import os
import signal

from pirl.rl import update as upd


def interrupt_after_update(monkeypatch, call: int) -> None:
    """Makes the update send this process SIGINT the moment its ``call``-th call returns: the old
    state's buffers are donated, the new state is not yet bound to ``state`` (the interrupt is held
    until the update's block ends)."""
    real = upd.jit_update

    def patched(*args, **kwargs):
        fn, calls = real(*args, **kwargs), []

        def update_fn(*a):
            out = fn(*a)
            calls.append(1)
            if len(calls) == call:
                os.kill(os.getpid(), signal.SIGINT)
            return out

        return update_fn

    monkeypatch.setattr(upd, "jit_update", patched)
