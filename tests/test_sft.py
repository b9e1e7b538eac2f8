"""SFT on MetaWorld scripted-expert demos: demos, norm stats, held-out loss, checkpoint round trip."""

import dataclasses

import jax
import numpy as np
import pytest

pytest.importorskip("metaworld")

from configs import sft_metaworld
from pirl import checkpoints, cli, experiment, runsetup, sft
from pirl.envs import metaworld as mw
from pirl.models import tokenizer


@pytest.fixture(scope="module")
def setup():
    config = sft_metaworld.get_config("shrink")
    config.env.gl = "osmesa"
    config.sft.update(num_demos=3, holdout_demos=1, steps=60, log_every=30)
    exp, extra = cli.to_experiment(config, extra={"sft": experiment.SFTSection})
    episodes = sft.load_demos(exp, extra["sft"])
    return exp, extra["sft"], episodes


@pytest.fixture(scope="module")
def fitted(setup):
    exp, cfg, episodes = setup
    return sft.fit(exp, cfg, episodes[:3], episodes[3:])


def test_action_chunks_repeat_the_last_action():
    actions = np.array([[0.0], [1.0], [2.0]])
    # chunk[t, k] = actions[min(t + k, 2)]
    expected = [[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2]]
    np.testing.assert_array_equal(sft.action_chunks(actions, 4)[..., 0], expected)


def test_expert_demos_are_successful_hand_state_episodes(setup):
    exp, _, episodes = setup
    assert len(episodes) == 4
    for e in episodes:
        steps = len(e)
        assert e.success and 1 < steps <= exp.env.max_steps
        assert e.instruction == mw.INSTRUCTIONS["reach-v3"]
        assert list(e.images) == ["main"]
        assert e.images["main"].dtype == np.uint8 and e.images["main"].shape == (steps, 64, 64, 3)
        assert e.state.shape == (steps, 4) and e.actions.shape == (steps, 4)
        assert np.abs(e.actions).max() <= 1.0
        # The stored state is the hand: its xyz moves the way the xyz actions push it.
        moves, pushes = np.diff(e.state[:, :3], axis=0).ravel(), e.actions[:-1, :3].ravel()
        assert np.corrcoef(moves, pushes)[0, 1] > 0.5
    # Different goals give different trajectories.
    assert not np.allclose(episodes[0].state[-1], episodes[1].state[-1])


def test_demo_max_steps_outlasts_the_rl_time_limit(setup):
    # reach-v3: the hand starts at y = 0.6, every goal has y >= 0.8, success needs 0.05 m, and the
    # hand moves at most 1 cm a step, so no expert succeeds in under 15 steps: a demo exists only
    # because sft.demo_max_steps overrides env.max_steps = 10 while collecting.
    exp, cfg, _ = setup
    samples = exp.env.num_envs * 2  # 2 chunk steps of 5
    rl = dataclasses.replace(exp.rl, minibatch_size=samples, micro_batch_size=samples)
    exp = dataclasses.replace(exp, env=dataclasses.replace(exp.env, max_steps=10), rl=rl)
    cfg = dataclasses.replace(cfg, num_demos=1, holdout_demos=0, demo_max_steps=100)
    (demo,) = sft.load_demos(exp, cfg)
    assert demo.success and 15 <= len(demo) <= 100


def test_norm_stats_are_those_of_the_training_demos(setup, fitted):
    _, _, episodes = setup
    states = np.concatenate([e.state for e in episodes[:3]]).astype(np.float64)
    np.testing.assert_allclose(fitted.norm_stats["state"].mean, states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fitted.norm_stats["state"].std, states.std(0), rtol=1e-5, atol=1e-6)
    # Action targets: every chunk position counts, the last action repeated past the episode end.
    horizon = fitted.config.action_horizon
    chunks = [e.actions[min(t + k, len(e) - 1)] for e in episodes[:3] for t in range(len(e)) for k in range(horizon)]
    np.testing.assert_allclose(fitted.norm_stats["actions"].mean, np.mean(chunks, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fitted.norm_stats["actions"].q99, np.quantile(chunks, 0.99, 0), rtol=1e-5, atol=1e-6)


def test_sft_lowers_heldout_flow_loss(setup, fitted):
    exp, cfg, episodes = setup
    tcfg = sft.transform_config(exp, episodes)
    tok = tokenizer.load_tokenizer(exp.model.tokenizer, fitted.config.vocab_size)
    heldout = sft.make_samples(episodes[3:], fitted.config.action_horizon)
    obs, actions = sft.heldout_batch(tcfg, heldout, fitted.norm_stats, tok, cfg)
    noise, t = sft.eval_noise(jax.random.key(7), actions.shape)
    _, initial = runsetup.float32_model_params(exp, cfg.seed)
    before = np.asarray(sft.fixed_noise_errors(fitted.config, initial, obs, actions, noise, t))
    after = np.asarray(sft.fixed_noise_errors(fitted.config, fitted.params, obs, actions, noise, t))
    numbers = (
        f"held-out flow loss {before.mean():.4f} -> {after.mean():.4f}, "
        f"env action dims {before[:4].mean():.4f} -> {after[:4].mean():.4f}"
    )
    print(numbers)
    assert after.mean() < 0.7 * before.mean(), numbers
    assert after[:4].mean() < 0.7 * before[:4].mean(), numbers
    hist = fitted.history
    assert [row["step"] for row in hist] == [0, 30, 60]
    assert hist[-1]["heldout_action_loss"] < hist[0]["heldout_action_loss"], hist
    assert hist[-1]["loss"] < hist[1]["loss"], hist


def test_checkpoint_round_trip(setup, fitted, tmp_path):
    _, cfg, _ = setup
    out = sft.save(tmp_path / "ckpt", fitted, cfg.asset_id)
    config, params = checkpoints.load_openpi(out, action_horizon=fitted.config.action_horizon)
    assert config.paligemma == fitted.config.paligemma and config.vocab_size == fitted.config.vocab_size
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(jax.device_get(fitted.params)), strict=True
    ):
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    stats = checkpoints.load_norm_stats(out)  # the only asset: found without naming it
    assert sorted(stats) == ["actions", "state"]
    for key in stats:
        np.testing.assert_array_equal(stats[key].mean, fitted.norm_stats[key].mean)
        np.testing.assert_array_equal(stats[key].q01, fitted.norm_stats[key].q01)
    assert (out / "assets" / cfg.asset_id / "norm_stats.json").is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        sft.save(out, fitted, cfg.asset_id)
