"""openpi-layout checkpoints: write → restore round trip, assets, remote paths, validation."""

import pathlib
import socket
import sys

import fsspec
import jax
import numpy as np
import pytest
from flax import traverse_util

from pirl import checkpoints
from pirl.data import norm_stats as ns
from pirl.models import pi0


def _random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), pi0.param_shapes(config))


def _assert_same_tree(got, want):
    flat_got = traverse_util.flatten_dict(got, sep="/")
    flat_want = traverse_util.flatten_dict(want, sep="/")
    assert sorted(flat_got) == sorted(flat_want)
    for key, value in flat_want.items():
        np.testing.assert_array_equal(np.asarray(flat_got[key]), value, err_msg=key)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = pi0.Pi0Config.tiny(pi05=True)
    params = _random_params(config)
    stats = {
        "state": ns.compute(np.arange(20.0).reshape(10, 2)),
        "actions": ns.compute(np.ones((4, 3)) * [[1], [2], [3], [4]]),
    }
    path = tmp_path_factory.mktemp("ckpt") / "pi05_tiny"
    checkpoints.save_openpi(path, params, norm_stats=stats, asset_id="physical-intelligence/libero")
    return config, params, stats, path


def test_openpi_layout_round_trip(saved):
    config, params, _, path = saved
    assert (path / "params").is_dir() and (path / "assets/physical-intelligence/libero/norm_stats.json").is_file()
    _assert_same_tree(checkpoints.restore_params(path), params)
    loaded_config, loaded = checkpoints.load_openpi(path, action_horizon=config.action_horizon, max_token_len=16)
    _assert_same_tree(loaded, params)
    for field in ("pi05", "vocab_size", "image_size", "action_dim", "action_horizon"):
        assert getattr(loaded_config, field) == getattr(config, field), field
    assert loaded_config.paligemma == config.paligemma and loaded_config.vision == config.vision


def test_norm_stats_from_assets(saved):
    _, _, stats, path = saved
    for got in (checkpoints.load_norm_stats(path), checkpoints.load_norm_stats(path, "physical-intelligence/libero")):
        np.testing.assert_array_equal(got["state"].q99, stats["state"].q99)
        np.testing.assert_array_equal(got["actions"].mean, stats["actions"].mean)
    with pytest.raises(FileNotFoundError, match="droid"):
        checkpoints.load_norm_stats(path, "droid")


def test_norm_stats_ambiguous_asset(tmp_path):
    for asset in ("a", "b"):
        ns.save(tmp_path / "assets" / asset, {"state": ns.compute(np.arange(4.0)[:, None])})
    with pytest.raises(checkpoints.CheckpointError, match=r"pass asset_id.*\['a', 'b'\]"):
        checkpoints.load_norm_stats(tmp_path)


