"""PyTorch safetensors → pirl params, checked against a mapping written here independently
of pirl.checkpoints.pytorch, from the reference's layout facts (PyTorch Linear weights are [out, in])."""

import json
import logging

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from pirl import checkpoints
from pirl.checkpoints import pytorch as tc
from pirl.models import gemma, pi0, siglip

VLM = "paligemma_with_expert.paligemma.model."
VIS = VLM + "vision_tower.vision_model."
LM = VLM + "language_model."
EXP = "paligemma_with_expert.gemma_expert.model."


def independent_torch_state_dict(params: dict, pi05: bool) -> dict[str, np.ndarray]:
    """pirl params → openpi-PyTorch names, one explicit statement per fact in the reference."""
    p = jax.tree.map(np.asarray, params)
    sd = {}
    img = p["PaliGemma"]["img"]
    sd[VIS + "embeddings.patch_embedding.weight"] = img["embedding"]["kernel"].transpose(3, 2, 0, 1)  # HWIO→OIHW
    sd[VIS + "embeddings.patch_embedding.bias"] = img["embedding"]["bias"]
    sd[VIS + "embeddings.position_embedding.weight"] = img["pos_embedding"][0]
    blk = img["Transformer"]["encoderblock"]
    attn = blk["MultiHeadDotProductAttention_0"]
    for i in range(blk["LayerNorm_0"]["scale"].shape[0]):
        pre = VIS + f"encoder.layers.{i}."
        sd[pre + "layer_norm1.weight"] = blk["LayerNorm_0"]["scale"][i]
        sd[pre + "layer_norm1.bias"] = blk["LayerNorm_0"]["bias"][i]
        sd[pre + "layer_norm2.weight"] = blk["LayerNorm_1"]["scale"][i]
        sd[pre + "layer_norm2.bias"] = blk["LayerNorm_1"]["bias"][i]
        sd[pre + "mlp.fc1.weight"] = blk["MlpBlock_0"]["Dense_0"]["kernel"][i].T
        sd[pre + "mlp.fc1.bias"] = blk["MlpBlock_0"]["Dense_0"]["bias"][i]
        sd[pre + "mlp.fc2.weight"] = blk["MlpBlock_0"]["Dense_1"]["kernel"][i].T
        sd[pre + "mlp.fc2.bias"] = blk["MlpBlock_0"]["Dense_1"]["bias"][i]
        for flax_name, short in (("query", "q"), ("key", "k"), ("value", "v")):
            kernel = attn[flax_name]["kernel"][i]  # [D, N, H]
            d = kernel.shape[0]
            sd[pre + f"self_attn.{short}_proj.weight"] = kernel.reshape(d, -1).T  # [N·H, D]
            sd[pre + f"self_attn.{short}_proj.bias"] = attn[flax_name]["bias"][i].reshape(-1)
        out = attn["out"]["kernel"][i]  # [N, H, D]
        sd[pre + "self_attn.out_proj.weight"] = out.reshape(-1, out.shape[-1]).T  # [D, N·H]
        sd[pre + "self_attn.out_proj.bias"] = attn["out"]["bias"][i]
    sd[VIS + "post_layernorm.weight"] = img["Transformer"]["encoder_norm"]["scale"]
    sd[VIS + "post_layernorm.bias"] = img["Transformer"]["encoder_norm"]["bias"]
    sd[VLM + "multi_modal_projector.linear.weight"] = img["head"]["kernel"].T
    sd[VLM + "multi_modal_projector.linear.bias"] = img["head"]["bias"]

    llm = p["PaliGemma"]["llm"]
    layers = llm["layers"]
    sd[LM + "embed_tokens.weight"] = llm["embedder"]["input_embedding"]
    for suffix, base in (("", LM), ("_1", EXP)):
        a = layers["attn"]
        q = a[f"q_einsum{suffix}"]["w"]  # [L, N, D, H]
        kv = a[f"kv_einsum{suffix}"]["w"]  # [L, 2, K, D, H]
        o = a[f"attn_vec_einsum{suffix}"]["w"]  # [L, N, H, D]
        mlp = layers[f"mlp{suffix}"]
        n_layers, n, d, h = q.shape
        k_heads = kv.shape[2]
        for i in range(n_layers):
            pre = base + f"layers.{i}."
            sd[pre + "self_attn.q_proj.weight"] = np.stack([q[i, j].T for j in range(n)]).reshape(n * h, d)
            sd[pre + "self_attn.k_proj.weight"] = np.concatenate([kv[i, 0, j].T for j in range(k_heads)])
            sd[pre + "self_attn.v_proj.weight"] = np.concatenate([kv[i, 1, j].T for j in range(k_heads)])
            sd[pre + "self_attn.o_proj.weight"] = np.concatenate([o[i, j] for j in range(n)]).T
            sd[pre + "mlp.gate_proj.weight"] = mlp["gating_einsum"][i, 0].T
            sd[pre + "mlp.up_proj.weight"] = mlp["gating_einsum"][i, 1].T
            sd[pre + "mlp.down_proj.weight"] = mlp["linear"][i].T
            for flax_norm, torch_norm in (
                ("pre_attention_norm", "input_layernorm"),
                ("pre_ffw_norm", "post_attention_layernorm"),
            ):
                norm = layers[f"{flax_norm}{suffix}"]
                if pi05 and suffix:
                    sd[pre + f"{torch_norm}.dense.weight"] = norm["Dense_0"]["kernel"][i].T
                    sd[pre + f"{torch_norm}.dense.bias"] = norm["Dense_0"]["bias"][i]
                else:
                    sd[pre + f"{torch_norm}.weight"] = norm["scale"][i]
        final = llm[f"final_norm{suffix}"]
        if pi05 and suffix:
            sd[base + "norm.dense.weight"] = final["Dense_0"]["kernel"].T
            sd[base + "norm.dense.bias"] = final["Dense_0"]["bias"]
        else:
            sd[base + "norm.weight"] = final["scale"]
    heads = ["action_in_proj", "action_out_proj"]
    heads += ["time_mlp_in", "time_mlp_out"] if pi05 else ["state_proj", "action_time_mlp_in", "action_time_mlp_out"]
    for name in heads:
        sd[f"{name}.weight"] = p[name]["kernel"].T
        sd[f"{name}.bias"] = p[name]["bias"]
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def model(request):
    config = pi0.Pi0Config.tiny(pi05=request.param)
    # The real tree's structure and shapes (eval_shape, no init compile), filled with distinct
    # random values: zero-initialized leaves (norm scales, adaRMS kernels) would hide a mix-up.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), pi0.param_shapes(config))
    return config, params


