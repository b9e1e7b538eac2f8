"""Command-line plumbing shared by pirl.train, pirl.eval, pirl.sft and pirl.plan: the only module
that touches ml_collections ConfigDicts; everything past it gets frozen dataclasses.

    python -m pirl.train --config=configs/quickstart.py[:arg] --config.rl.lr=1e-5 --workdir=runs/q
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_dict, config_flags

from pirl import errors, experiment, sharding
from pirl.envs import pool
from pirl.rl import flow
from pirl.rl import update as upd

SECTIONS: dict[str, type] = {
    "model": experiment.ModelSpec,
    "env": experiment.EnvSection,
    "policy": flow.FlowPolicyConfig,
    "rl": upd.UpdateConfig,
    "advantage": experiment.AdvantageConfig,
    "train": experiment.TrainSection,
    "eval": experiment.EvalSection,
    "mesh": sharding.MeshConfig,
}


class ConfigError(ValueError):
    """A config that names a field that does not exist, or a value of the wrong kind."""


def _coerce(value):
    """Frozen dataclasses hold tuples; ConfigDicts and command-line overrides may give lists."""
    return tuple(value) if isinstance(value, list) else value


def to_dataclass(cls: type, section: config_dict.ConfigDict | dict, name: str):
    """Builds ``cls`` from a config section; unknown keys fail with the closest valid names."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = dict(section.items()) if section is not None else {}
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown config field {name}.{key}{experiment.closest(key, fields)}")
    kw = {k: _coerce(v) for k, v in values.items()}
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        # Range checks name the field as section.field already.
        msg = str(e) if str(e).startswith(f"{name}.") else f"config section {name!r}: {e}"
        raise ConfigError(msg) from None


def sections(config: config_dict.ConfigDict, classes: Mapping[str, type]) -> dict:
    """{section name: dataclass}; a section that is not in ``classes`` is rejected, with hints."""
    for key in config:
        if key not in classes:
            hint = experiment.closest(key, classes)
            raise ConfigError(f"unknown config section {key!r}{hint}; sections: {list(classes)}")
    return {n: to_dataclass(cls, config.get(n, {}), n) for n, cls in classes.items()}


def to_experiment(
    config: config_dict.ConfigDict, extra: Mapping[str, type] | None = None
) -> tuple[experiment.Experiment, dict]:
    """(the Experiment of a config, its ``extra`` sections built from their classes, e.g. sft)."""
    built = sections(config, {**SECTIONS, **(extra or {})})
    try:
        exp = experiment.Experiment(**{n: built[n] for n in SECTIONS})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return exp, {n: built[n] for n in (extra or {})}


def recipe_sections(config: config_dict.ConfigDict) -> dict[str, type]:
    """The sections a recipe may carry beyond the Experiment's (its warm-start ``sft`` stage), for
    ``to_experiment``'s ``extra``; every command accepts such a recipe."""
    if "sft" not in config:
        return {}
    return {"sft": experiment.SFTSection}


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    return config_flags.DEFINE_config_file("config", default, "experiment config file (configs/*.py[:arg])")


# absl's help flags: each prints its text and exits.
HELP_FLAGS = ("help", "h", "?", "helpshort", "helpfull", "helpxml")


def _own_flags_are_key_flags() -> None:
    """Lists the flags pirl's modules define for the command (``--config`` from here, the
    multi-host ones from pirl.launch) in its ``--help`` beside those of its own module: absl's
    short help shows only the main module's key flags."""
    main = sys.argv[0]
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module.startswith("pirl.") and module != main:
            for flag in defined:
                flags.FLAGS.register_key_flag_for_module(main, flag)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a mistyped ``--config.a.b`` into one line naming the field
    and its closest valid names, instead of a traceback."""
    _own_flags_are_key_flags()
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:
        # absl exits 1 after printing the help it was asked for; that request succeeded.
        if e.code == 1 and any(a.split("=")[0].lstrip("-") in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        msg = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "'").strip("'\" ").replace("' Did", "': did")
        print(f"error: bad config override among {bad}: {msg}", file=sys.stderr)
        sys.exit(2)


# What a command reports as one ``error:`` line (the traceback only with --verbosity=1 or more):
# configs and inputs that do not fit (ValueError, which ConfigError and CheckpointError are), files
# and directories (OSError), simulators that fail, and pirl's own UserError. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (errors.UserError, pool.WorkerError, ValueError, OSError)


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its ``summary`` if it has one)."""
    if isinstance(e, errors.UserError | pool.WorkerError):
        return e.summary
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