def test_fsspec_url_is_copied_once_into_cache(saved, tmp_path, monkeypatch):
    _, params, _, path = saved
    monkeypatch.setenv("PIRL_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for file in pathlib.Path(path).rglob("*"):
        if file.is_file():
            fs.pipe_file(f"/bucket/pi05_tiny/{file.relative_to(path)}", file.read_bytes())
    try:
        local = checkpoints.resolve_path("memory://bucket/pi05_tiny")
        assert local == tmp_path / "cache/checkpoints/memory/bucket/pi05_tiny"
        _assert_same_tree(checkpoints.restore_params("memory://bucket/pi05_tiny"), params)
        fs.rm("/bucket", recursive=True)  # the cached copy now serves alone
        assert checkpoints.resolve_path("memory://bucket/pi05_tiny") == local
        assert checkpoints.load_norm_stats("memory://bucket/pi05_tiny")["state"].dim == 2
        with pytest.raises(checkpoints.CheckpointError, match="memory://bucket/other"):
            checkpoints.resolve_path("memory://bucket/other")
    finally:
        if fs.exists("/bucket"):
            fs.rm("/bucket", recursive=True)


def test_gs_without_gcsfs_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIRL_CACHE", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # pretend the host resolves
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # and the backend is not installed
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.restore_params("gs://openpi-assets/checkpoints/pi05_libero")
    assert "pip install gcsfs" in str(info.value) and "\n" not in str(info.value)


def test_gs_offline_fails_at_once_with_one_line_error(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setenv("PIRL_CACHE", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.restore_params("gs://openpi-assets/checkpoints/pi05_libero")
    message = str(info.value)
    assert "\n" not in message and "gs://openpi-assets/checkpoints/pi05_libero" in message
    assert "storage.googleapis.com" in message


def test_hf_paths_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.resolve_path("hf://RLinf/RLinf-Pi0-LIBERO@v1")
    message = str(info.value)
    assert "\n" not in message and "hf://RLinf/RLinf-Pi0-LIBERO@v1" in message and "--revision v1" in message
    # A snapshot already in the hub cache resolves offline (the layout huggingface_hub writes).
    repo = tmp_path / "models--org--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert checkpoints.resolve_path("hf://org/tiny") == repo / "snapshots" / commit


def test_load_pytorch_fills_lora_and_reports_extras(tmp_path):
    base = pi0.Pi0Config.tiny()
    params = _random_params(base)
    checkpoints.save_torch(params, tmp_path)
    # Append a value head to the file.
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
    tensors["value_head.weight"] = np.ones((1, 32), np.float32)
    safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
    lora = pi0.Pi0Config.tiny(paligemma_variant="tiny_lora", action_expert_variant="tiny_lora")
    loaded, extras = checkpoints.load_pytorch(tmp_path, lora)
    assert list(extras) == ["value_head.weight"]
    flat = traverse_util.flatten_dict(loaded, sep="/")
    lora_keys = [k for k in flat if "lora" in k]
    assert lora_keys and all(0.005 < flat[k].std() < 0.02 for k in lora_keys)
    _assert_same_tree({k: v for k, v in flat.items() if "lora" not in k}, traverse_util.flatten_dict(params, sep="/"))


def test_validate_params_names_first_offender():
    config = pi0.Pi0Config.tiny()
    shapes = pi0.param_shapes(config)
    params = _random_params(config)
    checkpoints.validate_params(params, shapes)
    flat = traverse_util.flatten_dict(params, sep="/")

    def broken(**changes):
        tree = {**flat, **changes}
        return traverse_util.unflatten_dict({k: v for k, v in tree.items() if v is not None}, sep="/")

    with pytest.raises(checkpoints.CheckpointError, match=r"action_in_proj/bias: missing \(expected shape \(32,\)\)"):
        checkpoints.validate_params(broken(**{"action_in_proj/bias": None}), shapes)
    with pytest.raises(checkpoints.CheckpointError, match=r"value_head/kernel: unexpected \(found shape \(32, 1\)\)"):
        checkpoints.validate_params(broken(**{"value_head/kernel": np.zeros((32, 1), np.float32)}), shapes)
    bad = np.zeros((2, 2, 16, 32), np.float32)
    with pytest.raises(
        checkpoints.CheckpointError, match=r"q_einsum/w: expected shape \(2, 2, 32, 16\), found \(2, 2, 16, 32\)"
    ):
        checkpoints.validate_params(broken(**{"PaliGemma/llm/layers/attn/q_einsum/w": bad}), shapes)
    half = flat["state_proj/kernel"].astype(np.float16)
    with pytest.raises(checkpoints.CheckpointError, match="state_proj/kernel: expected dtype float32, found float16"):
        checkpoints.validate_params(broken(**{"state_proj/kernel": half}), shapes)
    # Sorted order decides "first": two problems, the alphabetically first path is named.
    two = broken(**{"action_out_proj/bias": None, "state_proj/bias": None})
    with pytest.raises(checkpoints.CheckpointError, match="action_out_proj/bias"):
        checkpoints.validate_params(two, shapes)
