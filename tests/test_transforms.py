import math

import numpy as np
import pytest
import tiny_sentencepiece

from pirl.data import images as img
from pirl.data import norm_stats as ns
from pirl.data import transforms as tf
from pirl.models import tokenizer as tok

# ---------------------------------------------------------------- images


def test_resize_with_pad_keeps_aspect_and_pads_bottom_right_odd():
    # 10x20 (H x W), left half value 50, right half 200, to 13x16: ratio = max(20/16, 10/13) = 1.25,
    # content (int(10/1.25), int(20/1.25)) = (8, 16); rows: top pad (13-8)//2 = 2, bottom 3.
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = 50
    image[:, 10:] = 200
    out = img.resize_with_pad(image, 13, 16)
    assert out.shape == (13, 16, 3) and out.dtype == np.uint8
    assert (out[:2] == 0).all() and (out[10:] == 0).all()
    content = out[2:10]
    # Aspect ratio kept: 8 x 16 is 10 x 20 halved; the halves stay halves away from the seam.
    assert (content[:, :7] == 50).all() and (content[:, 9:] == 200).all()


def test_resize_with_pad_tall_image_pads_columns_and_batches():
    # 40x10 to 20x20: ratio = max(10/20, 40/20) = 2 -> content 20x5, left pad (20-5)//2 = 7, right 8.
    frames = np.full((2, 3, 40, 10, 3), 90, np.uint8)
    out = img.resize_with_pad(frames, 20, 20)
    assert out.shape == (2, 3, 20, 20, 3)
    assert (out[..., :7, :] == 0).all() and (out[..., 12:, :] == 0).all()
    assert (out[..., 7:12, :] == 90).all()


def test_resize_with_pad_square_and_identity():
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert img.resize_with_pad(frame, 256, 256) is frame
    down = img.resize_with_pad(frame, 224, 224)
    assert down.shape == (224, 224, 3)
    # Square to square: no padding rows or columns were needed (no all-zero border of a random image).
    assert down[0].any() and down[-1].any() and down[:, 0].any() and down[:, -1].any()
    with pytest.raises(ValueError, match="uint8"):
        img.resize_with_pad(frame.astype(np.float32), 224, 224)


def test_to_float_and_orientations():
    # x / 255 * 2 - 1: 0 -> -1, 255 -> 1, 51 -> 0.4 - 1 = -0.6
    np.testing.assert_allclose(img.to_float(np.array([[[0, 255, 51]]], np.uint8)), [[[-1.0, 1.0, -0.6]]], 1e-6)
    a = np.arange(6 * 3, dtype=np.uint8).reshape(2, 3, 3)  # 2 rows, 3 columns
    assert (img.rotate_180(a)[0, 0] == a[1, 2]).all() and (img.rotate_180(a)[1, 2] == a[0, 0]).all()
    assert (img.flip_vertical(a)[0] == a[1]).all() and (img.flip_vertical(a)[1] == a[0]).all()


# ---------------------------------------------------------------- state


def test_quat_to_axis_angle_hand_worked():
    s = math.sqrt(0.5)
    quats = np.array(
        [
            [0.0, 0.0, 0.0, 1.0],  # identity -> 0
            [0.0, 0.0, s, s],  # 90 deg about z: angle 2 acos(cos 45) = pi/2 -> (0, 0, pi/2)
            [1.0, 0.0, 0.0, 0.0],  # 180 deg about x: angle 2 acos(0) = pi, den 1 -> (pi, 0, 0)
            [0.5, 0.5, 0.5, 0.5],  # 120 deg about (1,1,1)/sqrt3: 2pi/3 * (1/sqrt3) each
            [0.0, s, 0.0, -s],  # w < 0 kept as is: angle 2 acos(-cos 45) = 3pi/2 about y
            [0.0, 0.0, 0.0, 1.0000001],  # w slightly above 1 is clipped -> identity
        ]
    )
    want = np.array(
        [
            [0, 0, 0],
            [0, 0, math.pi / 2],
            [math.pi, 0, 0],
            [2 * math.pi / 3 / math.sqrt(3)] * 3,
            [0, 3 * math.pi / 2, 0],
            [0, 0, 0],
        ]
    )
    np.testing.assert_allclose(tf.quat_to_axis_angle(quats), want, atol=1e-7)


