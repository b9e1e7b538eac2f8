"""Per-env mp4 recording with overlays, on toy observations."""

import imageio.v3 as iio
import numpy as np
import pytest

from pirl.envs import base, video


def toy_obs(n, t):
    img = np.zeros((n, 32, 48, 3), np.uint8)
    img[..., 0] = 40 * t  # brightness encodes the step
    img[:, :, :24, 1] = 200
    return base.BatchObs({"main": img}, np.zeros((n, 2), np.float32), [f"task {i}" for i in range(n)])


def test_overlay_upscales_and_writes_text():
    frame = toy_obs(1, 0).images["main"][0]
    out = video.overlay(frame, ["put the bowl on the plate", "step 3  success"], min_size=128)
    # 32 rows -> scale ceil(128 / 32) = 4 -> 128 x 192 image, then a text strip below it.
    assert out.shape[0] > 128 and out.shape[1:] == (192, 3)
    np.testing.assert_array_equal(out[:128:4, ::4], frame)
    assert out[128:].max() > 100  # white text drawn on the black strip


def test_recorder_writes_one_mp4_per_env(tmp_path):
    rec = video.VideoRecorder(str(tmp_path), fps=5, text=False)
    for t in range(4):
        rec.add(toy_obs(3, t), envs=[0, 2] if t == 3 else None)
    paths = rec.save("it0")
    assert [p.split("/")[-1] for p in paths] == ["it0_env000.mp4", "it0_env001.mp4", "it0_env002.mp4"]
    frames = [iio.imread(p, plugin="pyav") for p in paths]
    assert [len(f) for f in frames] == [4, 3, 4] and frames[0].shape[1:] == (32, 48, 3)
    # Lossy codec: compare mean brightness of the red channel, 40 per step.
    np.testing.assert_allclose(frames[0][..., 0].mean(axis=(1, 2)), [0, 40, 80, 120], atol=6)
    assert rec.frames == {}


def test_recorder_writes_odd_sized_frames_as_browsers_play_them(tmp_path):
    """H.264 4:2:0 (yuv420p) needs even sizes: a 15 x 17 frame gets its last row and column repeated."""
    import av

    rec = video.VideoRecorder(str(tmp_path), text=False)
    img = np.zeros((1, 15, 17, 3), np.uint8)
    img[0, -1, :, 1] = 255  # the last row green, repeated below it
    rec.add(base.BatchObs({"main": img}, np.zeros((1, 2), np.float32), ["x"]))
    (path,) = rec.save()
    with av.open(path) as f:
        stream = f.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        frame = next(f.decode(stream)).to_ndarray(format="rgb24")
    assert frame.shape == (16, 18, 3)
    assert frame[-2:, :16, 1].mean() > 200 and frame[:12, :, 1].mean() < 30


def test_recorder_overlay_and_bad_camera(tmp_path):
    rec = video.VideoRecorder(str(tmp_path))
    rec.add(toy_obs(1, 1), success=np.array([True]), step=np.array([7]))
    assert rec.frames[0][0].shape[0] > 256  # upscaled to >= 256 rows plus the text strip
    with pytest.raises(KeyError, match="camera 'wrist' not in observation images"):
        video.VideoRecorder(str(tmp_path), camera="wrist").add(toy_obs(1, 0))