def _assert_same_tree(got, want):
    flat_got = traverse_util.flatten_dict(got, sep="/")
    flat_want = traverse_util.flatten_dict(want, sep="/")
    assert sorted(flat_got) == sorted(flat_want)
    for key, value in flat_want.items():
        assert flat_got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(flat_got[key], value, err_msg=key)


def test_independent_names_load_to_identical_params(model):
    config, params = model
    sd = independent_torch_state_dict(params, config.pi05)
    loaded, extras = tc.from_torch(sd, pi0.param_shapes(config))
    assert extras == {}
    _assert_same_tree(loaded, params)


def test_writer_matches_independent_mapping(model):
    config, params = model
    want = independent_torch_state_dict(params, config.pi05)
    got = tc.to_torch(params)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_tied_embedding_under_either_name_and_lerobot_prefix(model, caplog):
    config, params = model
    sd = independent_torch_state_dict(params, config.pi05)
    embedding = sd.pop(LM + "embed_tokens.weight")
    only_head = {**sd, "paligemma_with_expert.paligemma.lm_head.weight": embedding}
    loaded, extras = tc.from_torch(only_head, pi0.param_shapes(config))
    assert extras == {}
    _assert_same_tree(loaded, params)
    both = {**only_head, LM + "embed_tokens.weight": embedding}
    assert tc.from_torch(both, pi0.param_shapes(config))[1] == {}
    # LeRobot ≥ 0.4: every key under "model.".
    lerobot = {"model." + k: v for k, v in both.items()}
    loaded, extras = tc.from_torch(lerobot, pi0.param_shapes(config))
    assert extras == {}
    _assert_same_tree(loaded, params)