def test_libero_state_layout():
    state = tf.libero_state(
        eef_pos=np.array([[0.1, -0.2, 1.0]]),
        eef_quat=np.array([[1.0, 0.0, 0.0, 0.0]]),  # gripper pointing down: pi about x
        gripper_qpos=np.array([[0.04, -0.04]]),
    )
    assert state.dtype == np.float32 and state.shape == (1, 8)
    np.testing.assert_allclose(state[0], [0.1, -0.2, 1.0, math.pi, 0, 0, 0.04, -0.04], rtol=1e-6)


def test_bool_mask():
    assert tf.bool_mask(6, -1) == (True,) * 6 + (False,)
    assert tf.bool_mask(2, -2, 1) == (True, True, False, False, True)


# ---------------------------------------------------------------- full transforms


@pytest.fixture(scope="module")
def tokenizer():
    sentences = ["pick up the black bowl", "Task: open it, State: 0 1 2 3 4 5 6 7 8 9 128 255;\nAction: "]
    return tok.PaligemmaTokenizer(model_proto=tiny_sentencepiece.train(sentences, vocab_size=60))


def _stats(dim, scale):
    rng = np.random.default_rng(dim)
    return ns.compute(rng.normal(size=(200, dim)) * scale + np.arange(dim))


def _libero_obs(batch=2, size=256):
    rng = np.random.default_rng(1)
    agentview = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    wrist = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    state = rng.normal(size=(batch, 8)).astype(np.float32)
    return {"agentview_image": agentview, "robot0_eye_in_hand_image": wrist}, state


def test_make_model_inputs_libero_pi0(tokenizer):
    cfg = tf.libero(pi05=False, image_size=(256, 256))  # same size: the orientation is checked exactly
    cams, state = _libero_obs()
    stats = {"state": _stats(8, 2.0), "actions": _stats(7, 1.0)}
    batch = tf.make_model_inputs(cfg, cams, state, ["pick up the black bowl"] * 2, stats, tokenizer)
    assert set(batch) == {"images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask"}
    assert list(batch["images"]) == list(tf.IMAGE_KEYS)
    # agentview -> base, rotated 180 deg, scaled to [-1, 1]: output pixel (0, 0) is input (255, 255).
    base = batch["images"]["base_0_rgb"]
    assert base.dtype == np.float32 and base.shape == (2, 256, 256, 3)
    np.testing.assert_allclose(base[1, 0, 0], cams["agentview_image"][1, 255, 255] / 255 * 2 - 1, rtol=1e-6)
    np.testing.assert_allclose(base[0, 10, 3], cams["agentview_image"][0, 245, 252] / 255 * 2 - 1, rtol=1e-6)
    wrist = batch["images"]["left_wrist_0_rgb"]
    np.testing.assert_allclose(wrist[0, 0, 0], cams["robot0_eye_in_hand_image"][0, 255, 255] / 255 * 2 - 1)
    # Missing right wrist: black (-1) and masked.
    assert (batch["images"]["right_wrist_0_rgb"] == -1).all()
    assert batch["image_masks"]["base_0_rgb"].tolist() == [True, True]
    assert batch["image_masks"]["right_wrist_0_rgb"].tolist() == [False, False]
    # State: z-scored with the state stats, zero-padded to 32.
    s = stats["state"]
    want = (state - s.mean) / (s.std + 1e-6)
    assert batch["state"].shape == (2, 32)
    np.testing.assert_allclose(batch["state"][:, :8], want, rtol=1e-6)
    assert (batch["state"][:, 8:] == 0).all()
    # π0 prompt, 48 tokens.
    ids = batch["tokenized_prompt"]
    assert ids.shape == (2, 48) and ids.dtype == np.int32 and batch["tokenized_prompt_mask"].dtype == bool
    want_ids, _ = tokenizer.tokenize(["pick up the black bowl"], 48)
    assert (ids[0] == want_ids[0]).all()
    # Resized variant: 256 -> 224.
    small = tf.make_model_inputs(tf.libero(), cams, state, ["a", "b"], stats, tokenizer)
    assert small["images"]["base_0_rgb"].shape == (2, 224, 224, 3)


