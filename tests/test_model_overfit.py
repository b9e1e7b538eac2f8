"""The `dummy` π0 / π0.5 learn: flow-matching loss on one fixed batch falls by at least 10×."""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from pirl.models import pi0


@pytest.mark.parametrize("pi05", [False, True])
def test_dummy_overfits_a_fixed_batch(pi05):
    config = pi0.Pi0Config.dummy(pi05)
    params = pi0.init_params(config, jax.random.key(0))
    obs = pi0.fake_observation(config, 4, jax.random.key(1))
    # One target chunk per observation: the flow's velocity ε − a is then a function of (x_t, t, obs),
    # so the loss can approach 0 even with fresh noise and time at every step.
    actions = jax.random.uniform(jax.random.key(2), (4, config.action_horizon, config.action_dim), minval=-1, maxval=1)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 1000))
    eval_rngs = jax.random.split(jax.random.key(3), 8)

    @jax.jit
    def eval_loss(p):
        return jnp.mean(jax.vmap(lambda r: pi0.flow_loss(config, p, obs, actions, r).mean())(eval_rngs))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, state, rng):
        loss, grads = jax.value_and_grad(lambda q: pi0.flow_loss(config, q, obs, actions, rng).mean())(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    before = float(eval_loss(params))
    state = opt.init(params)
    for rng in jax.random.split(jax.random.key(4), 1000):
        params, state, _ = step(params, state, rng)
    after = float(eval_loss(params))
    assert after < before / 10, (before, after)
