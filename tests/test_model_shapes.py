"""Full-size π0 / π0.5 parameter trees via jax.eval_shape (nothing is allocated)."""

import jax
import pytest
from flax import traverse_util

from pirl.models import pi0

L = 18  # Gemma depth
V = 27  # SigLIP depth

# Paths and shapes of the reference (openpi's tree); expert leaves carry the "_1" suffix.
COMMON = {
    "PaliGemma/llm/embedder/input_embedding": (257152, 2048),
    "PaliGemma/llm/layers/attn/q_einsum/w": (L, 8, 2048, 256),
    "PaliGemma/llm/layers/attn/kv_einsum/w": (L, 2, 1, 2048, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum/w": (L, 8, 256, 2048),
    "PaliGemma/llm/layers/mlp/gating_einsum": (L, 2, 2048, 16384),
    "PaliGemma/llm/layers/mlp/linear": (L, 16384, 2048),
    "PaliGemma/llm/layers/pre_attention_norm/scale": (L, 2048),
    "PaliGemma/llm/layers/pre_ffw_norm/scale": (L, 2048),
    "PaliGemma/llm/final_norm/scale": (2048,),
    "PaliGemma/llm/layers/attn/q_einsum_1/w": (L, 8, 1024, 256),
    "PaliGemma/llm/layers/attn/kv_einsum_1/w": (L, 2, 1, 1024, 256),
    "PaliGemma/llm/layers/attn/attn_vec_einsum_1/w": (L, 8, 256, 1024),
    "PaliGemma/llm/layers/mlp_1/gating_einsum": (L, 2, 1024, 4096),
    "PaliGemma/llm/layers/mlp_1/linear": (L, 4096, 1024),
    "PaliGemma/img/embedding/kernel": (14, 14, 3, 1152),
    "PaliGemma/img/embedding/bias": (1152,),
    "PaliGemma/img/pos_embedding": (1, 256, 1152),
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel": (V, 1152, 16, 72),
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/key/kernel": (V, 1152, 16, 72),
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/value/kernel": (V, 1152, 16, 72),
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/kernel": (V, 16, 72, 1152),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel": (V, 1152, 4304),
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel": (V, 4304, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_0/scale": (V, 1152),
    "PaliGemma/img/Transformer/encoderblock/LayerNorm_1/bias": (V, 1152),
    "PaliGemma/img/Transformer/encoder_norm/scale": (1152,),
    "PaliGemma/img/head/kernel": (1152, 2048),
    "action_in_proj/kernel": (32, 1024),
    "action_out_proj/kernel": (1024, 32),
    "action_out_proj/bias": (32,),
}
PI0 = {
    "PaliGemma/llm/layers/pre_attention_norm_1/scale": (L, 1024),
    "PaliGemma/llm/layers/pre_ffw_norm_1/scale": (L, 1024),
    "PaliGemma/llm/final_norm_1/scale": (1024,),
    "state_proj/kernel": (32, 1024),
    "action_time_mlp_in/kernel": (2048, 1024),
    "action_time_mlp_out/kernel": (1024, 1024),
}
PI05 = {
    # adaRMS: Dense 1024 → 3·1024 (scale, shift, gate) in place of the norm's scale.
    "PaliGemma/llm/layers/pre_attention_norm_1/Dense_0/kernel": (L, 1024, 3072),
    "PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/bias": (L, 3072),
    "PaliGemma/llm/final_norm_1/Dense_0/kernel": (1024, 3072),
    "time_mlp_in/kernel": (1024, 1024),
    "time_mlp_out/kernel": (1024, 1024),
}


@pytest.mark.parametrize(
    ("pi05", "specific", "absent", "billions"),
    [
        (False, PI0, ["time_mlp_in/kernel", "PaliGemma/llm/final_norm_1/Dense_0/kernel"], 3.238),
        (True, PI05, ["state_proj/kernel", "PaliGemma/llm/layers/pre_ffw_norm_1/scale"], 3.353),
    ],
)
def test_full_size_tree(pi05, specific, absent, billions):
    shapes = pi0.param_shapes(pi0.Pi0Config(pi05=pi05))
    flat = traverse_util.flatten_dict(shapes, sep="/")
    for path, shape in {**COMMON, **specific}.items():
        assert path in flat, path
        assert flat[path].shape == shape, (path, flat[path].shape)
    for path in absent:
        assert path not in flat
    assert all(x.dtype == jax.numpy.float32 for x in flat.values())
    # ≈ 3.24 B (π0) and ≈ 3.35 B (π0.5) parameters, of which ≈ 0.41 B in SigLIP.
    assert abs(pi0.count_params(shapes) / 1e9 - billions) < 0.001
    assert abs(pi0.count_params(shapes["PaliGemma"]["img"]) / 1e9 - 0.4148) < 0.001


def test_full_size_prefix_length():
    config = pi0.Pi0Config()
    # 3 cameras × 256 patches + 48 prompt tokens.
    assert config.tokens_per_image == 256
    assert config.prefix_len == 816
    assert pi0.Pi0Config(pi05=True).max_token_len == 200
