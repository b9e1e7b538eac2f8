"""Shared pieces of the simulator tests."""

import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class NoJax:
    """Wraps a pool factory; the worker fails to start if building the sims imported JAX."""

    inner: object

    def __call__(self, worker_index, num_envs):
        group = self.inner(worker_index, num_envs)
        if "jax" in sys.modules:
            raise RuntimeError("an env worker imported jax")
        return group


@dataclasses.dataclass(frozen=True)
class RenderEveryStep:
    """Wraps a pool factory; its groups render every step instead of deferring to the chunk end."""

    inner: object

    def __call__(self, worker_index, num_envs):
        group = self.inner(worker_index, num_envs)
        group.deferred = False
        return group


def chunk_observations(factory, pool_cfg, ids, actions, chunk: int, then_reset=None) -> list:
    """Observations of a pool of ``factory``: the reset of ``ids``, one per chunk of ``chunk``
    steps of ``actions`` [N, T, A], and a second reset of ``then_reset`` if given."""
    from pirl.envs import pool

    with pool.EnvPool(factory, pool_cfg) as p:
        out = [p.reset(ids)]
        out += [p.step_chunk(actions[:, c : c + chunk]).obs for c in range(0, actions.shape[1], chunk)]
        if then_reset is not None:
            out.append(p.reset(then_reset))
    return out


def assert_images_ok(images: dict, names, size):
    """Every camera present, (N, H, W, 3) uint8 and not a constant image."""
    assert sorted(images) == sorted(names), sorted(images)
    for name, img in images.items():
        assert img.dtype == np.uint8 and img.shape[1:] == (*size, 3), (name, img.shape)
        for i in range(len(img)):
            assert img[i].std() > 5.0, f"camera {name} env {i} renders a (nearly) constant image"