def test_legacy_transformers_layout(model):
    config, params = model
    sd = independent_torch_state_dict(params, config.pi05)
    old = {}
    for key, value in sd.items():
        key = key.replace(LM, "paligemma_with_expert.paligemma.language_model.model.")
        key = key.replace(VLM + "vision_tower.", "paligemma_with_expert.paligemma.vision_tower.")
        key = key.replace(VLM + "multi_modal_projector.", "paligemma_with_expert.paligemma.multi_modal_projector.")
        old[key] = value
    loaded, extras = tc.from_torch(old, pi0.param_shapes(config))
    assert extras == {}
    _assert_same_tree(loaded, params)


def test_sharded_round_trip_with_value_head_extras(model, tmp_path, caplog):
    config, params = model
    index = tc.save_torch(params, tmp_path, max_shard_bytes=64 * 1024)
    assert index.name == "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    # Add an RL value head and the expert's unused lm_head to the last shard.
    extra = {
        "value_head.proj.weight": np.ones((1, 32), np.float32),
        "value_head.proj.bias": np.zeros((1,), np.float32),
        "paligemma_with_expert.gemma_expert.lm_head.weight": np.ones((1024, 32), np.float32),
    }
    last = safetensors.numpy.load_file(tmp_path / shards[-1])
    safetensors.numpy.save_file({**last, **extra}, tmp_path / shards[-1])
    weight_map.update(dict.fromkeys(extra, shards[-1]))
    index.write_text(json.dumps({"weight_map": weight_map}))
    with caplog.at_level(logging.WARNING, logger=tc.__name__):
        loaded, extras = tc.load_torch(tmp_path, pi0.param_shapes(config))
    _assert_same_tree(loaded, params)
    assert sorted(extras) == sorted(extra)
    np.testing.assert_array_equal(extras["value_head.proj.weight"], extra["value_head.proj.weight"])
    assert "value_head.proj.weight" in caplog.text


def test_single_file_and_dtype_cast(model, tmp_path):
    config, params = model
    file = tc.save_torch(params, tmp_path)
    assert file.name == "model.safetensors"
    bf16 = {k: v.astype(jax.numpy.bfloat16) for k, v in safetensors.numpy.load_file(file).items()}
    safetensors.numpy.save_file(bf16, tmp_path / "bf16.safetensors")
    loaded, _ = tc.load_torch(tmp_path / "bf16.safetensors", pi0.param_shapes(config))
    leaf = loaded["PaliGemma"]["llm"]["layers"]["mlp"]["linear"]
    assert leaf.dtype == np.float32  # cast to the template's dtype
    want = params["PaliGemma"]["llm"]["layers"]["mlp"]["linear"].astype(jax.numpy.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(leaf, want)


def test_truncated_and_mislabeled_files_name_the_file(model, tmp_path):
    _, params = model
    file = tc.save_torch(params, tmp_path / "ok")
    data = file.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoints.CheckpointError, match=r"cut/model\.safetensors is not a readable safetensors"):
        tc.load_safetensors(tmp_path / "cut")
    # A PyTorch pickle / zip or any other file under a .safetensors name.
    (tmp_path / "bin.safetensors").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(checkpoints.CheckpointError, match=r"bin\.safetensors is not a readable safetensors"):
        tc.load_safetensors(tmp_path / "bin.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="holds neither"):
        tc.load_safetensors(tmp_path / "empty")
    # An index naming a shard that is not there.
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "gone.safetensors"}})
    )
    with pytest.raises(checkpoints.CheckpointError, match=r"gone\.safetensors"):
        tc.load_safetensors(tmp_path / "idx")


def test_mislabeled_tensor_names_path_and_shapes(model):
    config, params = model
    sd = independent_torch_state_dict(params, config.pi05)
    key = LM + "layers.1.mlp.down_proj.weight"
    sd[key] = sd[key].T  # stored the wrong way round: [F, D] instead of [D, F]
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"PaliGemma/llm/layers/mlp/linear: expected \[64, 32\].*down_proj\.weight \[64, 32\]",
    ):
        tc.from_torch(sd, pi0.param_shapes(config))
    sd = independent_torch_state_dict(params, config.pi05)
    del sd[EXP + "layers.0.self_attn.k_proj.weight"]
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"no tensor .*gemma_expert.*layers\.0\.self_attn\.k_proj\.weight for .*kv_einsum_1",
    ):
        tc.from_torch(sd, pi0.param_shapes(config))
    sd = independent_torch_state_dict(params, config.pi05)
    sd["action_in_proj.weight"] = sd["action_in_proj.weight"].astype(np.int32)
    with pytest.raises(checkpoints.CheckpointError, match="action_in_proj/kernel: expected a floating tensor"):
        tc.from_torch(sd, pi0.param_shapes(config))


