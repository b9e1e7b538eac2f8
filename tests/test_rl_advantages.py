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


def test_gae_matches_the_references_loop():
    # RLinf algorithms/advantages.py compute_gae_advantages_and_returns, as a numpy loop: its dones
    # have T + 1 slots, slot t + 1 holding the done of chunk t (slot 0: the previous rollout's);
    #   delta = r[t] + γ·V[t+1]·(1 − d[t+1]) − V[t];  gae = delta + γλ·(1 − d[t+1])·gae;
    #   returns[t] = gae + V[t];  advantages = returns − V[:-1].
    rng = np.random.default_rng(0)
    T, B, gamma, lam = 7, 5, 0.99, 0.95
    r = rng.normal(size=(T, B))
    v = rng.normal(size=(T + 1, B))
    d = rng.random((T, B)) < 0.3
    ref_dones = np.concatenate([np.zeros((1, B), bool), d])
    ret, g = np.zeros((T, B)), np.zeros(B)
    for t in reversed(range(T)):
        nd = 1.0 - ref_dones[t + 1]
        g = r[t] + gamma * v[t + 1] * nd - v[t] + gamma * lam * nd * g
        ret[t] = g + v[t]
    a, returns = adv.gae(jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32), jnp.asarray(d), gamma, lam)
    np.testing.assert_allclose(returns, ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, ret - v[:-1], rtol=1e-5, atol=1e-5)


def test_gae_rejects_missing_bootstrap_value():
    with pytest.raises(ValueError, match="T \\+ 1"):
        adv.gae(jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 2), bool), 0.99, 0.95)


def test_masks_after_first_done_and_trajectory_weights():
    # T = 4 chunks of 5 env steps, max_episode_steps 20.
    # env 0 ends in chunk 1 at its 2nd env step → valid [1,1,0,0], 5 + 2 = 7 env steps → 20/7;
    # env 1 never ends → all valid, 20 env steps → 20/20 = 1;
    # env 2 ends in chunk 0 at its 3rd env step → 3 env steps → 20/3;
    # a second done (env 0, chunk 3) must not revive anything.
    d = jnp.array([[0, 0, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]], bool)
    m = adv.valid_mask(d)
    np.testing.assert_array_equal(m, [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 1, 0]])
    steps = jnp.array([[5, 5, 3], [2, 5, 0], [0, 5, 0], [0, 5, 0]])
    w = adv.trajectory_weights(m, steps, max_episode_steps=20)
    a, c = 20 / 7, 20 / 3
    np.testing.assert_allclose(w, [[a, 1, c], [a, 1, 0], [0, 1, 0], [0, 1, 0]], rtol=1e-6)


def _reference_loss_weights(done_step: np.ndarray, chunk: int, n_chunks: int, max_episode_steps: int):
    """RLinf's loss weights in numpy, as its code computes them: metric_utils.compute_loss_mask
    (a [n_steps + 1] done vector whose slot 0 is the previous chunk's last done; a step is valid
    while no done came before it; loss_mask_sum = the valid steps of the env), chunk_level's
    loss_mask.any over the chunk (actor worker), then losses.compute_ppo_actor_loss's
    loss_mask_ratio = loss_mask_sum / max_episode_steps and utils.masked_mean_ratio's
    (x / loss_mask_ratio · mask).mean(). Returns the [T, B] factor multiplying x inside that mean.
    ``done_step[b]``: the 1-based env step whose action ended env b's episode (0: never)."""
    n_steps, envs = chunk * n_chunks, len(done_step)
    dones = np.zeros((n_steps + 1, envs), bool)
    for b, s in enumerate(done_step):
        if s:
            dones[s, b] = True  # done after env step s (1-based) sits at slot s
    step_mask = (np.cumsum(dones, axis=0) == 0)[:-1]  # [n_steps, B]
    loss_mask_sum = step_mask.sum(axis=0)  # [B]
    chunk_mask = step_mask.reshape(n_chunks, chunk, envs).any(axis=1)  # [T, B]
    return chunk_mask / (loss_mask_sum / max_episode_steps)


