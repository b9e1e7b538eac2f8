"""The exported files against the loading code of the tools they are for, where that code imports.

PyTorch names: openpi's PI0Pytorch module tree (src/openpi/models_pytorch/gemma_pytorch.py,
PaliGemmaWithExpertModel: transformers' PaliGemmaForConditionalGeneration and GemmaForCausalLM with
its embedding dropped; pi0_pytorch.py, the projections), which LeRobot's PI0Pytorch copies under
`model.`, built at full size on the meta device: its state dict is what openpi's strict
safetensors.torch.load_model and LeRobot's strict load_state_dict expect. LeRobot: its own config
and processor-pipeline loaders read an export's config.json and processor files. Each test skips
where its library is not installed (neither is a pirl requirement).
"""

import numpy as np
import pytest

from pirl.checkpoints import lerobot, pytorch
from pirl.data import norm_stats as ns
from pirl.models import pi0


def test_pytorch_names_match_openpis_module_tree():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    if int(transformers.__version__.split(".")[0]) >= 5:
        # openpi pins transformers==4.53.2 (pyproject.toml) for PI0Pytorch; 5.x moved the SigLIP
        # tower's modules (vision_tower.vision_model.* → vision_tower.*), so its tree is not openpi's.
        pytest.skip(f"openpi's module tree needs transformers 4.x, found {transformers.__version__}")
    from transformers.models.auto import CONFIG_MAPPING

    vlm = CONFIG_MAPPING["paligemma"]()
    vlm._vocab_size = 257152
    vlm.image_token_index = 257152
    text = vlm.text_config
    text.hidden_size, text.intermediate_size, text.num_attention_heads = 2048, 16384, 8
    text.head_dim, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size = 256, 18, 1, 257152
    vlm.vision_config.intermediate_size, vlm.vision_config.projection_dim = 4304, 2048
    expert = CONFIG_MAPPING["gemma"](
        head_dim=256,
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=8,
        num_hidden_layers=18,
        num_key_value_heads=1,
        vocab_size=257152,
    )

    class WithExpert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.paligemma = transformers.PaliGemmaForConditionalGeneration(config=vlm)
            self.gemma_expert = transformers.GemmaForCausalLM(config=expert)
            self.gemma_expert.model.embed_tokens = None

    class Pi0(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.paligemma_with_expert = WithExpert()
            self.action_in_proj = torch.nn.Linear(32, 1024)
            self.action_out_proj = torch.nn.Linear(1024, 32)
            self.state_proj = torch.nn.Linear(32, 1024)
            self.action_time_mlp_in = torch.nn.Linear(2048, 1024)
            self.action_time_mlp_out = torch.nn.Linear(1024, 1024)

    with torch.device("meta"):
        module = {k: tuple(v.shape) for k, v in Pi0().state_dict().items()}
    written = pytorch.torch_shapes(pi0.param_shapes(pi0.Pi0Config()))
    written[pytorch.EXPERT_HEAD] = (257152, 1024)  # export.write_pytorch adds it
    # The VLM's lm_head is tied to embed_tokens: strict loaders accept either name for the pair.
    assert set(module) - set(written) == {pytorch.TIED_HEAD}
    assert set(written) <= set(module)
    assert {k: module[k] for k in written} == written


def test_lerobot_reads_the_config_and_processors(tmp_path):
    # Importing the policy registers its config type ("pi0") with LeRobot's config parser.
    pytest.importorskip("lerobot.policies.pi0", reason="lerobot is not importable here")
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.processor import PolicyProcessorPipeline

    rng = np.random.default_rng(0)
    stats = {"state": ns.compute(rng.normal(size=(50, 8))), "actions": ns.compute(rng.normal(size=(50, 7)))}
    lerobot.write(
        tmp_path,
        pi05=False,
        paligemma_variant="gemma_2b",
        action_expert_variant="gemma_300m",
        action_horizon=10,
        n_action_steps=5,
        num_inference_steps=10,
        max_token_len=48,
        model_action_dim=32,
        image_size=224,
        cameras=["image", "wrist_image"],
        stats=stats,
        env_action_dim=7,
        norm="zscore",
        discrete_state_input=False,
        dtype="bfloat16",
    )
    config = PreTrainedConfig.from_pretrained(tmp_path)
    assert (config.type, config.chunk_size, config.n_action_steps, config.tokenizer_max_length) == ("pi0", 10, 5, 48)
    assert config.output_features["action"].shape == (7,) and config.input_features["observation.state"].shape == (8,)
    # The tokenizer would download PaliGemma's: any object stands in (it is not called here).
    pre = PolicyProcessorPipeline.from_pretrained(
        tmp_path, config_filename="policy_preprocessor.json", overrides={"tokenizer_processor": {"tokenizer": object()}}
    )
    post = PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="policy_postprocessor.json")
    (norm,) = [s for s in pre.steps if type(s).__name__ == "NormalizerProcessorStep"]
    (unnorm,) = [s for s in post.steps if type(s).__name__ == "UnnormalizerProcessorStep"]
    for step, feature, key in ((norm, "observation.state", "state"), (unnorm, "action", "actions")):
        for stat in ("mean", "std", "q01", "q99"):
            np.testing.assert_array_equal(step._tensor_stats[feature][stat].numpy(), getattr(stats[key], stat))
