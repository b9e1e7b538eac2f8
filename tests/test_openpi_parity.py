"""Parity with openpi's own JAX implementation, on reference outputs that openpi produced.

Runs when PIRL_OPENPI_REF names a directory with, for each of `pi0` and `pi05`:
  <name>/ckpt/params   an openpi checkpoint of the `dummy`/`dummy` model (full So400m vision tower,
                       ~1.7 GB float32), written by openpi;
  <name>/ref.npz       an observation (3 cameras, the third masked; prompts of different lengths),
                       noise, and openpi's outputs: actions for K = 1 and K = 10, the prefix
                       embedding, the first-step velocity, and the flow loss for given noise/time.
The files are too large to ship and need openpi to produce, so the test is skipped without them.
"""

import os
import pathlib

import jax
import numpy as np
import pytest

from pirl import checkpoints
from pirl.models import pi0

REF = os.environ.get("PIRL_OPENPI_REF")
pytestmark = pytest.mark.skipif(not REF, reason="PIRL_OPENPI_REF is not set")


def _observation(ref, prefix="") -> pi0.Observation:
    keys = pi0.IMAGE_KEYS
    images = {k: ref[f"{prefix}image/{k}"] if f"{prefix}image/{k}" in ref else ref[f"image/{k}"] for k in keys}
    return pi0.Observation(
        images=images,
        image_masks={k: ref[f"image_mask/{k}"] for k in keys},
        state=ref["state"],
        tokenized_prompt=ref["tokenized_prompt"],
        tokenized_prompt_mask=ref["tokenized_prompt_mask"],
    )


@pytest.mark.parametrize("name", ["pi0", "pi05"])
def test_actions_match_openpi(name):
    root = pathlib.Path(REF) / name
    if not (root / "ref.npz").exists():
        pytest.skip(f"no reference at {root}")
    ref = dict(np.load(root / "ref.npz"))
    config, params = checkpoints.load_openpi(root / "ckpt", dtype="float32")
    assert config.pi05 == (name == "pi05")
    obs = _observation(ref)
    with jax.default_matmul_precision("highest"):
        tokens, mask, _ = pi0.embed_prefix(config, params, obs)
        np.testing.assert_allclose(tokens, ref["prefix_tokens"], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(mask, ref["prefix_mask"])
        sample = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))
        for k in (1, 10):
            got = sample(config, params, obs, ref["noise"], num_steps=k)
            np.testing.assert_allclose(got, ref[f"actions_k{k}"], atol=1e-5, rtol=0)
            masked = sample(config, params, _observation(ref, "masked_variant/"), ref["noise"], num_steps=k)
            np.testing.assert_array_equal(masked, got)
        if "loss" in ref:
            loss = pi0.flow_loss_at(config, params, obs, ref["loss_actions"], ref["loss_noise"], ref["loss_time"])
            np.testing.assert_allclose(loss, ref["loss"], atol=1e-5, rtol=1e-5)