@pytest.mark.parametrize("pi05", [False, True])
def test_dummy_variant_names_and_shapes_without_allocation(pi05):
    # openpi's `dummy` Gemma sizes for both streams, a small vision tower; shapes only.
    vision = siglip.SiglipConfig(width=48, depth=2, mlp_dim=96, num_heads=3, patch_size=14)
    config = pi0.Pi0Config(
        pi05=pi05, paligemma_variant="dummy", action_expert_variant="dummy", vision_variant=vision, image_size=56
    )
    shapes = pi0.param_shapes(config)
    got = tc.torch_shapes(shapes)
    g = gemma.get_gemma_config("dummy")  # width 64, depth 4, mlp 128, 8 heads of 16, 1 kv head
    d, f, nh, kh = g.width, g.mlp_dim, g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    want = {
        VIS + "embeddings.patch_embedding.weight": (48, 3, 14, 14),
        VIS + "embeddings.position_embedding.weight": (16, 48),  # (56 / 14)² patches
        VIS + "encoder.layers.1.self_attn.q_proj.weight": (48, 48),
        VIS + "encoder.layers.1.self_attn.q_proj.bias": (48,),
        VIS + "encoder.layers.1.mlp.fc1.weight": (96, 48),
        VLM + "multi_modal_projector.linear.weight": (d, 48),
        LM + "embed_tokens.weight": (257152, d),
        LM + "layers.3.self_attn.q_proj.weight": (nh, d),
        LM + "layers.3.self_attn.k_proj.weight": (kh, d),
        LM + "layers.3.self_attn.o_proj.weight": (d, nh),
        LM + "layers.3.mlp.gate_proj.weight": (f, d),
        LM + "layers.3.mlp.down_proj.weight": (d, f),
        EXP + "layers.3.self_attn.o_proj.weight": (d, nh),
        "action_in_proj.weight": (d, 32),
        "action_out_proj.weight": (32, d),
    }
    if pi05:
        want[EXP + "layers.3.input_layernorm.dense.weight"] = (3 * d, d)
        want[EXP + "norm.dense.weight"] = (3 * d, d)
        want["time_mlp_in.weight"] = (d, d)
    else:
        want[EXP + "layers.3.input_layernorm.weight"] = (d,)
        want["action_time_mlp_in.weight"] = (d, 2 * d)
        want["state_proj.weight"] = (d, 32)
    for key, shape in want.items():
        assert got.get(key) == shape, key
    assert LM + "layers.4.self_attn.q_proj.weight" not in got
    # A VLM layer: q, k, v, o, gate, up, down and two norms.
    assert sum(1 for k in got if k.startswith(LM + "layers.0.")) == 9


def test_same_size_wrong_shape_is_not_reshaped_silently(model):
    config, params = model
    sd = independent_torch_state_dict(params, config.pi05)
    key = LM + "layers.0.input_layernorm.weight"
    sd[key] = sd[key].reshape(2, 16)  # 32 values, but not a [32] vector
    with pytest.raises(
        checkpoints.CheckpointError, match=r"pre_attention_norm/scale: expected \[32\] per slice, found .*\[2, 16\]"
    ):
        tc.from_torch(sd, pi0.param_shapes(config))


def test_header_with_wrong_dtype_label_is_named(tmp_path):
    # A safetensors header is an 8-byte little-endian length + JSON; relabel one F32 tensor as F64
    # (same offsets), so its declared size no longer matches its bytes.
    safetensors.numpy.save_file({"w": np.ones((4, 4), np.float32)}, tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header["w"]["dtype"] == "F32"
    header["w"]["dtype"] = "F64"
    text = json.dumps(header).encode().ljust(n)
    (tmp_path / "model.safetensors").write_bytes(raw[:8] + text + raw[8 + n :])
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        tc.load_safetensors(tmp_path)
