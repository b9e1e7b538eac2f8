"""The loop structure of a compiled XLA program, read from its optimized HLO text
(``compiled.as_text()``), and what it says about a π0 sampler.

A sampler that reuses the prefix KV cache runs SigLIP and the VLM once, then the K expert steps
as one while loop (``lax.scan``) whose body holds the expert's layer loop and nothing of the
prefix: no convolution (SigLIP's patch embedding) and no second layer stack. XLA records the trip
count of a counted loop in the while instruction's backend config (``"known_trip_count":{"n":…}``)
on CPU and GPU alike; a convolution appears as ``convolution(`` or, on GPU, as a cuDNN custom call.
"""

from __future__ import annotations

import dataclasses
import re

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_WHILE = re.compile(r"\swhile\(.*?body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


@dataclasses.dataclass
class Loop:
    """One while loop: its known trip count (None if XLA did not record one), the convolutions in
    its body (its nested loops' bodies included), and the loops directly nested in it."""

    trip_count: int | None
    convolutions: int
    nested: list[Loop]

    def describe(self) -> str:
        inner = ", ".join(x.describe() for x in self.nested)
        n = "?" if self.trip_count is None else str(self.trip_count)
        return f"{n}" + (f"[{inner}]" if inner else "")


def _is_convolution(line: str) -> bool:
    return " convolution(" in line or ("custom-call(" in line and "conv" in line.split("custom_call_target=")[-1][:40])


def parse(text: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines} and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
        elif line.startswith("}"):
            current = None
        else:
            comps[current].append(line)
    return comps, entry


def _called(line: str) -> list[str]:
    names = _CALLED.findall(line)
    for group in _CALLED_LISTS.findall(line):
        names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    return names


def _walk(comps: dict[str, list[str]], name: str, seen: set[str]) -> tuple[int, list[Loop]]:
    """(convolutions, loops) reachable from a computation without entering another loop's body
    for the loop list; convolutions count through nested loops too."""
    convs, loops = 0, []
    if name in seen or name not in comps:
        return 0, []
    seen.add(name)
    for line in comps[name]:
        if _is_convolution(line):
            convs += 1
        w = _WHILE.search(line)
        if w:
            trip = _TRIP.search(line)
            body_convs, nested = _walk(comps, w.group(1), set())
            loops.append(Loop(int(trip.group(1)) if trip else None, body_convs, nested))
            convs += body_convs
            continue
        for callee in _called(line):
            c, inner = _walk(comps, callee, seen)
            convs += c
            loops += inner
    return convs, loops


def top_loops(text: str) -> tuple[int, list[Loop]]:
    """(convolutions in the whole program, the loops not nested in another loop)."""
    comps, entry = parse(text)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text (pass compiled.as_text())")
    return _walk(comps, entry, set())


def sampler_structure(text: str, num_steps: int) -> dict:
    """What the compiled sampler's HLO shows:

    k_loop: a top-level while loop with trip count K exists (the K expert steps in one loop);
    kv_reused: that loop holds no convolution and at most one nested loop (one layer stack: the
      expert against the cached prefix, not SigLIP or the VLM again);
    loops: every top-level loop as "trip[nested, ...]", e.g. "27, 18, 10[18]";
    convolutions: in the whole program (SigLIP's patch embedding runs once outside the K loop).
    """
    convs, loops = top_loops(text)
    k = [x for x in loops if x.trip_count == num_steps]
    return {
        "k_loop": bool(k),
        "kv_reused": bool(k) and any(x.convolutions == 0 and len(x.nested) <= 1 for x in k),
        "loops": ", ".join(x.describe() for x in loops),
        "convolutions": convs,
    }