def test_trajectory_weights_are_the_references_for_the_hand_case():
    # 5-step chunks, a 240-step limit (48 chunks), an episode that ends at env step 12: chunks 0-2
    # are valid (5 + 5 + 2 = 12 env steps) and weigh 240 / 12 = 20.0 (chunk steps ÷ valid chunks
    # would give 48 / 3 = 16.0). A second env ends at step 240 (weight 1.0), a third at step 5.
    chunk, n_chunks, limit = 5, 48, 240
    done_step = np.array([12, 240, 5])
    want = _reference_loss_weights(done_step, chunk, n_chunks, limit)
    assert want[0, 0] == 20.0 and want[3, 0] == 0.0 and want[0, 1] == 1.0 and want[0, 2] == 48.0
    # pirl's inputs: chunk-level dones and the env steps executed in each chunk.
    t = np.arange(n_chunks)[:, None]
    first, last = t * chunk + 1, t * chunk + chunk
    dones = jnp.asarray((first <= done_step) & (done_step <= last))
    steps = jnp.asarray(np.clip(done_step - t * chunk, 0, chunk))
    mask = adv.valid_mask(dones)
    w = adv.trajectory_weights(mask, steps, max_episode_steps=limit)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    # The policy loss is the mean over all entries of w·x, as masked_mean_ratio's.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n_chunks, 3)), jnp.float32)
    np.testing.assert_allclose(
        losses.weighted_mean(x.reshape(-1), w.reshape(-1)), np.mean(np.asarray(x) * want), rtol=1e-5
    )


def test_normalize_over_valid_entries_unbiased():
    # valid A = [1, 2, 3]: mean 2, unbiased std √((1 + 0 + 1)/2) = 1 (RLinf algorithms/utils.py
    # safe_normalize: torch std() is unbiased, eps 1e-5); the masked 100 is ignored and set to 0.
    out = adv.normalize(jnp.array([1.0, 2.0, 3.0, 100.0]), jnp.array([True, True, True, False]))
    s = 1.0 + 1e-5
    np.testing.assert_allclose(out, [-1 / s, 0.0, 1 / s, 0.0], rtol=1e-6)


@pytest.mark.parametrize("value", [0.35, 1 / 3, -2.5, 1e-30, 7.77e30])
def test_normalize_of_equal_advantages_is_exactly_zero(value):
    # Every valid A − mean(A) is 0; a rounding residue over a 0 + 1e-5 std would not be.
    a = jnp.full((4, 7), value, jnp.float32)
    mask = jnp.ones((4, 7), bool).at[0, 0].set(False)
    assert not np.any(np.asarray(adv.normalize(a, mask)))


def test_episode_scores_count_valid_steps_only():
    # env 0: 1 + 0 (step 2 is after its done, masked) = 1; env 1: 0 + 0 + 1 = 1.
    r = jnp.array([[1.0, 0.0], [0.0, 0.0], [5.0, 1.0]])
    m = jnp.array([[True, True], [True, True], [False, True]])
    np.testing.assert_allclose(adv.episode_scores(r, m), [1.0, 1.0])


def test_episode_scores_match_the_references_loop():
    # RLinf algorithms/utils.py calculate_scores, as a numpy loop over chunk steps backwards with
    # its T + 1 done slots: scores = scores·(1 − d[t+1]) + r[t], i.e. the rewards up to and
    # including the chunk of the first done.
    rng = np.random.default_rng(1)
    T, B = 9, 6
    r = rng.random((T, B))
    d = rng.random((T, B)) < 0.25
    ref_dones = np.concatenate([np.zeros((1, B), bool), d])
    scores = np.zeros(B)
    for t in reversed(range(T)):
        scores = scores * ~ref_dones[t + 1] + r[t]
    got = adv.episode_scores(jnp.asarray(r, jnp.float32), adv.valid_mask(jnp.asarray(d)))
    np.testing.assert_allclose(got, scores, rtol=1e-5)


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


