"""Advantages and PPO losses against numbers worked out by hand (derivations beside each value)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pirl.rl import advantages as adv
from pirl.rl import losses


def test_chunk_rewards_sum_and_any_done():
    # chunk 0: 0 + 1 + 0.5 = 1.5, no done; chunk 1: 0 + 0 + 1 = 1.0, done at its 2nd env step.
    r = jnp.array([[[0.0, 1.0, 0.5]], [[0.0, 0.0, 1.0]]])
    d = jnp.array([[[False, False, False]], [[False, True, False]]])
    rc, dc = adv.chunk_rewards(r, d)
    np.testing.assert_allclose(rc[:, 0], [1.5, 1.0])
    np.testing.assert_array_equal(dc[:, 0], [False, True])


def test_bootstrap_adds_discounted_final_value_on_truncation_only():
    # step 1 truncated: 2 + 0.9·3 = 4.7; step 0 untouched although its final value is 7.
    out = adv.bootstrap_truncated(
        jnp.array([[1.0], [2.0]]), jnp.array([[False], [True]]), jnp.array([[7.0], [3.0]]), gamma=0.9
    )
    np.testing.assert_allclose(out[:, 0], [1.0, 4.7], rtol=1e-6)


def test_gae_hand_worked():
    # γ = λ = 0.5, so γλ = 0.25.
    # env 0: r = [1, 0, 2], V = [0.5, 1, 1 | 4], no done.
    #   δ0 = 1 + 0.5·1 − 0.5 = 1.0;  δ1 = 0 + 0.5·1 − 1 = −0.5;  δ2 = 2 + 0.5·4 − 1 = 3.0
    #   A2 = 3.0;  A1 = −0.5 + 0.25·3 = 0.25;  A0 = 1 + 0.25·0.25 = 1.0625
    #   returns = A + V = [1.0625 + 0.5, 0.25 + 1, 3 + 1] = [1.5625, 1.25, 4.0]
    # env 1: r = [1, 1, 1], V = [1, 2, 3 | 10], done during step 1.
    #   δ0 = 1 + 0.5·2 − 1 = 1.0;  δ1 = 1 + 0 − 2 = −1.0 (done cuts V2);  δ2 = 1 + 0.5·10 − 3 = 3.0
    #   A2 = 3.0;  A1 = −1 + 0 = −1.0 (done cuts A2);  A0 = 1 + 0.25·(−1) = 0.75
    #   returns = [0.75 + 1, −1 + 2, 3 + 3] = [1.75, 1.0, 6.0]
    r = jnp.array([[1.0, 1.0], [0.0, 1.0], [2.0, 1.0]])
    v = jnp.array([[0.5, 1.0], [1.0, 2.0], [1.0, 3.0], [4.0, 10.0]])
    d = jnp.array([[False, False], [False, True], [False, False]])
    a, ret = adv.gae(r, v, d, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(a[:, 0], [1.0625, 0.25, 3.0], rtol=1e-6)
    np.testing.assert_allclose(a[:, 1], [0.75, -1.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.5625, 1.25, 4.0], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 1], [1.75, 1.0, 6.0], rtol=1e-6)


def test_gae_rejects_missing_bootstrap_value():
    with pytest.raises(ValueError, match="T \\+ 1"):
        adv.gae(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 2), bool), 0.99, 0.95)


def test_masks_after_first_done_and_trajectory_weights():
    # T = 4. env 0 ends at step 1 → valid [1,1,0,0], weight 4/2 = 2 on valid steps;
    # env 1 never ends → all valid, weight 4/4 = 1; env 2 ends at step 0 → weight 4/1 = 4;
    # a second done (env 0, step 3) must not revive anything.
    d = jnp.array([[0, 0, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]], bool)
    m = adv.valid_mask(d)
    np.testing.assert_array_equal(m, [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 1, 0]])
    w = adv.trajectory_weights(m)
    np.testing.assert_allclose(w, [[2, 1, 4], [2, 1, 0], [0, 1, 0], [0, 1, 0]])
    # Mean over all entries of w·x = mean over envs of per-trajectory means.
    x = jnp.arange(12.0).reshape(4, 3)
    per_env = [np.mean([0.0, 3.0]), np.mean([1.0, 4.0, 7.0, 10.0]), 2.0]
    np.testing.assert_allclose(jnp.mean(w * x), np.mean(per_env), rtol=1e-6)


def test_normalize_over_valid_entries():
    # valid A = [1, 2, 3]: mean 2, population std √(2/3) = 0.816497; the masked 100 is ignored
    # and set to 0.
    out = adv.normalize(jnp.array([1.0, 2.0, 3.0, 100.0]), jnp.array([True, True, True, False]))
    s = np.sqrt(2 / 3) + 1e-5
    np.testing.assert_allclose(out, [-1 / s, 0.0, 1 / s, 0.0], rtol=1e-6)


def test_episode_scores_count_valid_steps_only():
    # env 0: 1 + 0 (step 2 is after its done, masked) = 1; env 1: 0 + 0 + 1 = 1.
    r = jnp.array([[1.0, 0.0], [0.0, 0.0], [5.0, 1.0]])
    m = jnp.array([[True, True], [True, True], [False, True]])
    np.testing.assert_allclose(adv.episode_scores(r, m), [1.0, 1.0])


def test_grpo_advantages_unbiased_std_and_filter():
    # group 0 = [1, 0, 0, 1]: mean 0.5, unbiased std √(4·0.25/3) = √(1/3) = 0.57735
    #   → A = ±0.5/0.57735 = ±0.866025 (eps 1e-6 changes the 6th digit only).
    # group 1 = [1, 1, 1, 1]: std 0 → A = 0/(0 + 1e-6) = 0.
    # group 2 = [0, 0, 0, 1]: mean 0.25, unbiased std √((3·0.0625 + 0.5625)/3) = 0.5
    #   → A = [−0.5, −0.5, −0.5, 1.5].
    scores = jnp.array([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1])
    a = adv.grpo_advantages(scores, group_size=4)
    k = 0.5 / np.sqrt(1 / 3)
    np.testing.assert_allclose(a, [k, -k, -k, k, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5], rtol=1e-5, atol=1e-6)
    # group means 0.5, 1.0, 0.25: the all-success group falls outside [0.1, 0.9].
    keep = adv.grpo_filter(scores, group_size=4)
    np.testing.assert_array_equal(keep, [1] * 4 + [0] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="groups of 5"):
        adv.grpo_advantages(scores, group_size=5)


def test_policy_loss_clipping_hand_worked():
    # ε = 0.2, ratios r = [1.5, 0.5, 1.1, 0.7], A = [1, 1, −1, −1]:
    #   s0: −1.5 vs −clip(1.5)=−1.2 → max −1.2 (clipped branch active, zero gradient)
    #   s1: −0.5 vs −0.8 → −0.5 (unclipped; dL/dlogp = −A·r/N = −0.5/4 = −0.125)
    #   s2: 1.1 vs 1.1 → 1.1 (inside the band; dL/dlogp = +1.1/4 = 0.275)
    #   s3: 0.7 vs 0.8 → 0.8 (clipped branch active, zero gradient)
    #   loss = (−1.2 − 0.5 + 1.1 + 0.8)/4 = 0.05; clip fraction 2/4;
    #   approx_kl = −mean(log r) = −log(1.5·0.5·1.1·0.7)/4 = −log(0.5775)/4 = 0.137272
    ratios = jnp.array([1.5, 0.5, 1.1, 0.7])
    a = jnp.array([1.0, 1.0, -1.0, -1.0])
    w = jnp.ones(4)

    def loss_fn(logp):
        return losses.policy_loss(logp, jnp.zeros(4), a, w, clip_eps=0.2)

    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(jnp.log(ratios))
    np.testing.assert_allclose(loss, 0.05, atol=1e-6)
    np.testing.assert_allclose(m["clip_fraction"], 0.5)
    np.testing.assert_allclose(m["approx_kl"], -np.log(0.5775) / 4, rtol=1e-5)
    np.testing.assert_allclose(m["ratio"], 3.8 / 4, rtol=1e-6)
    np.testing.assert_allclose(g, [0.0, -0.125, 0.275, 0.0], atol=1e-6)


def test_policy_loss_token_level_weights_and_mask():
    # token-level log-probs [N=2, C=1, A=2]; sample 1 has weight 0 so it drops out of both the
    # loss and the metrics. Sample 0 (weight 2): ratios [1, 1], A = 3 → −3 per entry;
    # loss = mean over 4 entries of w·l = 2·(−3)·2/4 = −3.
    logp = jnp.zeros((2, 1, 2))
    loss, m = losses.policy_loss(
        logp, logp - jnp.array([0.0, 5.0])[:, None, None], jnp.array([3.0, 1.0]), jnp.array([2.0, 0.0])
    )
    np.testing.assert_allclose(loss, -3.0)
    np.testing.assert_allclose(m["ratio"], 1.0)
    np.testing.assert_allclose(m["approx_kl"], 0.0)


def test_value_loss_hand_worked():
    # clip 0.2, Huber δ 10; V = [1, 0, 5], V_old = [0.5, 0, 5], R = [2, 30, 4], weights [1, 1, 2].
    #   s0: V − V_old = 0.5 → V_clip = 0.7; Huber(1) = 0.5, Huber(1.3) = 0.845 → 0.845 (clipped)
    #   s1: error 30 ≥ δ → 10·(30 − 5) = 250 on both branches
    #   s2: error −1 → 0.5 on both branches, weight 2 → 1.0
    #   loss = (0.845 + 250 + 1.0)/3 = 83.948333; value clip ratio 1/3
    #   explained variance: R − V = [1, 30, −1] (mean 10, Σdev² = 81 + 400 + 121 = 602),
    #   R = [2, 30, 4] (mean 12, Σdev² = 100 + 324 + 64 = 488) → 1 − 602/488 = −0.2336066
    v, v_old, ret = jnp.array([1.0, 0.0, 5.0]), jnp.array([0.5, 0.0, 5.0]), jnp.array([2.0, 30.0, 4.0])
    loss, m = losses.value_loss(v, v_old, ret, jnp.array([1.0, 1.0, 2.0]), clip=0.2, huber_delta=10.0)
    np.testing.assert_allclose(loss, 251.845 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["value_clip_ratio"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["explained_variance"], 1 - 602 / 488, rtol=1e-5)


def test_entropy_bonus_sign():
    # coef 0.005, entropies [1, 3] with weights [1, 1] → loss −0.005·2 = −0.01.
    loss, m = losses.entropy_bonus(jnp.array([1.0, 3.0]), jnp.ones(2), 0.005)
    np.testing.assert_allclose(loss, -0.01, rtol=1e-6)
    np.testing.assert_allclose(m["entropy"], 2.0)
