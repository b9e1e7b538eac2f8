"""Flow-SDE / Flow-Noise steps of the tiny π0: densities, sampling moments, re-scoring cost.

Every model-driven check recomputes the velocity with an independent `pi0.expert_pass` call and
the density with scipy in float64, so the only thing shared with the code under test is the model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pirl.models import pi0
from pirl.rl import critic, flow

B, K, A_NOISE = 32, 4, 0.5
MODEL = pi0.Pi0Config.tiny()
C, E = 3, 5  # executed chunk and env action dims: a strict corner of the 8 × 32 model action


def _policy(**kw):
    base = dict(num_steps=K, noise_level=A_NOISE, num_action_chunks=C, action_env_dim=E, value_hidden=(16, 8))
    return flow.FlowPolicyConfig(**{**base, **kw})


SDE = _policy(noise_method="sde", logprob_type="token_level")
NOISE = _policy(noise_method="noise", joint_logprob=True, logprob_type="token_level")


@functools.cache
def _setup(policy):
    params = {"model": pi0.init_params(MODEL, jax.random.key(0))}
    params |= flow.init_heads(policy, MODEL, jax.random.key(1))
    obs = pi0.fake_observation(MODEL, B, jax.random.key(2))
    return params, obs, jax.jit(functools.partial(flow.sample, policy, MODEL))


@jax.jit
def _velocity(model_params, obs, x, t):
    return pi0.expert_pass(MODEL, model_params, obs, pi0.prefix_pass(MODEL, model_params, obs), x, t)


def test_sde_sigma_schedule_reference_example():
    # K = 4, a = 0.5, t = [1, 0.75, 0.5, 0.25]:
    #   σ0 = 0.5·√(1/(1 − t1)) = 0.5·√4 = 1.0 (the t = 1 rule)
    #   σ1 = 0.5·√(0.75/0.25) = 0.5·√3 = 0.8660;  σ2 = 0.5·√1 = 0.5;  σ3 = 0.5·√(1/3) = 0.2887
    #   std = √Δ·σ = 0.5·σ = [0.5, 0.433, 0.25, 0.144]
    sig = flow.sde_sigmas(4, 0.5)
    np.testing.assert_allclose(sig, [1.0, 0.866025, 0.5, 0.288675], rtol=1e-5)
    np.testing.assert_allclose(0.5 * sig, [0.5, 0.433013, 0.25, 0.144338], rtol=1e-5)


def test_step_mean_std_hand_worked():
    # x = 1, v = 2, K = 4, k = 1: t = 0.75, s = 0.5, Δ = 0.25, σ² = 0.75.
    #   x̂0 = 1 − 0.75·2 = −0.5;  x̂1 = 1 + 0.25·2 = 1.5
    #   ODE: 0.5·(−0.5) + 0.5·1.5 = 0.5 (= x − Δ·v)
    #   SDE: 0.5·(−0.5) + (0.5 − 0.75·0.25/(2·0.75))·1.5 = −0.25 + 0.375·1.5 = 0.3125; std 0.5·0.8660
    x, v, k = jnp.ones((2, 1, 1)), 2 * jnp.ones((2, 1, 1)), jnp.array([1, 1])
    mean, std = flow.step_mean_std(_policy(), x, v, k, jnp.array([True, False]))
    np.testing.assert_allclose(mean[:, 0, 0], [0.3125, 0.5], rtol=1e-6)
    np.testing.assert_allclose(std[:, 0, 0], [0.5 * np.sqrt(0.75), 0.0], rtol=1e-6)


def _np_sde_mean_std(x, v, k):
    """Flow-SDE step in float64 numpy, straight from the formulas."""
    dt = 1.0 / K
    t = (1.0 - k / K)[:, None, None]
    s = t - dt
    sigma = A_NOISE * np.sqrt(t / np.where(t == 1.0, dt, 1.0 - t))
    x0h, x1h = x - t * v, x + (1.0 - t) * v
    return (1 - s) * x0h + (s - sigma**2 * dt / (2 * t)) * x1h, np.sqrt(dt) * sigma * np.ones_like(x)


def _sde_draw(seed):
    params, obs, sample = _setup(SDE)
    out = sample(params, obs, jax.random.key(seed))
    tr = out.transitions
    k = np.asarray(tr.k)
    t = jnp.asarray(1.0 - k / K, jnp.float32)
    v, _ = _velocity(params["model"], obs, tr.chain[:, 0], t)
    x, x_next = (np.asarray(tr.chain[:, i], np.float64) for i in (0, 1))
    mean, std = _np_sde_mean_std(x, np.asarray(v, np.float64), k)
    return out, x_next, mean, std, k


def test_sde_transition_logprob_matches_scipy_elementwise():
    out, x_next, mean, std, k = _sde_draw(seed=3)
    assert np.all(k == k[0]), "one k* per sampling call"
    ref = stats.norm.logpdf(x_next, mean, std)[:, :C, :E]
    assert out.logp.shape == (B, C, E)
    np.testing.assert_allclose(np.asarray(out.logp), ref, rtol=1e-5, atol=1e-4)
    # The chunk-level reduction is the sum over exactly that corner.
    chunk = flow.reduce_logp(_policy(logprob_type="chunk_level"), jnp.asarray(stats.norm.logpdf(x_next, mean, std)))
    np.testing.assert_allclose(chunk, ref.sum(axis=(1, 2)), rtol=1e-5)
    # Re-scoring the stored transition gives the stored log-prob. The two are separately compiled
    # programs, so XLA may order float ops differently: equal to float32 rounding. (The values
    # differ by design: tests/test_rl_options.py checks both.)
    params, obs, _ = _setup(SDE)
    lp, ent, _ = jax.jit(functools.partial(flow.score, SDE, MODEL))(params, obs, out.transitions)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(out.logp), rtol=1e-6, atol=2e-6)
    # Gaussian entropy ½·log(2πe·std²) of the one stochastic step.
    np.testing.assert_allclose(ent, 0.5 * np.log(2 * np.pi * np.e * std[:, 0, 0] ** 2), rtol=1e-5)


def test_sde_monte_carlo_moments_per_step():
    # Over all B × H × A elements the residual x_{k*+1} − mean_k has mean 0 and std √Δ·σ_k; the
    # reference example's std = [0.5, 0.433, 0.25, 0.144] for k = 0..3.
    expected = {0: 0.5, 1: 0.433013, 2: 0.25, 3: 0.144338}
    seen = {}
    for seed in range(100, 160):
        _, x_next, mean, std, k = _sde_draw(seed)
        if int(k[0]) in seen:
            continue
        resid = x_next - mean
        n = resid.size
        seen[int(k[0])] = (resid.mean(), resid.std(), std[0, 0, 0], n)
        if len(seen) == K:
            break
    assert sorted(seen) == [0, 1, 2, 3]
    for kk, (m, s, formula_std, n) in seen.items():
        np.testing.assert_allclose(formula_std, expected[kk], rtol=1e-5)
        # std of a sample std ≈ σ/√(2n) ≈ 0.8 % here; mean within 4 standard errors.
        np.testing.assert_allclose(s, expected[kk], rtol=0.04)
        assert abs(m) < 4 * expected[kk] / np.sqrt(n)


def test_flow_noise_joint_logprob_matches_scipy_and_moments():
    params, obs, sample = _setup(NOISE)
    out = sample(params, obs, jax.random.key(5))
    chain = np.asarray(out.transitions.chain, np.float64)
    assert chain.shape == (B, K + 1, MODEL.action_horizon, MODEL.action_dim)
    terms = [stats.norm.logpdf(chain[:, 0])]  # prior N(0, I) of x_0
    z_all = []
    for k in range(K):
        t = jnp.full((B,), 1.0 - k / K, jnp.float32)
        v, action_out = _velocity(params["model"], obs, out.transitions.chain[:, k], t)
        std = np.asarray(critic.noise_std(params["noise_head"], MODEL.action_dim, action_out, (0.08, 0.16)), np.float64)
        assert std.min() >= 0.08 - 1e-6 and std.max() <= 0.16 + 1e-6
        mean = chain[:, k] - np.asarray(v, np.float64) / K  # ODE mean x − Δ·v
        terms.append(stats.norm.logpdf(chain[:, k + 1], mean, std))
        z_all.append((chain[:, k + 1] - mean) / std)
    ref = np.mean(terms, axis=0)[:, :C, :E]  # mean over the K + 1 terms, executed corner
    np.testing.assert_allclose(np.asarray(out.logp), ref, rtol=1e-5, atol=1e-4)
    z = np.concatenate([zz.ravel() for zz in z_all])  # 4·32·8·32 standardized residuals
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    np.testing.assert_allclose(z.std(), 1.0, rtol=0.03)
    lp, _, _ = jax.jit(functools.partial(flow.score, NOISE, MODEL))(params, obs, out.transitions)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(out.logp), rtol=1e-6, atol=2e-6)


def test_eval_mode_is_the_deterministic_euler_ode():
    # Evaluation: every step x ← x − Δ·v(x, t) from the same x_0, t = 1, 0.75, 0.5, 0.25.
    params, obs, _ = _setup(SDE)
    out = jax.jit(functools.partial(flow.sample, SDE, MODEL, train=False))(params, obs, jax.random.key(9))
    x = out.transitions.chain[:, 0]
    for k in range(K):
        v, _ = _velocity(params["model"], obs, x, jnp.full((B,), 1.0 - k / K, jnp.float32))
        x = x - v / K
    np.testing.assert_allclose(out.actions, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", [SDE, NOISE], ids=["one_step_sde", "joint_noise"])
def test_rescoring_cost(policy, monkeypatch):
    # One-step: exactly one prefix and one expert pass, no loop. Joint: the expert is traced once
    # inside a scan of length K.
    params, obs, sample = _setup(policy)
    trans = jax.eval_shape(sample, params, obs, jax.random.key(0)).transitions
    calls = {"prefix": 0, "expert": 0}

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(flow.pi0, "prefix_pass", counted("prefix", pi0.prefix_pass))
    monkeypatch.setattr(flow.pi0, "expert_pass", counted("expert", pi0.expert_pass))
    jaxpr = jax.make_jaxpr(functools.partial(flow.score, policy, MODEL, prefix_grad=False))(params, obs, trans)
    assert calls == {"prefix": 1, "expert": 1}
    # Top-level scans are the model's layer stacks (lengths 1 and 2 here) and the denoising loop.
    lengths = [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert lengths.count(K) == (1 if policy.joint_logprob else 0)


def test_vlm_value_is_mlp_of_mean_prefix_output_over_images_and_all_prompt_slots():
    # π0.5-style critic, the reference's value_vlm_mode "mean_token" (RLinf openpi_action_model.py,
    # get_value_from_vlm): the mean VLM output over the image tokens of the cameras in use and ALL
    # prompt slots, padded ones included; an absent camera's tokens are left out.
    policy = _policy(value_source="vlm", value_hidden=(16, 8))
    params = {"model": pi0.init_params(MODEL, jax.random.key(0))} | flow.init_heads(policy, MODEL, jax.random.key(1))
    obs = pi0.fake_observation(MODEL, B, jax.random.key(2))
    obs = obs.replace(tokenized_prompt_mask=obs.tokenized_prompt_mask.at[:, 5:].set(False))  # padded prompts
    absent = MODEL.image_keys[-1]
    obs = obs.replace(image_masks={**obs.image_masks, absent: jnp.zeros((B,), bool)})
    out = jax.jit(functools.partial(flow.sample, policy, MODEL))(params, obs, jax.random.key(3))
    prefix = jax.jit(functools.partial(pi0.prefix_pass, MODEL))(params["model"], obs)
    n_prompt = obs.tokenized_prompt.shape[1]
    per_image = (prefix.out.shape[1] - n_prompt) // len(MODEL.image_keys)
    mask = np.concatenate(
        [np.repeat(np.asarray(obs.image_masks[k])[:, None], per_image, axis=1) for k in MODEL.image_keys]
        + [np.ones((B, n_prompt), bool)],
        axis=1,
    )
    assert not mask[:, -n_prompt - per_image : -n_prompt].any() and mask[:, -n_prompt:].all()
    assert not np.asarray(prefix.mask)[:, -n_prompt:].all()  # padded prompt slots, counted anyway
    head = jax.tree.map(lambda x: np.asarray(x, np.float64), params["value_head"])

    def value(m):
        h = (np.asarray(prefix.out, np.float64) * m[..., None]).sum(1) / m.sum(1, keepdims=True)
        for name in ("dense_0", "dense_1"):
            h = np.maximum(h @ head[name]["kernel"] + head[name]["bias"], 0.0)
        return (h @ head["out"]["kernel"] + head["out"]["bias"])[:, 0]

    ref = value(mask)
    np.testing.assert_allclose(np.asarray(out.value), ref, rtol=1e-4, atol=1e-6)
    # Pooling the valid tokens only would give values far outside that tolerance.
    assert np.min(np.abs(value(np.asarray(prefix.mask)) - ref)) > 1e-4
    # The last layer starts from N(0, 0.02²) with a zero bias: values start near 0.
    assert abs(float(np.std(head["out"]["kernel"])) - 0.02) < 0.01 and not head["out"]["bias"].any()


def test_value_head_init_is_the_references():
    # RLinf rlinf/models/embodiment/modules/value_head.py, ValueHead._init_weights: hidden layers
    # kaiming_normal_(mode="fan_out", nonlinearity="relu") = N(0, 2 / width), untruncated, zero
    # biases; the last layer N(0, 0.02²) with a zero bias. π0.5 LIBERO's sizes on a 2048-wide VLM.
    head = jax.tree.map(np.asarray, critic.init_value_head(jax.random.key(0), 2048, (1024, 512, 256)))
    for i, width in enumerate((1024, 512, 256)):
        w = head[f"dense_{i}"]["kernel"]
        std = np.sqrt(2.0 / width)
        assert abs(w.std() / std - 1.0) < 0.02, (i, w.std(), std)
        assert np.abs(w).max() > 3.5 * std  # not truncated at 2σ
        assert not head[f"dense_{i}"]["bias"].any()
    assert abs(head["out"]["kernel"].std() / 0.02 - 1.0) < 0.15 and not head["out"]["bias"].any()
