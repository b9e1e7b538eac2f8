"""LeRobot v2 reader on an image (PNG) dataset the test writes itself, and pirl.sft.run from it to a
checkpoint (video datasets: test_lerobot_video.py)."""

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from configs import sft_metaworld
from pirl import checkpoints, cli, experiment, sft
from pirl.data import lerobot

FRONT, WRIST, VIDEO = "observation.images.front", "observation.images.wrist", "observation.images.side"
TASKS = ["stack the red block", "open the drawer"]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(root, lengths=(5, 4), version="v2.1"):
    """Two episodes of 16×16 PNG frames (episode 1's wrist frames as files referenced by path,
    its rows stored in reverse frame order), 3-d state, 2-d actions. Returns the arrays written."""
    rng = np.random.default_rng(0)
    features = {
        FRONT: {"dtype": "image", "shape": [16, 16, 3]},
        WRIST: {"dtype": "image", "shape": [16, 16, 3]},
        VIDEO: {"dtype": "video", "shape": [16, 16, 3]},
        "observation.state": {"dtype": "float32", "shape": [3]},
        "action": {"dtype": "float32", "shape": [2]},
        "frame_index": {"dtype": "int64", "shape": [1]},
        "task_index": {"dtype": "int64", "shape": [1]},
    }
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": version,
        "chunks_size": 1000,
        "fps": 10,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    episodes_meta = [{"episode_index": i, "tasks": [TASKS[i]], "length": n} for i, n in enumerate(lengths)]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes_meta))
    written = []
    for ep, n in enumerate(lengths):
        front = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        wrist = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        state = rng.normal(size=(n, 3)).astype(np.float32)
        action = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        wrist_cells = []
        for t in range(n):
            if ep == 1:
                rel = f"images/{WRIST}/episode_{ep:06d}/frame_{t:06d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(_png(wrist[t]))
                wrist_cells.append({"bytes": None, "path": rel})
            else:
                wrist_cells.append({"bytes": _png(wrist[t]), "path": None})
        rows = np.arange(n)[::-1] if ep == 1 else np.arange(n)
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table(
            {
                FRONT: pa.array([{"bytes": _png(front[t]), "path": None} for t in rows], image_type),
                WRIST: pa.array([wrist_cells[t] for t in rows], image_type),
                "observation.state": pa.array([state[t].tolist() for t in rows], pa.list_(pa.float32())),
                "action": pa.array([action[t].tolist() for t in rows], pa.list_(pa.float32())),
                "frame_index": pa.array(rows, pa.int64()),
                "episode_index": pa.array([ep] * n, pa.int64()),
                "task_index": pa.array([ep] * n, pa.int64()),
            }
        )
        path = root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        written.append({"front": front, "wrist": wrist, "state": state, "action": action})
    return written


KEYS = lerobot.LeRobotKeys(images=(FRONT, WRIST))


def test_reads_frames_in_order_with_exact_pixels(tmp_path):
    written = write_dataset(tmp_path)
    episodes = lerobot.load(tmp_path, KEYS)
    assert len(episodes) == 2
    for ep, (got, want) in enumerate(zip(episodes, written, strict=True)):
        assert list(got.images) == [FRONT, WRIST]
        np.testing.assert_array_equal(got.images[FRONT], want["front"])  # PNG is lossless
        np.testing.assert_array_equal(got.images[WRIST], want["wrist"])
        np.testing.assert_array_equal(got.state, want["state"])
        np.testing.assert_array_equal(got.actions, want["action"])
        assert got.instruction == TASKS[ep] and got.success
    only_second = lerobot.load(tmp_path, KEYS, episodes=[1])
    np.testing.assert_array_equal(only_second[0].state, written[1]["state"])
    assert len(lerobot.load(tmp_path, KEYS, max_episodes=1)) == 1


def test_bad_datasets_fail_with_named_causes(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"LeRobot dataset not found: .*nowhere"):
        lerobot.load(missing)
    write_dataset(tmp_path / "ds")
    # Every image-like feature by default: the video one has no video files to come from.
    with pytest.raises(
        ValueError, match=re.escape(f"feature '{VIDEO}' is a video but meta/info.json has no video_path")
    ):
        lerobot.load(tmp_path / "ds")
    with pytest.raises(KeyError, match=r"no state feature 'observation\.joints'"):
        lerobot.load(tmp_path / "ds", lerobot.LeRobotKeys(images=(FRONT,), state="observation.joints"))
    with pytest.raises(KeyError, match="no image feature 'cam'"):
        lerobot.load(tmp_path / "ds", lerobot.LeRobotKeys(images=("cam",)))
    with pytest.raises(KeyError, match=r"episodes \[7\]"):
        lerobot.load(tmp_path / "ds", KEYS, episodes=[7])
    write_dataset(tmp_path / "v1", version="v1.6")
    with pytest.raises(ValueError, match=r"codebase_version 'v1\.6' is not one of \('v2\.0', 'v2\.1', 'v3\.0'\)"):
        lerobot.load(tmp_path / "v1", KEYS)
    # v3.0 in info.json over a v2 layout: the v3 episode metadata is missing.
    write_dataset(tmp_path / "v3", version="v3.0")
    with pytest.raises(FileNotFoundError, match=r"no parquet files under .*v3/meta/episodes"):
        lerobot.load(tmp_path / "v3", KEYS)


def test_sft_run_from_lerobot_dataset_writes_a_loadable_checkpoint(tmp_path):
    written = write_dataset(tmp_path / "ds")
    config = sft_metaworld.get_config("shrink")
    config.sft.update(
        dataset=str(tmp_path / "ds"),
        image_keys=(FRONT, WRIST),
        num_demos=2,
        holdout_demos=0,
        steps=2,
        batch_size=8,
        augment=False,
        log_every=1,
        asset_id="test/lerobot",
    )
    exp, extra = cli.to_experiment(config, extra={"sft": experiment.SFTSection})
    rows = []
    out = sft.run(exp, extra["sft"], tmp_path / "ckpt", log=rows.append)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    model_config, _ = checkpoints.load_openpi(out, action_horizon=exp.model.action_horizon)
    assert model_config.action_horizon == exp.model.action_horizon
    stats = checkpoints.load_norm_stats(out, "test/lerobot")
    states = np.concatenate([w["state"] for w in written]).astype(np.float64)
    np.testing.assert_allclose(stats["state"].mean, states.mean(0), rtol=1e-5, atol=1e-6)
    assert stats["actions"].dim == 2
    assert [json.loads(line)["step"] for line in (out / sft.METRICS_FILE).read_text().splitlines()] == [1, 2]
    with pytest.raises(FileExistsError, match="already exists"):
        sft.run(exp, extra["sft"], out)
