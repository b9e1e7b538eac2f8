"""openpi's own JAX π0 beside pirl's, on the same parameters, observation and noise.

openpi is not a dependency of pirl: it is imported only from the checkout given on the command line
(`python -m pirl.bench.sample --openpi=<checkout>`), in an environment that has its model
dependencies (einops, augmax, beartype, transformers, jaxtyping as openpi pins them).
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

from pirl.models import gemma, pi0, siglip


def _import_openpi(checkout: str):
    src = pathlib.Path(checkout) / "src"
    if not (src / "openpi" / "models" / "pi0.py").exists():
        raise FileNotFoundError(f"no openpi checkout at {checkout} (expected src/openpi/models/pi0.py)")
    sys.path.insert(0, str(src))
    # Late, from the given path only: openpi stays out of pirl's dependencies.
    from openpi.models import model as openpi_model
    from openpi.models import pi0_config as openpi_config
    from openpi.shared import array_typing as openpi_typing

    return openpi_model, openpi_config, openpi_typing


def build(checkout: str, config: pi0.Pi0Config, rng: jax.Array):
    """openpi's model for `config`: returns (params in pirl's tree, sample(params, obs, noise) -> actions).

    `config` must be one openpi can build: Gemma variants by name, the So400m/14 tower at 224².
    """
    model_mod, config_mod, typing_mod = _import_openpi(checkout)
    names = (gemma.variant_name(config.paligemma), gemma.variant_name(config.action_expert))
    if not all(isinstance(n, str) for n in names) or siglip.variant_name(config.vision) != "So400m/14":
        raise ValueError(f"openpi builds named Gemma variants with the So400m/14 tower only, not {config}")
    if config.image_size != 224:
        raise ValueError(f"openpi's model takes 224x224 images, the config has {config.image_size}")
    # openpi's shape checks do not know this jax's array class; the inputs are checked by pirl.
    typing_mod.disable_typechecking().__enter__()
    ocfg = config_mod.Pi0Config(
        pi05=config.pi05,
        paligemma_variant=names[0],
        action_expert_variant=names[1],
        dtype=config.dtype,
        action_horizon=config.action_horizon,
        max_token_len=config.max_token_len,
    )
    # Late: flax.nnx is used only by openpi's model.
    from flax import nnx

    graphdef, state = nnx.split(ocfg.create(rng))
    params = state.to_pure_dict()
    expected = jax.tree.structure(pi0.param_shapes(config))
    if jax.tree.structure(params) != expected:
        raise ValueError("openpi's parameter tree differs from pirl's for this config")

    # Both trees flatten in the same (sorted-key) order, so pirl's leaves rebuild openpi's state.
    treedef = jax.tree.structure(state)
    if any(a is not b for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(params), strict=True)):
        raise ValueError("openpi's state and its pure-dict form flatten in different orders")

    def sample(params: dict, obs: pi0.Observation, noise: jax.Array, num_steps: int) -> jax.Array:
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.tree.leaves(params)))
        o = model_mod.Observation(
            images=obs.images,
            image_masks=obs.image_masks,
            state=obs.state,
            tokenized_prompt=obs.tokenized_prompt,
            tokenized_prompt_mask=obs.tokenized_prompt_mask,
        )
        return model.sample_actions(jax.random.key(0), o, num_steps=num_steps, noise=noise)

    return params, sample


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
