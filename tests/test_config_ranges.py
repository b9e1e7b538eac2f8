"""Every numeric field of every config section has a range that is checked when the section is
built: NaN, ±inf and out-of-range values fail with the field named as section.field."""

import dataclasses
import math

import pytest

from pirl import cli, experiment, ranges

SECTIONS = {**cli.SECTIONS, "sft": experiment.SFTSection}
FIELDS = [(name, cls, f) for name, cls in SECTIONS.items() for f in ranges.numeric_fields(cls)]


def _bad_values(cls, field: str) -> list:
    """Values no such field may take: NaN and inf (floats), a huge negative (ints); a tuple gets
    one bad element."""
    default = next(f for f in dataclasses.fields(cls) if f.name == field)
    value = default.default if default.default is not dataclasses.MISSING else default.default_factory()
    kind = type(value[0]) if isinstance(value, tuple) and value else type(value)
    if "float" in str(default.type):
        kind = float
    scalars = [math.nan, math.inf, -math.inf] if kind is float else [-(10**9)]
    if isinstance(value, tuple):
        return [(*value[:-1], s) if value else (s,) for s in scalars]
    return scalars


def test_every_section_declares_numeric_fields():
    # A sample, so that an empty field list cannot make the table below vacuous.
    assert {"lr", "clip_eps", "update_epochs"} <= set(ranges.numeric_fields(SECTIONS["rl"]))
    assert {"num_workers", "timeout_s", "image_size", "tasks"} <= set(ranges.numeric_fields(SECTIONS["env"]))
    assert len(FIELDS) > 60


@pytest.mark.parametrize(("section", "cls", "field"), FIELDS, ids=[f"{n}.{f}" for n, _, f in FIELDS])
def test_out_of_range_values_are_rejected_naming_the_field(section, cls, field):
    cls()  # the defaults are valid
    for bad in _bad_values(cls, field):
        with pytest.raises(ValueError, match=rf"^{section}\.{field} must be "):
            cls(**{field: bad})


@pytest.mark.parametrize(
    ("value", "rule", "ok"),
    [
        (0, ">= 0", True),
        (0, "> 0", False),
        (1.0, "[0, 1]", True),
        (1.0, "[0, 1)", False),
        (-1, ">= 1 or == -1", True),
        (0, ">= 1 or == -1", False),
        (3.5, "finite", True),
        (math.nan, "finite", False),
        (math.inf, ">= 0", False),
        (True, ">= 0", False),  # a bool is not a number here
    ],
)
def test_rules(value, rule, ok):
    assert ranges.ok(value, rule) is ok


def test_command_line_values_are_checked_through_the_config(tmp_path):
    from configs import metaworld_ppo

    c = metaworld_ppo.get_config("shrink")
    c.env.num_workers = 0
    with pytest.raises(cli.ConfigError, match=r"^env\.num_workers must be >= 1, got 0$"):
        cli.to_experiment(c)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("env", "sim", "mujoco"),
        ("advantage", "bootstrap", "sometimes"),
        ("train", "wandb_mode", "loud"),
        ("policy", "noise_method", "flow_sde2"),
        ("policy", "logprob_type", "per_token"),
        ("policy", "value_source", "head"),
        ("rl", "lr_schedule", "linear"),
        ("rl", "trainable", "everything"),
    ],
)
def test_a_value_outside_a_fields_choices_is_rejected_naming_the_field(section, field, value):
    with pytest.raises(ValueError, match=rf"^{section}\.{field} must be one of \(.*\), got '{value}'$"):
        SECTIONS[section](**{field: value})


def test_a_reward_mode_outside_the_choices_is_rejected_naming_the_field():
    with pytest.raises(ValueError, match=r"^env\.reward_mode must be one of \(.*'grasp'\), got 'dense_ish'$"):
        experiment.EnvSection(sim="maniskill", task="PickCube-v1", reward_mode="dense_ish")