def test_grpo_equal_scores_get_exactly_zero():
    # RLinf algorithms/advantages.py compute_grpo_advantages: (R − mean)/(std + 1e-6). Every score
    # of a group of equal scores minus their mean is 0, so their advantage is exactly 0; in float32
    # the mean of eight 0.35s rounds away from 0.35 and the residue / 1e-6 used to read +0.0289.
    np.testing.assert_array_equal(adv.grpo_advantages(jnp.full((8,), 0.35, jnp.float32), 8), np.zeros(8))
    for value in (0.35, 0.1, 1 / 3, -2.5, 1e-30, 7.77e30, 1e38):
        for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
            x = jnp.asarray(value, jnp.float32).astype(dtype)
            if not np.isfinite(float(x)):
                continue  # beyond float16's range
            out = adv.grpo_advantages(jnp.full((8,), x, dtype), 8)
            assert out.dtype == jnp.float32 and not np.any(np.asarray(out)), (value, dtype)
    # Integer scores (success counts) alike.
    assert not np.any(np.asarray(adv.grpo_advantages(jnp.full((4,), 3, jnp.int32), 4)))


def test_grpo_advantages_any_magnitude_and_dtype():
    # [1, −1, 1, −1]·s: mean 0, unbiased std √(4/3)·s → ±s/(√(4/3)·s + 1e-6) (±0.8660254 once
    # s ≫ 1e-6) for any scale s; at s = 1e30 the squares overflow float32 (1e60) unless the group
    # is rescaled first.
    for scale in (1e-3, 1.0, 1e30):
        got = adv.grpo_advantages(jnp.array([1.0, -1.0, 1.0, -1.0], jnp.float32) * scale, 4)
        k = scale / (np.sqrt(4 / 3) * scale + 1e-6)
        np.testing.assert_allclose(got, [k, -k, k, -k], rtol=1e-5)
    # bfloat16 scores are exact small integers here: the same advantages as float32.
    scores = jnp.array([1.0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_allclose(
        adv.grpo_advantages(scores.astype(jnp.bfloat16), 4), adv.grpo_advantages(scores, 4), rtol=1e-6
    )


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


def test_value_clip_anchor_is_the_rollout_value_hand_case():
    # The reference's rollout value of a one-step Flow-SDE sample is the critic averaged over the K
    # steps (RLinf openpi_action_model.py, _sample_actions_with_prefix_cache); compute_ppo_critic_loss
    # (RLinf algorithms/losses.py) clips around it: prev_values + clamp(values − prev_values, ±0.2).
    # Step values (0.2, 0.4, 0.6, 0.8) with k* = 3: rollout value (0.2 + 0.4 + 0.6 + 0.8)/4 = 0.5,
    # not the k* value 0.8. A new value 0.9 with clip 0.2 clips to 0.5 + 0.2 = 0.7; with return 1:
    #   max(Huber(1 − 0.9), Huber(1 − 0.7)) = max(0.005, 0.045) = 0.045
    # (around 0.8 it would clip to 0.9 and give 0.005).
    anchor = float(np.mean([0.2, 0.4, 0.6, 0.8]))
    assert anchor == 0.5
    loss, m = losses.value_loss(jnp.array([0.9]), jnp.array([anchor]), jnp.array([1.0]), jnp.ones(1), clip=0.2)
    np.testing.assert_allclose(loss, 0.5 * 0.3**2, rtol=1e-5)
    assert float(m["value_clip_ratio"]) == 1.0


def test_entropy_bonus_is_an_unweighted_mean_over_valid_samples():
    # coef 0.005, entropies [1, 3, 100] with weights [1, 3, 0] → mean over the valid two = 2, loss
    # −0.005·2 = −0.01: the trajectory weights do not enter (RLinf embodied_fsdp_actor_worker.py,
    # train_micro_batch: masked_mean(entropy, mask=loss_mask)).
    loss, m = losses.entropy_bonus(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 3.0, 0.0]), 0.005)
    np.testing.assert_allclose(loss, -0.01, rtol=1e-6)
    np.testing.assert_allclose(m["entropy"], 2.0)
