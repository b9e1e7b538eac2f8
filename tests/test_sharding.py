"""Mesh construction, the FSDP rule, batch sharding and activation constraints on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pirl import sharding


def test_make_mesh_shapes_and_errors():
    m = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    assert dict(m.shape) == {"data": 2, "fsdp": 4}
    assert dict(sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=4)).shape) == {"data": 2, "fsdp": 4}
    assert dict(sharding.make_mesh(sharding.MeshConfig()).shape) == {"data": 8, "fsdp": 1}
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh(sharding.MeshConfig(data=3, fsdp=2))


def test_fsdp_rule():
    mib = 2**20
    # 8 MiB, axes (8, 1024, 256): the largest axis 1024 divides by 4 → sharded there.
    assert sharding.fsdp_spec((8, 1024, 256), 8 * mib, 4) == P(None, "fsdp", None)
    # Largest axis 1023 does not divide by 4: the next largest (256) is taken.
    assert sharding.fsdp_spec((8, 1023, 256), 8 * mib, 4) == P(None, None, "fsdp")
    # Ties go to the first axis.
    assert sharding.fsdp_spec((2048, 2048), 16 * mib, 4) == P("fsdp", None)
    # Below 4 MiB, without a divisible axis, or with fsdp size 1: replicated.
    assert sharding.fsdp_spec((1024, 1023), 4 * mib - 4, 4) == P()
    assert sharding.fsdp_spec((1023, 1025), 4 * mib + 4, 4) == P()
    assert sharding.fsdp_spec((4096, 4096), 64 * mib, 1) == P()


def test_param_shardings_tree():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    tree = {
        "big": jax.ShapeDtypeStruct((1024, 1024), jnp.float32),  # 4 MiB exactly → sharded
        "small": jax.ShapeDtypeStruct((1024,), jnp.float32),
        "bf16": jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16),
    }  # 2 MiB → replicated
    sh = sharding.param_shardings(mesh, tree)
    assert sh["big"].spec == P("fsdp", None)
    assert sh["small"].spec == P()
    assert sh["bf16"].spec == P()
    assert sharding.param_shardings(mesh, tree, min_bytes=0)["bf16"].spec == P("fsdp", None)


def test_global_batch_and_activation_constraint():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = sharding.global_batch(mesh, {"x": x})["x"]
    assert g.sharding.spec == P(("data", "fsdp"))
    assert len(g.addressable_shards) == 8 and g.addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(g), x)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        sharding.global_batch(mesh, {"x": x[:6]})

    f = jax.jit(lambda a: sharding.activation_sharding_constraint(a * 2.0))
    # Without a mesh the constraint is a no-op; with one the output is split over the batch axes.
    np.testing.assert_array_equal(f(x), 2 * x)
    with jax.set_mesh(mesh):
        y = f(jnp.asarray(x))
    assert y.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(y), 2 * x)
