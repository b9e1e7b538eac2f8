"""Command-line plumbing shared by pirl.train, pirl.eval, pirl.sft and pirl.plan: the only module
that touches ml_collections ConfigDicts; everything past it gets frozen dataclasses.

    python -m pirl.train --config=configs/quickstart.py[:arg] --config.rl.lr=1e-5 --workdir=runs/q
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_dict, config_flags

from pirl import experiment, sharding
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
        raise ConfigError(f"config section {name!r}: {e}") from None


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


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a mistyped ``--config.a.b`` into one line naming the field
    and its closest valid names, instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        msg = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "'").strip("'\" ").replace("' Did", "': did")
        print(f"error: bad config override among {bad}: {msg}", file=sys.stderr)
        sys.exit(2)


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

    app.run(quiet_main, flags_parser=parse_flags)
