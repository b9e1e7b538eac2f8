"""Test-wide setup: CPU only, 8 fake host devices so mesh and sharding code runs on a laptop; tests
marked ``libero_assets`` skip, with the reason, where LIBERO's scene assets are not found."""

import os
import signal

import pytest

# Must happen before jax is imported anywhere.
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = f"{_flags} --xla_force_host_platform_device_count=8".strip()
# Tests are dominated by XLA compile time, which LLVM's optimizer triples on CPU; the tiny models run
# fast enough unoptimized.
if "xla_backend_optimization_level" not in _flags:
    _flags = f"{_flags} --xla_backend_optimization_level=0".strip()
os.environ["XLA_FLAGS"] = _flags

# The Ctrl-C tests need Python's own SIGINT handler here and in the runs they start (exec resets a
# handler to the default, but an ignored signal stays ignored): a shell starts background jobs,
# and some CI runners their steps, with SIGINT ignored.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def module_compile_cache(tmp_path_factory):
    """One persistent XLA cache for a module whose runs compile the same programs: each compiles once."""
    import jax  # after the flags above

    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


def pytest_runtest_setup(item):
    if item.get_closest_marker("libero_assets") is not None:
        from pirl.envs import libero  # numpy only: no JAX before the flags above matter

        try:
            libero.find_assets()
        except FileNotFoundError as e:
            pytest.skip(str(e))
