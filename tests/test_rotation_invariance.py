"""Computational invariance of the rotation plan: rotated models produce the original logits."""

import json

import pytest
import torch

from llmquant.models import (
    SUPPORTED_ARCHITECTURES,
    RotationPlan,
    get_adapter,
    install_rotation_modules,
    rotate_model,
    tiny_random_model,
)
from llmquant.rotation import HadamardRotation, InputRotatedLinear, OutputRotated

F64 = torch.float64


def _ids(batch=2, seq=12, seed=0):
    # seq 12 > the tiny sliding windows (Mistral 6, Gemma3 4) so that windowed masks are exercised
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_rotated_tiny_model_fp64_same_logits(arch):
    model = tiny_random_model(arch, seed=1, dtype=F64)
    ids = _ids()
    ref = model(ids).logits
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    plan = rotate_model(model, seed=11)
    out = model(ids).logits
    # transformers computes RMSNorm / RoPE in fp32 even for fp64 models, hence ~1e-7, not 1e-15
    assert _rel(out, ref) <= 1e-6
    assert not torch.allclose(model.model.layers[0].self_attn.q_proj.weight, q_before)
    ad = get_adapter(model)
    layer = ad.layers(model)[0]
    assert isinstance(ad.get(layer, "down"), InputRotatedLinear)
    assert isinstance(ad.get(layer, "attn").llmquant_qk_rotation, HadamardRotation)
    assert model.config._attn_implementation in ("llmquant", "llmquant_eager")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    if arch == "gemma3":
        assert isinstance(layer.post_attention_layernorm, OutputRotated)
        assert plan.output_rotated == ["post_attention_layernorm", "post_feedforward_layernorm"]
    assert RotationPlan.from_dict(json.loads(plan.to_json())) == plan


@torch.no_grad()
@pytest.mark.parametrize("flags", [{"online_down": False}, {"v_o": False}, {"qk": False},
                                   {"online_down": False, "v_o": False, "qk": False}])
def test_partial_plans_are_invariant(flags):
    model = tiny_random_model("qwen3", seed=2, dtype=F64)
    ids = _ids(seed=3)
    ref = model(ids).logits
    plan = rotate_model(model, seed=4, **flags)
    assert _rel(model(ids).logits, ref) <= 1e-6
    ad = get_adapter(model)
    layer = ad.layers(model)[0]
    assert isinstance(ad.get(layer, "down"), InputRotatedLinear) == (plan.online_down is not None)
    if not plan.qk:
        assert plan.attn_implementation is None and model.config._attn_implementation == "eager"


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_generation_with_kv_cache_unchanged(arch):
    model = tiny_random_model(arch, seed=3, dtype=F64)
    prompt = _ids(batch=1, seq=5, seed=5)
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    ref = model.generate(prompt, **kw)
    rotate_model(model, seed=0)
    assert torch.equal(model.generate(prompt, **kw), ref)


@torch.no_grad()
def test_kv_quant_slots_are_called_on_rotated_keys():
    model = tiny_random_model("mistral", seed=4, dtype=F64)
    rotate_model(model, seed=1)
    ad = get_adapter(model)
    seen = []
    for layer in ad.layers(model):
        attn = ad.get(layer, "attn")
        attn.llmquant_k_quant = lambda k: seen.append(("k", tuple(k.shape))) or k
        attn.llmquant_v_quant = lambda v: seen.append(("v", tuple(v.shape))) or v
    ids = _ids(batch=2, seq=7)
    ref = model(ids).logits
    assert seen == [("k", (2, 2, 7, 16)), ("v", (2, 2, 7, 16))] * 2
    # a quantizer that is not the identity changes the output: the slots are in the data path
    for layer in ad.layers(model):
        ad.get(layer, "attn").llmquant_v_quant = lambda v: torch.zeros_like(v)
    assert _rel(model(ids).logits, ref) > 1e-3