def test_pi05_discrete_state_prompt_uses_normalized_unpadded_state(tokenizer):
    cfg = tf.TransformConfig(
        cameras=(("cam", "base_0_rgb"),),
        env_action_dim=7,
        image_size=(28, 28),
        norm="quantile",
        max_token_len=120,
        discrete_state_input=True,
    )
    stats = {"state": ns.NormStats(mean=[0, 0], std=[1, 1], q01=[0, -2], q99=[2, 2]), "actions": _stats(7, 1)}
    # Quantile normalization: (x - q01) / (q99 - q01 + 1e-6) * 2 - 1: [0, 0] -> [-1, ~0].
    state = np.array([[0.0, 0.0]], np.float32)
    cams = {"cam": np.zeros((1, 56, 56, 3), np.uint8)}
    batch = tf.make_model_inputs(cfg, cams, state, ["open it"], stats, tokenizer)
    n = int(batch["tokenized_prompt_mask"][0].sum())
    # -1 -> bin 0. The second value is (2 / (4 + 1e-6)) * 2 - 1 = -5e-7, just below edge 128 -> bin 127.
    assert tokenizer.decode(batch["tokenized_prompt"][0, 1:n]) == "Task: open it, State: 0 127;\nAction: "
    assert batch["images"]["base_0_rgb"].shape == (1, 28, 28, 3)
    assert batch["image_masks"]["left_wrist_0_rgb"].tolist() == [False]


def test_to_env_actions_hand_worked():
    cfg = tf.libero(pi05=False)
    cfg = tf.TransformConfig(**{**cfg.__dict__, "action_chunk": 5})
    stats = {"actions": ns.NormStats(mean=np.arange(7.0), std=np.full(7, 2.0))}
    model_out = np.ones((1, 8, 32), np.float32)
    state = np.arange(8, dtype=np.float32)[None] * 10  # [0, 10, ..., 70]
    out = tf.to_env_actions(cfg, model_out, state, stats)
    # Each kept dim i: 1 * (2 + 1e-6) + i, plus state_i = 10 i on the 6 delta dims, none on the gripper.
    per_dim = [2 + 1e-6 + i + (10 * i if i < 6 else 0) for i in range(7)]
    assert out.shape == (1, 5, 7)
    np.testing.assert_allclose(out, np.broadcast_to(per_dim, (1, 5, 7)), rtol=1e-6)


