"""Architecture role maps and tiny random models."""

import pytest
import torch
from torch import nn

from llmquant.models import SUPPORTED_ARCHITECTURES, get_adapter, tiny_random_model
from llmquant.rotation import split_order

LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_roles_resolve_on_tiny_model(arch):
    model = tiny_random_model(arch)
    ad = get_adapter(model)
    assert ad is not None and get_adapter(model.config) == ad
    assert isinstance(ad.get(model, "embed"), nn.Embedding)
    assert isinstance(ad.get(model, "lm_head"), nn.Linear)
    assert type(ad.get(model, "final_norm")).__name__.endswith("RMSNorm")
    assert ad.get(model, "rotary") is not None
    layers = ad.layers(model)
    assert len(layers) == 2
    for layer in layers:
        for r in LINEAR_ROLES:
            assert isinstance(ad.get(layer, r), nn.Linear), (arch, r)
        for r in ("attn_in_norm", "mlp_in_norm", "attn_out_norm", "mlp_out_norm", "q_norm", "k_norm"):
            m = ad.get(layer, r)
            assert m is None or type(m).__name__.endswith("RMSNorm"), (arch, r)
    # Every named module of the decoder layer that is a Linear or a norm has a role (nothing missed).
    named = {n for n, m in layers[0].named_modules() if isinstance(m, nn.Linear) or n.endswith("norm")}
    role_paths = {p for r, p in ad.roles.items() if p is not None}
    assert named <= role_paths, named - role_paths


def test_gemma3_extra_norms_and_offset():
    ad = get_adapter("gemma3")
    assert ad.model_type == "gemma3_text" and ad.norm_offset == 1.0 and ad.norm_identity_weight == 0.0
    assert ad.roles["attn_out_norm"] == "post_attention_layernorm"
    assert ad.roles["mlp_in_norm"] == "pre_feedforward_layernorm"
    assert get_adapter("llama").norm_offset == 0.0


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config

    with pytest.raises(ValueError) as exc:
        get_adapter(GPT2Config())
    msg = str(exc.value)
    assert "'gpt2'" in msg and all(a in msg for a in SUPPORTED_ARCHITECTURES)


def test_multimodal_gemma3_config_is_rejected_with_hint():
    class Cfg:
        model_type = "gemma3"

    with pytest.raises(ValueError, match="Gemma3ForCausalLM"):
        get_adapter(Cfg())


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_tiny_models_exercise_non_power_of_two_hadamards(arch):
    model = tiny_random_model(arch, seed=1)
    cfg = model.config
    assert split_order(cfg.hidden_size)[0] == 12
    assert split_order(cfg.intermediate_size)[0] == 20
    assert get_adapter(model).get(get_adapter(model).layers(model)[0], "attn").head_dim == 16
    assert cfg.vocab_size == 128 and cfg.num_hidden_layers == 2
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA


def test_tiny_model_is_seeded():
    a, b, c = tiny_random_model("qwen2", seed=5), tiny_random_model("qwen2", seed=5), tiny_random_model("qwen2", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])
    # norm gains are not all 1 so that folding is exercised
    assert not torch.allclose(a.model.layers[0].input_layernorm.weight, torch.ones(96))


def test_tiny_unknown_arch():
    with pytest.raises(ValueError, match="llama"):
        tiny_random_model("gpt2")
