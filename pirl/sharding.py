"""Device mesh and sharding rules."""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def activation_sharding_constraint(tree):
    """Shards the leading (batch) axis of every activation in `tree` over the mesh's batch axes.

    A no-op unless a mesh with those axes is in context (`jax.sharding.use_mesh`), so model code can
    call it unconditionally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P(BATCH_AXES)), tree)