@torch.no_grad()
def test_keys_are_hadamard_rotated_before_kv_quant():
    """The key given to llmquant_k_quant equals the RoPE'd key times Q_k (checked via an unrotated copy)."""
    rotated, plain = tiny_random_model("llama", seed=6, dtype=F64), tiny_random_model("llama", seed=6, dtype=F64)
    rotate_model(rotated, seed=2, qk=True)
    rotate_model(plain, seed=2, qk=False)
    keys = {}
    a_r, a_p = rotated.model.layers[0].self_attn, plain.model.layers[0].self_attn
    def grab(name):
        def k_quant(k):
            keys[name] = k
            return k
        return k_quant

    a_r.llmquant_k_quant = grab("rot")
    plain.set_attn_implementation(rotated.config._attn_implementation)
    a_p.llmquant_qk_rotation = None
    a_p.llmquant_k_quant = grab("plain")
    ids = _ids(batch=1, seq=6)
    rotated(ids)
    plain(ids)
    q = a_r.llmquant_qk_rotation.matrix()
    torch.testing.assert_close(keys["rot"], keys["plain"] @ q, rtol=0, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_install_rotation_modules_then_load_state_dict(arch):
    """A checkpoint loader rebuilds the structure from the plan dict and loads the rotated weights."""
    src = tiny_random_model(arch, seed=7, dtype=F64)
    ids = _ids(seed=8)
    ref = src(ids).logits
    plan = rotate_model(src, seed=9)
    state = src.state_dict()
    dst = tiny_random_model(arch, seed=123, dtype=F64)  # different weights, same architecture
    install_rotation_modules(dst, RotationPlan.from_dict(json.loads(plan.to_json())))
    dst.load_state_dict(state, strict=True)
    assert _rel(dst(ids).logits, ref) <= 1e-6


def test_rotate_twice_and_bad_plan_are_rejected():
    model = tiny_random_model("llama")
    plan = rotate_model(model)
    with pytest.raises(ValueError, match="already rotated"):
        rotate_model(model)
    with pytest.raises(ValueError, match="plan is for"):
        install_rotation_modules(tiny_random_model("qwen2"), plan)
    with pytest.raises(ValueError, match="version"):
        RotationPlan.from_dict({**plan.to_dict(), "version": 99})
    with pytest.raises(TypeError, match="seed"):
        rotate_model(tiny_random_model("llama"), seed="zero")


def test_rotate_accepts_config_object():
    model = tiny_random_model("llama", dtype=F64)
    plan = rotate_model(model, {"seed": 5, "online_down": False, "v_o": True, "qk": False})
    assert plan.seed == 5 and plan.online_down is None and plan.qk is None and plan.v_o == {"n": 16, "seed": 7}


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_fp32_rotation_logits_and_ppl(data_dir):
    """SmolLM2-135M in fp32: logits within 1e-3 relative; short-context WikiText-2 perplexity unchanged."""
    from llmquant.models import load_model

    model, tok = load_model("smollm2-135m", dtype=torch.float32)
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")[:20000]
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][: 2 * 128]).reshape(2, 128)

    def nll(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                                 ids[:, 1:].reshape(-1))

    ref = model(ids).logits
    rotate_model(model, seed=0)
    out = model(ids).logits
    assert _rel(out, ref) <= 1e-3
    ppl_ref, ppl_rot = nll(ref).exp().item(), nll(out).exp().item()
    assert abs(ppl_rot - ppl_ref) / ppl_ref < 5e-4, (ppl_ref, ppl_rot)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_rotated_save_pretrained_round_trip(arch, tmp_path):
    from llmquant.models import load_rotated_pretrained

    model = tiny_random_model(arch, seed=10, dtype=F64)
    ids = _ids(seed=11)
    ref = model(ids).logits
    plan = rotate_model(model, seed=12)
    model.save_pretrained(tmp_path)
    loaded = load_rotated_pretrained(tmp_path, dtype=F64)
    assert loaded.llmquant_rotation_plan == plan
    assert loaded.config._attn_implementation == model.config._attn_implementation
    assert _rel(loaded(ids).logits, ref) <= 1e-6
    tiny_random_model(arch).save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="llmquant_rotation"):
        load_rotated_pretrained(tmp_path / "plain")


@torch.no_grad()
@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_online_norm_gains_plan_is_invariant_and_reloads(arch):
    """norm_gains="online": gains stay in the norms, each pre-norm output is rotated online, the residual
    stream (embeddings, lm_head, Gemma post-norms) is untouched; logits unchanged, plan round-trips and the
    module structure rebuilds from it."""
    model = tiny_random_model(arch, seed=1, dtype=F64)
    ids = _ids()
    ref = model(ids).logits
    emb = model.model.embed_tokens.weight.clone()
    norm_w = model.model.layers[0].input_layernorm.weight.clone()
    plan = rotate_model(model, seed=11, norm_gains="online")
    assert _rel(model(ids).logits, ref) <= 1e-6
    assert plan.residual is None and plan.pre_norm_online == {"n": model.config.hidden_size, "seed": 11}
    ad = get_adapter(model)
    layer = ad.layers(model)[0]
    assert isinstance(layer.input_layernorm, OutputRotated)
    assert torch.equal(layer.input_layernorm.inner.weight, norm_w)  # gain kept, not folded
    assert torch.equal(model.model.embed_tokens.weight, emb)  # residual stream not rotated
    if arch == "gemma3":
        assert not isinstance(layer.post_attention_layernorm, OutputRotated)
    back = RotationPlan.from_dict(json.loads(plan.to_json()))
    assert back == plan
    fresh = tiny_random_model(arch, seed=1, dtype=F64)
    install_rotation_modules(fresh, back)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert _rel(fresh(ids).logits, ref) <= 1e-6
    with pytest.raises(ValueError, match="norm_gains"):
        rotate_model(tiny_random_model(arch, seed=1), norm_gains="half")
