"""π0 / π0.5 model: caching, attention masks, adaRMS identity at init, invariances, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.models import gemma, pi0

sample = jax.jit(pi0.sample_actions, static_argnames=("config", "num_steps"))


@functools.cache
def _setup(pi05: bool):
    config = pi0.Pi0Config.tiny(pi05=pi05)
    params = pi0.init_params(config, jax.random.key(0))
    # Fresh norms and adaRMS modulations are zero: perturb them so the checks exercise every weight.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )
    obs = pi0.fake_observation(config, 2, jax.random.key(2))
    # Prompts of different lengths in one batch, and a masked third camera.
    lengths = jnp.array([5, 11])
    prompt_mask = jnp.arange(config.max_token_len)[None] < lengths[:, None]
    obs = obs.replace(
        tokenized_prompt=jnp.where(prompt_mask, obs.tokenized_prompt, 0),
        tokenized_prompt_mask=prompt_mask,
        image_masks={**obs.image_masks, "right_wrist_0_rgb": jnp.zeros((2,), bool)},
    )
    return config, params, obs


def _noise(config, b=2, seed=3):
    return jax.random.normal(jax.random.key(seed), (b, config.action_horizon, config.action_dim))


@functools.partial(jax.jit, static_argnums=0)
def _velocity_full_sequence(config, params, obs, x_t, t):
    """v(x_t, t) from one pass over prefix + suffix together (no cache), as in training."""
    p_tok, p_mask, p_ar = pi0.embed_prefix(config, params, obs)
    s_tok, s_mask, s_ar, cond = pi0.embed_suffix(config, params, obs, x_t, t)
    mask = jnp.concatenate([p_mask, s_mask], axis=1)
    attn = pi0.make_attn_mask(mask, jnp.concatenate([p_ar, s_ar]))
    (_, out), _ = pi0._llm(config).apply(
        {"params": params["PaliGemma"]["llm"]},
        [p_tok, s_tok],
        jnp.cumsum(mask, axis=1) - 1,
        attn,
        conds=[None, cond],
    )
    return pi0._linear(params["action_out_proj"], out[:, -x_t.shape[1] :])


@pytest.mark.parametrize("pi05", [False, True])
def test_cached_sampling_equals_full_recompute(pi05):
    config, params, obs = _setup(pi05)
    noise = _noise(config)
    k = 4
    got = sample(config, params, obs, noise, num_steps=k)
    # Independent Euler loop: every step re-runs the whole sequence, time stepped the same way.
    x, t, dt = noise, jnp.float32(1.0), -1.0 / k
    for _ in range(k):
        x = x + dt * _velocity_full_sequence(config, params, obs, x, jnp.full((2,), t))
        t = t + dt
    np.testing.assert_allclose(got, x, atol=1e-5, rtol=1e-5)


def test_attention_mask_rules_token_by_token():
    # π0 layout: 3 prefix tokens (last one padding), then state, then 2 action tokens.
    input_mask = jnp.array([[1, 1, 0, 1, 1, 1]], bool)
    ar = jnp.array([0, 0, 0, 1, 1, 0], bool)
    got = np.asarray(pi0.make_attn_mask(input_mask, ar)[0]).astype(int)
    # Rows are queries, columns keys. Prefix sees prefix only; state sees prefix + itself; action
    # tokens see prefix, state and each other; the padding token sees and is seen by nothing.
    expected = np.array(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 1, 1, 1],
            [1, 1, 0, 1, 1, 1],
        ]
    )
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("pi05", [False, True])
def test_suffix_ar_masks_and_lengths(pi05):
    config, params, obs = _setup(pi05)
    tokens, _, ar, cond = pi0.embed_suffix(config, params, obs, _noise(config), jnp.ones(2))
    ha = config.action_horizon
    expected = [True] + [False] * (ha - 1) if pi05 else [True, True] + [False] * (ha - 1)
    assert ar.tolist() == expected
    assert tokens.shape == (2, len(expected), config.action_expert.width)
    assert (cond is not None) == pi05


@pytest.mark.parametrize("pi05", [False, True])
def test_prefix_is_blind_to_suffix_and_to_masked_inputs(pi05):
    config, params, obs = _setup(pi05)
    noise = _noise(config)
    base = sample(config, params, obs, noise, num_steps=2)
    # Pixels of a masked camera and prompt ids under the padding mask must change nothing.
    images = {**obs.images, "right_wrist_0_rgb": -obs.images["right_wrist_0_rgb"] + 0.3}
    prompt = jnp.where(obs.tokenized_prompt_mask, obs.tokenized_prompt, 7)
    changed = obs.replace(images=images, tokenized_prompt=prompt)
    np.testing.assert_array_equal(sample(config, params, changed, noise, num_steps=2), base)
    # Changing a visible camera must change the actions (the check above can fail).
    seen = obs.replace(images={**obs.images, "base_0_rgb": -obs.images["base_0_rgb"]})
    assert not np.allclose(sample(config, params, seen, noise, num_steps=2), base)


@pytest.mark.parametrize("pi05", [False, True])
def test_batch_elements_are_independent(pi05):
    config, params, obs = _setup(pi05)
    noise = _noise(config)
    both = sample(config, params, obs, noise, num_steps=2)
    for i in range(2):
        one = jax.tree.map(lambda x, i=i: x[i : i + 1], obs)
        np.testing.assert_allclose(
            sample(config, params, one, noise[i : i + 1], num_steps=2), both[i : i + 1], atol=1e-5
        )


@functools.partial(jax.jit, static_argnums=0)
def _expert_outputs(config, params, obs, x_t, t):
    return pi0.expert_pass(config, params, obs, pi0.prefix_pass(config, params, obs), x_t, t)


def test_adarms_expert_blocks_are_identity_at_init():
    config = pi0.Pi0Config.tiny(pi05=True)
    params = pi0.init_params(config, jax.random.key(0))
    obs = pi0.fake_observation(config, 2, jax.random.key(1))
    x_t = _noise(config)
    t = jnp.full((2,), 0.7)
    _, action_out = _expert_outputs(config, params, obs, x_t, t)
    # Gates are 0 at init, so the residual stream leaves every block unchanged and the final
    # (adaptive, zero-modulated) norm is a plain RMSNorm of the input tokens.
    x = pi0._linear(params["action_in_proj"], x_t)
    expected = x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(action_out, expected, atol=1e-6, rtol=1e-6)
    # The π0 expert (plain RMSNorm, no gates) is not the identity: the check can fail.
    c0 = pi0.Pi0Config.tiny(pi05=False)
    p0 = pi0.init_params(c0, jax.random.key(0))
    _, out0 = _expert_outputs(c0, p0, obs, x_t, t)
    assert not np.allclose(out0[:, :], expected, atol=1e-3)


def test_remat_changes_nothing():
    config, params, obs = _setup(False)
    actions = 0.3 * _noise(config, seed=5)
    rng = jax.random.key(4)

    def loss(cfg, p):
        return pi0.flow_loss(cfg, p, obs, actions, rng).mean()

    remat = pi0.Pi0Config.tiny(remat=True)
    v0, g0 = jax.jit(jax.value_and_grad(functools.partial(loss, config)))(params)
    v1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, remat)))(params)
    np.testing.assert_allclose(v0, v1, rtol=1e-6)
    # Recomputation may reassociate float sums: agree to float32 rounding of the largest gradient
    # (some leaves, e.g. biases before a LayerNorm, have an exact gradient of 0 and carry only noise).
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_bfloat16_matches_float32_loosely():
    config, params, obs = _setup(False)
    noise = _noise(config)
    f32 = sample(config, params, obs, noise, num_steps=3)
    bf16 = sample(pi0.Pi0Config.tiny(dtype="bfloat16"), params, obs, noise, num_steps=3)
    assert bf16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(bf16 - f32)) / jnp.max(jnp.abs(f32)))
    assert 0 < err < 0.05


def test_lora_branch_equals_explicit_low_rank_update():
    cfg = gemma.get_gemma_config("tiny_lora")
    x = jax.random.normal(jax.random.key(0), (2, 3, cfg.width))
    module = gemma.Einsum((cfg.num_heads, cfg.width, cfg.head_dim), jax.nn.initializers.normal(1.0), 2, 0.5)
    p = module.init(jax.random.key(1), "BTD,NDH->BTNH", x)["params"]
    assert p["lora_a"].shape == (cfg.num_heads, cfg.width, 2) and p["lora_b"].shape == (cfg.num_heads, 2, cfg.head_dim)
    got = module.apply({"params": p}, "BTD,NDH->BTNH", x)
    # W' = W + 0.5 · A·B per head.
    w = p["w"] + 0.5 * jnp.einsum("ndr,nrh->ndh", p["lora_a"], p["lora_b"])
    np.testing.assert_allclose(got, jnp.einsum("btd,ndh->btnh", x, w), rtol=1e-5, atol=1e-6)


def test_openpi_lora_variants_have_openpi_ranks():
    assert gemma.get_gemma_config("gemma_2b_lora").lora_rank == 16
    assert gemma.get_gemma_config("gemma_300m_lora").lora_rank == 32
    shapes = pi0.param_shapes(pi0.Pi0Config(action_expert_variant="gemma_300m_lora"))
    mlp = shapes["PaliGemma"]["llm"]["layers"]["mlp_1"]
    assert mlp["gating_einsum_lora_a"].shape == (18, 2, 1024, 32)
    assert mlp["linear_lora_b"].shape == (18, 32, 1024)
    assert "lora_a" not in shapes["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum"]


def test_bad_observation_errors_name_the_problem():
    config, params, obs = _setup(False)
    missing = obs.replace(images={k: v for k, v in obs.images.items() if k != "left_wrist_0_rgb"})
    with pytest.raises(KeyError, match="left_wrist_0_rgb"):
        pi0.prefix_pass(config, params, missing)
    wrong = obs.replace(images={**obs.images, "base_0_rgb": jnp.zeros((2, 32, 32, 3))})
    with pytest.raises(ValueError, match=r"base_0_rgb.*32, 32, 3"):
        pi0.prefix_pass(config, params, wrong)
    with pytest.raises(ValueError, match="unknown Gemma variant 'gemma_7b'"):
        pi0.Pi0Config(paligemma_variant="gemma_7b")


def test_dropping_a_masked_camera_changes_nothing():
    # Masked tokens take no position and are never attended to, so a config without the camera
    # gives the same actions as one that carries it masked (and skips its SigLIP pass).
    config, params, obs = _setup(False)
    two = pi0.Pi0Config.tiny(image_keys=pi0.IMAGE_KEYS[:2])
    obs2 = obs.replace(
        images={k: obs.images[k] for k in two.image_keys}, image_masks={k: obs.image_masks[k] for k in two.image_keys}
    )
    noise = _noise(config)
    np.testing.assert_allclose(
        sample(two, params, obs2, noise, num_steps=2), sample(config, params, obs, noise, num_steps=2), atol=1e-5
    )


def test_vision_passes_per_camera_equal_one_joint_pass(monkeypatch):
    # Above pi0._JOINT_VISION_TOKENS the tower runs once per camera instead of once over all of
    # them; each image is embedded independently, so the prefix must not change.
    config, params, obs = _setup(False)
    assert 3 * 2 * config.tokens_per_image < pi0._JOINT_VISION_TOKENS  # this batch: one joint pass
    joint = pi0.embed_prefix(config, params, obs)
    monkeypatch.setattr(pi0, "_JOINT_VISION_TOKENS", 1)
    per_camera = pi0.embed_prefix(config, params, obs)
    np.testing.assert_allclose(per_camera[0], joint[0], atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(per_camera[1], joint[1])
