"""Matrix FLOPs of a JAX program, counted from its jaxpr with every loop body times its trip count.

XLA's cost analysis (``compiled.cost_analysis()["flops"]``) counts the body of a while loop once,
whatever its trip count: a π0 sampler, whose SigLIP and Gemma layers and K denoising steps are
all ``lax.scan`` loops, would be undercounted by the product of those trip counts. This module
walks the jaxpr instead:

  dot_general            2 · (elements of lhs) · (rhs dims that are neither contracted nor batch)
  conv_general_dilated   2 · (elements of the output) · (kernel elements per output feature)
  scan                   length · body
  cond                   the costliest branch
  while                  the body once (its trip count is a run-time value); reported in ``loops``
  anything holding a sub-jaxpr (pjit, remat, custom_jvp/vjp, ...)   its sub-jaxpr once

Only matrix products and convolutions count (what the matrix units execute); elementwise work,
softmax and norms are left out, as in the usual model-FLOPs accounting. For a program without
loops the count equals XLA's ``flops`` for its dots and convolutions (tests/test_bench_device.py).
"""

from __future__ import annotations

import dataclasses
import math

import jax


@dataclasses.dataclass
class Count:
    """flops: matrix FLOPs; loops: while loops whose body was counted once (unknown trip count)."""

    flops: float = 0.0
    loops: int = 0


def _sub_jaxprs(params: dict):
    for v in params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if hasattr(x, "eqns"):
                yield x
            elif hasattr(x, "jaxpr") and hasattr(x.jaxpr, "eqns"):
                yield x.jaxpr


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rc), (_, rb) = eqn.params["dimension_numbers"]
    free = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in rb)
    return 2.0 * math.prod(lhs) * free


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return 2.0 * math.prod(out) * math.prod(rhs) / rhs[out_feature_dim]


def jaxpr_flops(jaxpr) -> Count:
    """Count of a (closed or open) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Count()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total.flops += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total.flops += _conv_flops(eqn)
        elif name == "scan":
            body = jaxpr_flops(eqn.params["jaxpr"])
            total.flops += eqn.params["length"] * body.flops
            total.loops += body.loops
        elif name == "cond":
            branches = [jaxpr_flops(b) for b in eqn.params["branches"]]
            worst = max(branches, key=lambda c: c.flops)
            total.flops += worst.flops
            total.loops += worst.loops
        else:
            if name == "while":
                total.loops += 1
            for sub in _sub_jaxprs(eqn.params):
                c = jaxpr_flops(sub)
                total.flops += c.flops
                total.loops += c.loops
    return total


def count(fn, *args, **kwargs) -> Count:
    """Traces ``fn(*args, **kwargs)`` (arrays or ShapeDtypeStructs; nothing runs) and counts it. A
    ``jax.jit``-wrapped ``fn`` is traced with its static arguments."""
    if hasattr(fn, "trace"):
        return jaxpr_flops(fn.trace(*args, **kwargs).jaxpr)
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
