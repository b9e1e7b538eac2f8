"""Learning smoke test: the tiny π0, trained from scratch by PPO or GRPO through its denoising
log-probs, reaches a target that its observation encodes.

Task (a contextual bandit, one chunk per episode): the first E state dims hold a target in
[1, 2]^E; reward = −mean |a − target| over the executed chunk × env dims. At init the actions are
≈ x_0 ~ N(0, I) (return ≈ −1.6). The same run with the advantages negated — which is
what a flipped log-prob sign amounts to — must not improve, so the test fails if the sign is wrong.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from pirl.models import pi0
from pirl.rl import advantages as adv
from pirl.rl import flow
from pirl.rl import update as upd

MODEL = pi0.Pi0Config.tiny()
B, G, E, C = 64, 8, 2, 1
ITERS = 10
# Targets away from the N(0, I) start, so moving the actions towards them pays off quickly.
LOW, HIGH = 1.0, 2.0


def _obs(targets):
    base = pi0.fake_observation(MODEL, targets.shape[0])
    return base.replace(state=jnp.zeros_like(base.state).at[:, :E].set(targets))


def _reward(policy, actions, targets):
    a = flow.executed(policy, actions)  # [B, C, E]
    return -jnp.abs(a - targets[:, None, :]).mean(axis=(1, 2))


@functools.cache
def _programs(policy, config):
    sample = jax.jit(functools.partial(flow.sample, policy, MODEL))
    evaluate = jax.jit(functools.partial(flow.sample, policy, MODEL, train=False))
    step = jax.jit(functools.partial(upd.update, policy, MODEL, config))
    return sample, evaluate, step


def _run(policy, config, sign=1.0, seed=0):
    """Returns (eval return before, eval return after) of ITERS rollout/update iterations."""
    sample, evaluate, step = _programs(policy, config)
    params = {"model": pi0.init_params(MODEL, jax.random.key(seed))}
    params |= flow.init_heads(policy, MODEL, jax.random.key(seed + 1))
    state = upd.init_train_state(config, params)
    eval_targets = jax.random.uniform(jax.random.key(99), (B, E), minval=LOW, maxval=HIGH)

    def eval_return(params):
        out = evaluate(params, _obs(eval_targets), jax.random.key(7))
        return float(_reward(policy, out.actions, eval_targets).mean())

    before = eval_return(state.params)
    rng = jax.random.key(seed + 2)
    for _ in range(ITERS):
        rng, r_t, r_s, r_u = jax.random.split(rng, 4)
        if config.algorithm == "grpo":  # G consecutive envs share a target
            targets = jnp.repeat(jax.random.uniform(r_t, (B // G, E), minval=LOW, maxval=HIGH), G, axis=0)
        else:
            targets = jax.random.uniform(r_t, (B, E), minval=LOW, maxval=HIGH)
        obs = _obs(targets)
        out = sample(state.params, obs, r_s)
        reward = _reward(policy, out.actions, targets)
        if config.algorithm == "grpo":
            a = adv.grpo_advantages(reward, G)
            returns = reward
        else:  # one chunk step that ends the episode: bootstrap value 0, done → A = r − V
            a, returns = adv.gae(reward[None], jnp.stack([out.value, jnp.zeros(B)]), jnp.ones((1, B), bool), 0.99, 0.95)
            a, returns = adv.normalize(a, jnp.ones_like(a, bool))[0], returns[0]
        batch = upd.Batch(obs, out.transitions, out.logp, out.value, sign * a, returns, jnp.ones(B))
        state, _ = step(state, batch, r_u)
    return before, eval_return(state.params)


SDE = flow.FlowPolicyConfig(num_steps=2, num_action_chunks=C, action_env_dim=E, value_hidden=(32, 32))
NOISE = flow.FlowPolicyConfig(
    num_steps=2, noise_method="noise", joint_logprob=True, num_action_chunks=C, action_env_dim=E, value_hidden=(32, 32)
)


def _config(algorithm):
    return upd.UpdateConfig(
        algorithm=algorithm,
        trainable="expert_only",
        lr=3e-3,
        value_lr=3e-3,
        weight_decay=0.0,
        update_epochs=4,
        minibatch_size=B // 2,
        micro_batch_size=B // 2,
    )


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
@pytest.mark.parametrize("policy", [SDE, NOISE], ids=["flow_sde", "flow_noise"])
def test_policy_improves_and_flipped_sign_does_not(policy, algorithm):
    if algorithm == "grpo":
        policy = flow.FlowPolicyConfig(**{**policy.__dict__, "value_source": "none"})
    config = _config(algorithm)
    before, after = _run(policy, config)
    _, after_flipped = _run(policy, config, sign=-1.0)
    print(f"{algorithm} {policy.noise_method}: {before:.3f} → {after:.3f} (flipped sign → {after_flipped:.3f})")
    assert after > before + 0.1, (before, after)
    assert after_flipped < before + 0.02, (before, after_flipped)
