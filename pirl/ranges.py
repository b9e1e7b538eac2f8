"""Range checks for the numeric fields of config dataclasses (and choice checks for the others), with
the field named in the error.

A rule is a small interval text, so the dataclass states its valid values where they are read:
``"> 0"``, ``">= 1"``, ``"[0, 1]"``, ``"[0, 1)"``, ``"finite"``, and alternatives joined by ``or``
(``">= 1 or == -1"``). Every rule rejects NaN and ±inf. A tuple field is checked element by element.

    ranges.check("rl", self, lr=">= 0", b1="[0, 1)", update_epochs=">= 1")
    # ValueError: rl.lr must be >= 0, got nan
    ranges.one_of("rl", self, lr_schedule=("constant", "cosine"))
"""

from __future__ import annotations

import dataclasses
import math
import re

_CMP = re.compile(r"^(>=|>|<=|<|==)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


def _one(value: float, rule: str) -> bool:
    rule = rule.strip()
    if rule == "finite":
        return True
    m = _CMP.match(rule)
    if m:
        op, bound = m.group(1), float(m.group(2))
        return {
            ">=": value >= bound,
            ">": value > bound,
            "<=": value <= bound,
            "<": value < bound,
            "==": value == bound,
        }[op]
    m = _INTERVAL.match(rule)
    if not m:
        raise ValueError(f"bad range rule {rule!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    above = value >= lo if m.group(1) == "[" else value > lo
    below = value <= hi if m.group(4) == "]" else value < hi
    return above and below


def ok(value, rule: str) -> bool:
    """Whether a number (not a bool) is finite and satisfies ``rule``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return False
    return any(_one(value, part) for part in rule.split(" or "))


def check(section: str, obj, **rules: str) -> None:
    """Raises ValueError naming ``section.field`` for the first field of ``obj`` whose value (or
    any element of a tuple value) breaks its rule."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        items = value if isinstance(value, tuple) else (value,)
        if not all(ok(v, rule) for v in items):
            each = " (each element)" if isinstance(value, tuple) else ""
            raise ValueError(f"{section}.{name} must be {rule}{each}, got {value!r}")


def one_of(section: str, obj, **choices) -> None:
    """Raises ValueError naming ``section.field`` for the first field of ``obj`` whose value is
    not among its choices (a collection)."""
    for name, allowed in choices.items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ValueError(f"{section}.{name} must be one of {tuple(allowed)}, got {value!r}")


def numeric_fields(cls) -> list[str]:
    """Names of a dataclass's int / float fields and tuples of them (bool excluded): what
    ``check`` should cover."""
    out = []
    for f in dataclasses.fields(cls):
        t = str(f.type)
        if t in ("int", "float") or (t.startswith("tuple[") and ("int" in t or "float" in t)):
            out.append(f.name)
    return out