@pytest.mark.parametrize("pi05", [False, True])
def test_actions_round_trip(pi05):
    cfg = tf.libero(pi05=pi05)
    rng = np.random.default_rng(3)
    stats = {"actions": _stats(7, 0.5)}
    env_actions = rng.normal(size=(2, 10, 7)).astype(np.float32)
    state = rng.normal(size=(2, 8)).astype(np.float32)
    targets = tf.to_model_actions(cfg, env_actions, state, stats)
    assert targets.shape == (2, 10, 32) and (targets[..., 7:] == 0).all()
    if not pi05:  # delta on dims 0-5: target dim 0 = (a - s - mean) / (std + eps)
        s = stats["actions"]
        want = (env_actions[0, 0, 0] - state[0, 0] - s.mean[0]) / (s.std[0] + 1e-6)
        np.testing.assert_allclose(targets[0, 0, 0], want, rtol=1e-5)
    back = tf.to_env_actions(cfg, targets, state, stats)
    np.testing.assert_allclose(back, env_actions, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem(tokenizer):
    cfg = tf.libero()
    cams, state = _libero_obs(batch=1, size=32)
    stats = {"state": _stats(8, 1.0), "actions": _stats(7, 1.0)}
    with pytest.raises(KeyError, match="robot0_eye_in_hand_image"):
        tf.make_model_inputs(cfg, {"agentview_image": cams["agentview_image"]}, state, ["x"], stats, tokenizer)
    with pytest.raises(KeyError, match="no 'state' entry"):
        tf.make_model_inputs(cfg, cams, state, ["x"], {"actions": stats["actions"]}, tokenizer)
    with pytest.raises(ValueError, match="one prompt per row"):
        tf.make_model_inputs(cfg, cams, state, ["x", "y"], stats, tokenizer)
    with pytest.raises(ValueError, match=r"\[B, Ha, 32\]"):
        tf.to_env_actions(cfg, np.zeros((1, 4, 7)), state, stats)
    with pytest.raises(ValueError, match="not model slots"):
        tf.TransformConfig(cameras=(("c", "wrist"),), env_action_dim=7)
    with pytest.raises(ValueError, match="same slot"):
        tf.TransformConfig(cameras=(("a", "base_0_rgb"), ("b", "base_0_rgb")), env_action_dim=7)


# ---------------------------------------------------------------- SFT augmentation (JAX)


def test_rotate_and_crop_helpers_hand_checked():
    import jax.numpy as jnp

    from pirl.data import augment

    image = np.random.default_rng(4).uniform(size=(7, 7, 3)).astype(np.float32)
    # A quarter turn about the center of an odd square lands exactly on pixel centers: np.rot90
    # turns counter-clockwise as displayed, the convention rotate() documents.
    np.testing.assert_allclose(augment.rotate(jnp.asarray(image), math.pi / 2), np.rot90(image), atol=1e-5)
    np.testing.assert_allclose(augment.rotate(jnp.asarray(image), 0.0), image, atol=1e-6)
    # A full-size crop at the origin is the identity; a half crop of a constant image stays constant.
    np.testing.assert_allclose(augment.crop_resize(jnp.asarray(image), 0, 0, 7, 7), image, atol=1e-6)
    const = jnp.full((8, 8, 3), 0.25)
    np.testing.assert_allclose(augment.crop_resize(const, 2, 3, 4, 4), 0.25, atol=1e-6)


def test_augment_images_shapes_and_wrist_geometry():
    import jax

    from pirl.data import augment

    rng = np.random.default_rng(5)
    base = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    # Wrist cameras get color jitter only: a spatially constant image stays spatially constant.
    wrist = np.full((2, 16, 16, 3), 0.2, np.float32)
    run = jax.jit(augment.augment_images)
    out = run(jax.random.key(0), {"base_0_rgb": base, "left_wrist_0_rgb": wrist})
    assert out["base_0_rgb"].shape == base.shape and out["left_wrist_0_rgb"].shape == wrist.shape
    w = np.asarray(out["left_wrist_0_rgb"])
    np.testing.assert_allclose(w, np.broadcast_to(w[:, :1, :1], w.shape), atol=1e-6)
    assert np.abs(np.asarray(out["base_0_rgb"])).max() <= 1.0 + 1e-6
    assert not np.allclose(out["base_0_rgb"], base, atol=1e-3)
    again = run(jax.random.key(0), {"base_0_rgb": base, "left_wrist_0_rgb": wrist})
    np.testing.assert_array_equal(out["base_0_rgb"], again["base_0_rgb"])


def test_model_inputs_feed_the_model(tokenizer):
    # The batch dict is pirl.models.pi0.Observation's fields; trace the tiny model on it
    # (eval_shape: shapes and dtypes end to end, no compile) and map its output to env actions.
    import jax

    from pirl.models import pi0

    assert pi0.IMAGE_KEYS == tf.IMAGE_KEYS
    config = pi0.Pi0Config.tiny()
    cfg = tf.libero(image_size=(config.image_size, config.image_size))
    cfg = tf.TransformConfig(**{**cfg.__dict__, "max_token_len": config.max_token_len, "action_chunk": 5})
    cams, state = _libero_obs(batch=2, size=64)
    stats = {"state": _stats(8, 1.0), "actions": _stats(7, 1.0)}
    obs = pi0.Observation(**tf.make_model_inputs(cfg, cams, state, ["pick up the black bowl"] * 2, stats, tokenizer))
    noise = np.zeros((2, config.action_horizon, config.action_dim), np.float32)
    out = jax.eval_shape(
        lambda p, o, n: pi0.sample_actions(config, p, o, n, num_steps=2), pi0.param_shapes(config), obs, noise
    )
    assert out.shape == noise.shape
    env = tf.to_env_actions(cfg, np.zeros(out.shape, out.dtype), state, stats)
    assert env.shape == (2, 5, 7)
