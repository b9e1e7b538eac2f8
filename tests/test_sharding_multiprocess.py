"""Multi-host helpers with two real JAX processes on this machine (jax.distributed over loopback)."""

import textwrap

import numpy as np
from multiprocess_helpers import run_processes

_WORKER = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from pirl import sharding

    port, pid = sys.argv[1], int(sys.argv[2])
    sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    # Each host owns 4 rows: host p holds values 100·p + (0..11) laid out [4, 3].
    local = {"x": (100 * pid + np.arange(12, dtype=np.float32)).reshape(4, 3)}
    batch = sharding.global_batch(mesh, local)
    col_sums = jax.jit(lambda b: jnp.sum(b["x"], axis=0), out_shardings=sharding.replicated(mesh))(batch)
    print(json.dumps({
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "global_shape": list(batch["x"].shape),
        "col_sums": np.asarray(col_sums).tolist(),
    }))
    """
)


def test_two_processes_build_one_global_batch():
    outs = run_processes(_WORKER)
    # Global batch = host 0's rows then host 1's: column j sums
    #   host 0: j + (3 + j) + (6 + j) + (9 + j) = 18 + 4j
    #   host 1: the same + 4·100 = 418 + 4j            → total 436 + 8j = [436, 444, 452].
    for out in outs:
        assert out["process_count"] == 2 and out["global_devices"] == 8
        assert out["global_shape"] == [8, 3]
        np.testing.assert_array_equal(out["col_sums"], [436.0, 444.0, 452.0])