def exit_now(code: int, grace_s: float = 3.0) -> None:
    """Exits with ``code`` after a failure or an interrupt, without the interpreter's teardown:
    library threads that can never finish (orbax's, after a save that failed half-way, wait for a
    signal that will not come) would hold a normal exit forever, and tensorstore reads still in
    flight after a failed restore print one traceback each when their callbacks meet the closed
    event loop during teardown. Non-daemon threads get ``grace_s`` to end; everything pirl writes
    is flushed or closed by then (metrics, logs, checkpoints, worker pools)."""
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = time.monotonic() + grace_s
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
    logging.shutdown()
    os._exit(code)


def exit_if_stuck(e: BaseException, after_s: float = 30.0) -> threading.Timer:
    """Arms a timer that prints ``error: <e>`` and exits 1 if the process is still alive
    ``after_s`` seconds later: after a failure that already ended the run (a storage error), the
    closing of worker pools and checkpoint threads must not hold it. Cancel it once closed."""

    def stop() -> None:
        print(f"error: {one_line(e)} (closing the run took over {after_s:g} s: stopped)", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(after_s, stop)
    timer.daemon = True
    timer.start()
    return timer


def _one_line_orbax_errors(record: logging.LogRecord) -> bool:
    """orbax logs each failure of a background save with its traceback before raising it to the
    caller, which reports it as one ``error:`` line: its own records keep their first line only."""
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
        record.msg, record.args = record.getMessage().split("\n")[0], None
        record.exc_info = record.exc_text = record.stack_info = None
    return True


def _without_closed_loop_reports(hook):
    """``sys.unraisablehook`` less the "Event loop is closed" reports of tensorstore reads that
    complete after a failed restore has closed orbax's event loop (one traceback per read still in
    flight, after the one line that reports the failure)."""

    def unraisable(report) -> None:
        if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
            return
        hook(report)

    return unraisable


def guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """``main`` whose user errors print ``error: <message>`` on one line and exit 2 (config) or
    1 (anything else); ``--verbosity=1`` shows the traceback instead. An interrupt exits 130."""

    def wrapped(argv: list[str]) -> None:
        if flags.FLAGS.verbosity < 1:
            logging.getLogger("absl").addFilter(_one_line_orbax_errors)
            sys.unraisablehook = _without_closed_loop_reports(sys.unraisablehook)
        try:
            main(argv)
        except KeyboardInterrupt as e:  # Ctrl-C: no traceback; the shell's 128 + signal number
            exit_now(128 + getattr(e, "signum", 2))
        except USER_ERRORS as e:
            if flags.FLAGS.verbosity >= 1:
                raise
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            exit_now(2 if isinstance(e, ConfigError) else 1)

    return wrapped


def quiet_library_logs() -> None:
    """Keeps Python logging at WARNING unless ``--verbosity`` (or ``-v``) is given: absl's app.run
    raises it to INFO, and orbax (a dozen lines per checkpoint save), JAX and absl would then bury
    the progress bar. ``--verbosity=0`` brings the INFO lines back."""
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def run(main: Callable[[list[str]], None]) -> None:
    def quiet_main(argv: list[str]) -> None:
        quiet_library_logs()
        main(argv)

    app.run(guarded(quiet_main), flags_parser=parse_flags)
