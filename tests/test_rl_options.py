"""Policy options of the tiny π0: ignore_last, log-prob reduction levels, the entropy term of the
PPO loss, and the executed-chunk critic input.

Model-dependent expectations are recomputed from an independent `pi0.expert_pass` call with the
heads evaluated in float64 numpy, so only the model itself is shared with the code under test.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.models import pi0
from pirl.rl import flow
from pirl.rl import update as upd

B, K = 8, 4
MODEL = pi0.Pi0Config.tiny()
H, A = MODEL.action_horizon, MODEL.action_dim  # 8 × 32
C, E = 3, 5  # executed chunk and env action dims: a strict corner of the model action
LO, HI = 0.08, 0.16  # Flow-Noise std bounds


def _policy(**kw):
    base = dict(num_steps=K, noise_level=0.5, num_action_chunks=C, action_env_dim=E, value_hidden=(16, 8))
    return flow.FlowPolicyConfig(**{**base, **kw})


# One-step SDE with per-element log-probs and the critic on the executed chunk only; its sampler
# and scorer are compiled once and shared by the reduction and critic tests.
TOKEN = _policy(logprob_type="token_level", chunk_critic_input=True)
NOISE = _policy(noise_method="noise", joint_logprob=True, logprob_type="token_level")


@functools.cache
def _model_params():
    return pi0.init_params(MODEL, jax.random.key(0))


@functools.cache
def _params(policy):
    params = {"model": _model_params()} | flow.init_heads(policy, MODEL, jax.random.key(1))
    if "value_head" in params:
        # The N(0, 0.02²) last layer keeps values ~1e-2; a unit-scale one makes pooling differences
        # far larger than float32 rounding.
        out = params["value_head"]["out"]
        params["value_head"]["out"] = {"kernel": out["kernel"] * 50.0, "bias": out["bias"] + 0.1}
    return params


@functools.cache
def _obs(batch=B):
    return pi0.fake_observation(MODEL, batch, jax.random.key(2))


@functools.cache
def _sampler(policy):
    return jax.jit(functools.partial(flow.sample, policy, MODEL))


@functools.cache
def _scorer(policy):
    return jax.jit(functools.partial(flow.score, policy, MODEL))


@jax.jit
def _expert(model_params, obs, x, t):
    """(velocity, action-token outputs) from a prefix and expert pass of our own."""
    return pi0.expert_pass(MODEL, model_params, obs, pi0.prefix_pass(MODEL, model_params, obs), x, t)


def _np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _np_mlp(head, x, act):
    n_hidden = sum(name.startswith("dense_") for name in head)
    for i in range(n_hidden):
        x = act(x @ head[f"dense_{i}"]["kernel"] + head[f"dense_{i}"]["bias"])
    return x @ head["out"]["kernel"] + head["out"]["bias"]


def _np_value(params, action_out, tokens):
    pooled = np.asarray(action_out, np.float64)[:, :tokens].mean(axis=1)
    return _np_mlp(_np_tree(params["value_head"]), pooled, lambda h: np.maximum(h, 0.0))[:, 0]


# ---------------------------------------------------------------- 1. ignore_last


@pytest.mark.parametrize("ignore_last", [True, False])
def test_one_step_k_star_support(ignore_last):
    # k* is drawn once per sampling call: vmap the sampler (batch 1) over 480 keys and collect k*.
    policy = _policy(ignore_last=ignore_last, value_source="none")
    params, obs = _params(policy), _obs(1)
    draw = jax.jit(jax.vmap(lambda key: flow.sample(policy, MODEL, params, obs, key).transitions.k[0]))
    n = 480
    ks = np.asarray(draw(jax.random.split(jax.random.key(7), n)))
    support = K - 1 if ignore_last else K
    assert set(ks.tolist()) == set(range(support))
    # Uniform: each count is Binomial(n, 1/support), std √(n·p·(1−p)) ≤ 10.7; allow 4 of them.
    counts = np.bincount(ks, minlength=K)
    expected = n / support
    assert np.all(np.abs(counts[:support] - expected) < 4 * math.sqrt(n * (1 / support) * (1 - 1 / support)))


def test_ignore_last_needs_two_steps():
    with pytest.raises(ValueError, match="num_steps=1"):
        _policy(num_steps=1, ignore_last=True)


# ---------------------------------------------------------------- 2. log-prob reduction levels


def test_reduce_logp_levels_on_a_known_array():
    # Elements numbered 0..H·A−1; the executed corner is rows 0..C−1, columns 0..E−1.
    x = jnp.arange(2 * H * A, dtype=jnp.float32).reshape(2, H, A)
    corner = np.asarray(x)[:, :C, :E]
    tok = flow.reduce_logp(_policy(logprob_type="token_level"), x)
    act = flow.reduce_logp(_policy(logprob_type="action_level"), x)
    chunk = flow.reduce_logp(_policy(logprob_type="chunk_level"), x)
    assert tok.shape == (2, C, E) and act.shape == (2, C) and chunk.shape == (2,)
    np.testing.assert_array_equal(tok, corner)
    # Row h of sample 0 holds h·A + 0..E−1, so its action-level sum is E·h·A + E(E−1)/2.
    np.testing.assert_array_equal(act[0], [E * h * A + E * (E - 1) // 2 for h in range(C)])
    np.testing.assert_array_equal(chunk, corner.sum(axis=(1, 2)))


def test_logprob_levels_from_sampler_sum_to_chunk_level():
    # All three levels in one program: XLA merges the identical model computations, so this costs
    # about one sampler compile.
    policies = {level: _policy(logprob_type=level, chunk_critic_input=True) for level in flow.LOGPROB_TYPES}
    outs = jax.jit(lambda p, o, key: {lvl: flow.sample(pol, MODEL, p, o, key) for lvl, pol in policies.items()})(
        _params(TOKEN), _obs(), jax.random.key(11)
    )
    tok, act, chunk = (outs[k].logp for k in ("token_level", "action_level", "chunk_level"))
    assert tok.shape == (B, C, E) and act.shape == (B, C) and chunk.shape == (B,)
    # Same key, same k* and chain: only the reduction differs.
    np.testing.assert_array_equal(outs["token_level"].transitions.k, outs["chunk_level"].transitions.k)
    np.testing.assert_allclose(np.asarray(tok).sum(-1), act, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(act).sum(-1), chunk, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(tok, np.float64).sum((1, 2)), chunk, rtol=1e-5, atol=1e-4)


def test_logprob_ignores_elements_outside_the_executed_corner():
    out = _sampler(TOKEN)(_params(TOKEN), _obs(), jax.random.key(11))
    score = functools.partial(_scorer(TOKEN), _params(TOKEN), _obs())
    base, _, _ = score(out.transitions)
    chain = out.transitions.chain  # [B, 2, H, A]: (x_{k*}, x_{k*+1})
    # Moving x_{k*+1} outside the corner (later horizon steps, or extra action dims) leaves the
    # log-prob bitwise unchanged: same compiled program, and those elements are never read.
    for moved in (chain.at[:, 1, C:, :].add(3.0), chain.at[:, 1, :, E:].add(3.0)):
        lp, _, _ = score(out.transitions.replace(chain=moved))
        np.testing.assert_array_equal(lp, base)
    # Moving one element inside the corner changes exactly that entry.
    lp, _, _ = score(out.transitions.replace(chain=chain.at[:, 1, C - 1, E - 1].add(0.01)))
    diff = np.asarray(lp) != np.asarray(base)
    assert diff[:, C - 1, E - 1].all() and diff.sum() == B


# ---------------------------------------------------------------- 3. entropy in the PPO loss


H_PRIOR = 0.5 * math.log(2 * math.pi * math.e)  # entropy of N(0, 1) = 1.4189385


def _np_noise_std(params, action_out):
    """The noise head in float64: tanh MLP, tanh squash onto [log LO², log HI²] of the log-variance."""
    raw = _np_mlp(_np_tree(params["noise_head"]), np.asarray(action_out, np.float64), np.tanh)
    lo, hi = 2 * math.log(LO), 2 * math.log(HI)
    return np.exp(0.5 * (lo + 0.5 * (np.tanh(raw) + 1.0) * (hi - lo)))


def _noise_batch():
    chain = jax.random.normal(jax.random.key(21), (B, K + 1, H, A))
    rng = np.random.default_rng(0)
    return upd.Batch(
        obs=_obs(),
        transitions=flow.Transitions(chain=chain, k=jnp.zeros((B,), jnp.int32)),
        logp_old=jnp.asarray(rng.normal(size=(B, C, E)), jnp.float32),
        value_old=jnp.asarray(rng.normal(size=B), jnp.float32),
        advantages=jnp.asarray(rng.normal(size=B), jnp.float32),
        returns=jnp.asarray(rng.normal(size=B), jnp.float32),
        weights=jnp.array([1.0, 2.0, 0.0, 1.0, 1.0, 0.5, 1.5, 1.0]),  # mean 1
    )


ENT_CONFIG = upd.UpdateConfig(trainable="full", entropy_bonus=0.25, value_coef=0.5)


@functools.cache
def _noise_loss():
    return jax.jit(functools.partial(upd._loss, NOISE, MODEL, ENT_CONFIG))


def _loss_parts(params, batch):
    train, frozen = upd.split_params(params, upd.param_labels(ENT_CONFIG.trainable, params))
    total, m = _noise_loss()(train, frozen, batch)
    m = jax.tree.map(float, m)
    assert float(total) == m["loss"]
    # What is left after the policy and value terms is the entropy term.
    return m["loss"] - m["policy_loss"] - ENT_CONFIG.value_coef * m["value_loss"], m


def test_flow_noise_entropy_term_matches_numpy():
    params, batch = _params(NOISE), _noise_batch()
    ent_term, m = _loss_parts(params, batch)
    # Per sample: mean over (K + 1 terms, C, E) of ½·log(2πe·σ²), the first term the N(0, 1) prior.
    per_step = []
    for k in range(K):
        _, action_out = _expert(params["model"], batch.obs, batch.transitions.chain[:, k], jnp.full((B,), 1 - k / K))
        std = _np_noise_std(params, action_out)[:, :C, :E]
        assert std.min() >= LO - 1e-9 and std.max() <= HI + 1e-9
        per_step.append(0.5 * np.log(2 * np.pi * np.e * std**2))
    ent = (H_PRIOR + np.sum(per_step, axis=0).sum(axis=(1, 2)) / (C * E)) / (K + 1)  # [B]
    w = np.asarray(batch.weights, np.float64)
    # A plain mean over the valid samples, not weighted like the policy and value losses (RLinf
    # embodied_fsdp_actor_worker.py, train_micro_batch: masked_mean(entropy, mask=loss_mask)).
    np.testing.assert_allclose(ent_term, -ENT_CONFIG.entropy_bonus * ent[w > 0].mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m["entropy"], ent[w > 0].mean(), rtol=1e-5)
    assert abs(np.mean(w * ent) - ent[w > 0].mean()) > 1e-4  # the weighted mean would differ


def test_flow_noise_entropy_term_hand_worked():
    # A zero output layer makes the noise head's raw output 0 everywhere: tanh(0) = 0 puts the
    # log-variance at the middle of [log 0.08², log 0.16²], i.e. σ² = 0.08·0.16 = 0.0128.
    #   step entropy  ½·log(2πe·0.0128) = 1.4189385 + ½·ln 0.0128 = 1.4189385 − 2.1791551 = −0.7602166
    #   per sample    (1.4189385 + 4·(−0.7602166)) / 5 = −1.6219279 / 5 = −0.3243856
    #   loss term     −0.25 · (−0.3243856) = +0.0810964 (every valid sample has the same entropy)
    params = dict(_params(NOISE))
    out = params["noise_head"]["out"]
    params["noise_head"] = {**params["noise_head"], "out": jax.tree.map(jnp.zeros_like, out)}
    ent_term, m = _loss_parts(params, _noise_batch())
    np.testing.assert_allclose(m["entropy"], -0.3243856, rtol=1e-5)
    np.testing.assert_allclose(ent_term, 0.0810964, rtol=1e-4)


# ---------------------------------------------------------------- 4. executed-chunk critic input


def test_chunk_critic_input_pools_only_executed_tokens():
    params, obs = _params(TOKEN), _obs()
    chain = jax.random.normal(jax.random.key(31), (B, 2, H, A))
    k = jnp.arange(B, dtype=jnp.int32) % K  # every step index appears
    _, _, value = _scorer(TOKEN)(params, obs, flow.Transitions(chain=chain, k=k))
    _, action_out = _expert(params["model"], obs, chain[:, 0], 1.0 - k / K)
    ref = _np_value(params, action_out, C)
    np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-5)
    # Pooling all H tokens gives clearly different values, so the check above can tell them apart.
    assert np.min(np.abs(_np_value(params, action_out, H) - ref)) > 1e-3
    # The sampler's value pools the same executed-chunk tokens (at every step: see below).
    out = _sampler(TOKEN)(params, obs, _key_with_k_star(TOKEN, 0))
    values = _np_chain_values(params, obs, out.transitions.chain, C)
    np.testing.assert_allclose(out.value, values.mean(axis=0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- 5. rollout value vs update value


def _key_with_k_star(policy, k_star):
    """The first sampling key whose one-step SDE draws ``k_star``."""
    params, obs = _params(policy), _obs()
    for seed in range(200):
        key = jax.random.key(1000 + seed)
        if int(_sampler(policy)(params, obs, key).transitions.k[0]) == k_star:
            return key
    raise AssertionError(f"no key draws k* = {k_star}")


def _np_chain_values(params, obs, chain, tokens):
    """[K, B] critic values at every denoising step of a one-step chain whose stochastic step is
    k* = 0: x_0, x_1 are stored, the later points follow the ODE x_{k+1} = x_k − v(x_k, t_k)/K."""
    x = chain[:, 1]
    _, out0 = _expert(params["model"], obs, chain[:, 0], jnp.ones((B,)))
    values = [_np_value(params, out0, tokens)]
    for k in range(1, K):
        t = jnp.full((B,), 1.0 - k / K)
        v, action_out = _expert(params["model"], obs, x, t)
        values.append(_np_value(params, action_out, tokens))
        x = x - v / K
    return np.stack(values)


VALUE = _policy(logprob_type="chunk_level")


def test_rollout_value_is_the_critic_averaged_over_all_denoising_steps():
    # The reference's rollout value (RLinf openpi_action_model.py, _sample_actions_with_prefix_cache:
    # values = torch.stack(values, dim=1).mean(dim=-1)) averages the critic over all K denoising
    # steps, one-step Flow-SDE included; its update (get_log_prob_value with num_steps = 1, then
    # default_forward's mean over that one entry) regresses the value at the scored step k*.
    params, obs = _params(VALUE), _obs()
    out = _sampler(VALUE)(params, obs, _key_with_k_star(VALUE, 0))
    assert not np.any(np.asarray(out.transitions.k))
    values = _np_chain_values(params, obs, out.transitions.chain, H)  # [K, B]
    np.testing.assert_allclose(out.value, values.mean(axis=0), rtol=1e-4, atol=1e-5)
    _, _, rescored = _scorer(VALUE)(params, obs, out.transitions)
    np.testing.assert_allclose(rescored, values[0], rtol=1e-4, atol=1e-5)
    # The two differ by far more than rounding, so the checks above tell them apart.
    assert np.min(np.abs(values.mean(axis=0) - values[0])) > 1e-3
