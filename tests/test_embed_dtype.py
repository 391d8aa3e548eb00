"""``model.embed_dtype``: input embeddings and ``lm_head`` stored in float16 / bfloat16, computed in the model's
dtype; validated, hashed only when it changes the model, saved, counted in the bits, applied on load (llmquant
loader and transformers' ``from_pretrained``), tied embeddings stay one tensor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant import api
from llmquant.config import ConfigError, config_from_dict, config_hash, config_to_dict, load_config
from llmquant.config.bits import embedding_bits
from llmquant.models.embed_dtype import is_stored, set_embed_dtype
from llmquant.quant.checkpoint import WEIGHTS_FILE, load_quantized

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
FAST = ["calibration.n_samples=4", "calibration.seq_len=32", "weights.algorithm=rtn"]
TIED = ["model.spec=tiny-random-llama", "rotation.enabled=false", "weights.method=scalar",
        "activations.method=none", "kv.method=none"]
ROTATED = ["model.spec=tiny-random-gemma3", "rotation.norm_gains=fold"]


def _ids(vocab=128):
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(3))


def test_config_validation_and_hash():
    base = load_config(TINY)
    assert base.model.embed_dtype is None
    with pytest.raises(ConfigError, match=r"model\.embed_dtype: 'int8' is not one of float32, float16, bfloat16"):
        load_config(TINY, ["model.embed_dtype=int8"])
    # a saved config from before the key existed: loads, same hash as with the key null or equal to model.dtype
    old = config_to_dict(base)
    old["model"].pop("embed_dtype")
    assert config_from_dict(old) == base
    assert config_hash(load_config(TINY, ["model.embed_dtype=float32"])) == config_hash(base)
    assert config_hash(load_config(TINY, ["model.embed_dtype=bfloat16"])) != config_hash(base)
    assert embedding_bits(base) == 32 and embedding_bits(load_config(TINY, ["model.embed_dtype=float16"])) == 16


@torch.no_grad()
def test_stored_modules_compute_from_the_rounded_weights():
    from llmquant.models.tiny import tiny_random_model

    for arch in ("llama", "gemma3", "qwen3"):  # tied; tied with embed_scale; untied
        model = tiny_random_model(arch)
        ref = tiny_random_model(arch)
        emb, head = ref.model.embed_tokens, ref.lm_head
        emb.weight.copy_(emb.weight.to(torch.bfloat16).float())
        if head.weight is not emb.weight:
            head.weight.copy_(head.weight.to(torch.bfloat16).float())
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        assert set_embed_dtype(model, torch.bfloat16) == ["model.embed_tokens", "lm_head"]
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        assert is_stored(model.lm_head) and isinstance(model.lm_head, nn.Linear)
        ids = _ids()
        got, want = model(ids).logits, ref(ids).logits
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        h = model.model.embed_tokens(ids)
        assert torch.equal(h, ref.model.embed_tokens(ids))  # a lookup: exact


@torch.no_grad()
def test_lm_head_blocks_cover_every_row(monkeypatch):
    import llmquant.models.embed_dtype as ed

    monkeypatch.setattr(ed, "HEAD_BLOCK_ROWS", 7)  # 128 rows: 18 full blocks + a partial one
    lin = nn.Linear(16, 128, bias=True)
    ref = nn.Linear(16, 128, bias=True)
    ref.load_state_dict(lin.state_dict())
    ref.weight.copy_(ref.weight.to(torch.float16).float())
    emb = nn.Embedding(128, 16)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.embed_tokens = emb
            self.model.layers = nn.ModuleList()
            self.lm_head = lin
            self.config = type("C", (), {"model_type": "llama"})()

    m = M()
    set_embed_dtype(m, torch.float16)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(m.lm_head(x), ref(x), rtol=1e-6, atol=1e-6)
    assert ed.HEAD_BLOCK_ROWS == 7


@pytest.fixture(scope="module", params=["tied", "rotated"])
def ckpt(request, tmp_path_factory):
    over = TIED if request.param == "tied" else ROTATED
    cfg = load_config(TINY, [*FAST, *over, "model.embed_dtype=bfloat16"])
    out = tmp_path_factory.mktemp(request.param) / "ckpt"
    model, _, report, _ = api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return request.param, out, model, report


def test_checkpoint_stores_bf16_and_counts_it(ckpt):
    import json

    from llmquant.quant.stored_bits import safetensors_sizes

    kind, out, model, report = ckpt
    from safetensors import safe_open

    with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    emb_names = [k for k in dtypes if k.endswith("embed_tokens.weight") or k == "lm_head.weight"]
    assert emb_names and all(dtypes[k] == "BF16" for k in emb_names)
    assert len(emb_names) == (1 if kind == "tied" else 2)
    assert report["bits"]["embeddings"] == 16.0
    results = json.loads((out / "results.json").read_text())
    assert results["bits"]["embeddings"] == 16.0
    sizes = safetensors_sizes(out / WEIGHTS_FILE)
    n = model.model.embed_tokens.weight.numel()
    assert sum(sizes[k] for k in emb_names) * 8 == 16 * n * len(emb_names)


@torch.no_grad()
def test_load_applies_it(ckpt):
    from tests.test_load_materialize import dense_load

    kind, out, model, _ = ckpt
    loaded, _, cfg = load_quantized(out, backend="reference")
    assert cfg.model.embed_dtype == "bfloat16"
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16 and is_stored(loaded.lm_head)
    if kind == "tied":
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ref = dense_load(out)  # the dense loader does not know the option: the same tensors, read through it
    from llmquant.models.embed_dtype import apply_embed_dtype

    assert apply_embed_dtype(ref, cfg) != []  # bf16 values loaded into float32, cast back to bf16: exact
    from llmquant.quant.linear import set_backend

    set_backend(model, "reference")
    set_backend(ref, "reference")
    ids = _ids(int(loaded.config.vocab_size))
    logits = loaded(ids).logits
    assert torch.equal(logits, model(ids).logits)
    assert torch.equal(logits, ref(ids).logits)


@torch.no_grad()
def test_from_pretrained_applies_it(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    import llmquant  # noqa: F401  (registers the quantizer)

    kind, out, _, _ = ckpt
    loaded, _, _ = load_quantized(out)
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    if kind == "tied":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = _ids(int(model.config.vocab_size))
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    model.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again")).eval()
    assert again.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(again(ids).logits, loaded(ids).logits)
