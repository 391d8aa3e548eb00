"""The checkpoint model card states how the input embeddings and ``lm_head`` are stored: ``model.embed_dtype`` and
``bits.embeddings`` when set, "model dtype" when null (:mod:`llmquant.quant.model_card`).

The card of a real checkpoint following ``results.json``: tests/test_hf_transformers.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.quant.model_card import model_card

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"


def _meta(**model):
    return {"config": {"name": "c", "method": "e8", "model": {"spec": "tiny-random-llama", **model}}}


def _bits_rows(card: str) -> list[str]:
    table = card.split("## Stored bits per entry")[1].split("## Results")[0]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| tensor")]


def test_embed_dtype_and_its_bits_are_stated():
    card = model_card(_meta(dtype="float32", embed_dtype="bfloat16"),
                      {"bits": {"weights": 4.0234375, "activations": 4.0, "kv": 4.25, "embeddings": 16.0}})
    assert "| embeddings / lm_head (bfloat16) | 16.0000 |" in _bits_rows(card)
    assert "- Embeddings / lm_head: not quantized, stored in bfloat16 (computed in float32)" in card
    card = model_card(_meta(dtype="float16", embed_dtype="float16"), {"bits": {"embeddings": 16.0}})
    assert "| embeddings / lm_head (float16) | 16.0000 |" in _bits_rows(card)
    assert "stored in float16 (the model dtype)" in card


def test_null_embed_dtype_says_model_dtype():
    for model in ({"dtype": "float32", "embed_dtype": None}, {"dtype": "float32"}):  # null, or an older config
        card = model_card(_meta(**model), {"bits": {"weights": 4.5, "activations": 16.0, "kv": 16.0}})
        assert "| embeddings / lm_head (model dtype) | - |" in _bits_rows(card)
        assert "- Embeddings / lm_head: not quantized, stored in the model dtype (float32)" in card
    assert len(_bits_rows(card)) == 4  # weights, activations, kv, embeddings


def test_card_of_a_bf16_embedding_checkpoint(tmp_path):
    """End to end: ``model.embed_dtype: bfloat16`` -> ``results.json`` ``bits.embeddings`` (the stored figure of the
    tensors) -> the card row, and the tensors in the file are bfloat16."""
    from safetensors import safe_open

    from llmquant import api
    from llmquant.config import load_config

    cfg = load_config(TINY, ["calibration.n_samples=2", "calibration.seq_len=16", "weights.algorithm=rtn",
                             "activations.method=none", "kv.method=none", "model.embed_dtype=bfloat16"])
    out = tmp_path / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    bits = json.loads((out / "results.json").read_text())["bits"]
    assert bits["embeddings"] == 16.0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    card = (out / "README.md").read_text()
    assert "| embeddings / lm_head (bfloat16) | 16.0000 |" in card
    assert "stored in bfloat16 (computed in float32)" in card
    model, _ = api.load(out, device="cpu")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
