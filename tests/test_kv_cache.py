"""The packed lattice KV cache (:mod:`llmquant.quant.kv_cache`): bit-exact round trips against the reference
``RowQuantizer`` fake-quant, stored bytes, sliding windows, and generation on a tiny W4A4KV4 model equal to the
fake-quant path token by token (and logit by logit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.lattice.beta_sets import load_beta_set
from llmquant.quant.activations import RowQuantizer
from llmquant.quant.kv_cache import LatticeKVCache, PackedRows, make_cache

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"


def _lattice(k: int = 2) -> RowQuantizer:
    return RowQuantizer("lattice", lattice="E8", q=14, betas=load_beta_set("E8", 14, k, "min_error"))


def _rows(shape, seed=0, heavy=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if heavy:  # a few outlier entries: exercises the guarded scale and the larger betas
        x = x * (1 + 20 * (torch.rand(shape, generator=g) > 0.98))
    return x


@pytest.mark.parametrize("quant", [_lattice(2), _lattice(4), RowQuantizer("scalar", bits=4),
                                   RowQuantizer("scalar", bits=4, symmetric=True, clip_ratio=0.9),
                                   RowQuantizer("scalar", bits=8)],
                         ids=["e8-k2", "e8-k4", "int4", "int4-sym", "int8"])
@pytest.mark.parametrize("d", [64, 16])
def test_round_trip_is_bit_exact_against_the_reference_quantizer(quant, d, monkeypatch):
    from llmquant.quant import kv_cache

    monkeypatch.setattr(kv_cache, "DECODE_VECTORS", 40)  # several decode chunks
    x = _rows((2, 3, 21, d), seed=d, heavy=True)
    store = PackedRows(quant)
    for a, b in ((0, 13), (13, 14), (14, 15), (15, 21)):  # a prefill, then token by token
        store.append(x[:, :, a:b])
    assert len(store) == 21
    ref = quant.quantize_rows(x)
    assert torch.equal(store.decoded(torch.float32), ref)
    assert torch.equal(store.decoded(torch.bfloat16), ref.to(torch.bfloat16))


def test_box_round_trip_is_bit_exact():
    from llmquant.lattice.box import E8BoxCodec

    quant = RowQuantizer("box", codec=E8BoxCodec(3))
    x = _rows((1, 2, 9, 32), seed=5)
    store = PackedRows(quant)
    store.append(x[:, :, :4])
    store.append(x[:, :, 4:])
    assert torch.equal(store.decoded(torch.float32), quant.quantize_rows(x))


def test_stored_bytes_are_the_counted_kv_bits():
    """E8 q=14 k=2, D=64: nibble codes (4 bits/entry) + one β bit per 8 entries + an fp16 scale per row."""
    quant = _lattice(2)
    store = PackedRows(quant)
    store.append(_rows((1, 3, 100, 64)))
    live = {n: t[:, :, store.start:store.end] for n, t in store.t.items()}
    per_row = sum(t[0, 0, 0].numel() * t.element_size() for t in live.values())
    assert per_row == 64 * 4 // 8 + 1 + 2  # 35 bytes = 4.375 bits per entry
    assert {n: t.dtype for n, t in live.items()} == {"words": torch.int32, "beta": torch.uint8, "scale": torch.float16}


def test_keep_last_and_growth_keep_the_newest_rows():
    quant = _lattice(2)
    x = _rows((1, 1, 300, 16), seed=3)
    store = PackedRows(quant)
    for t in range(300):
        store.append(x[:, :, t:t + 1])
        store.keep_last(7)
    assert len(store) == 7
    assert torch.equal(store.decoded(torch.float32), quant.quantize_rows(x[:, :, -7:]))


@pytest.fixture(scope="module")
def tiny_kv4():
    from llmquant import api
    from llmquant.config import load_config
    from llmquant.models.tiny import tiny_random_model

    cfg = load_config(TINY, ["model.spec=tiny-random-llama", "calibration.n_samples=4", "calibration.seq_len=32",
                             "calibration.batch_size=4", "model.backend=reference"])
    model = tiny_random_model("llama")
    calib = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    api.quantize(model, cfg, calib, progress=False, log=None)
    return model


def _greedy(model, ids, cache, n):
    tokens, logits_seen = [], []
    inp = ids
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=inp, cache=cache, use_cache=True).logits[:, -1]
            logits_seen.append(logits)
            inp = logits.argmax(-1, keepdim=True)
            tokens.append(int(inp))
    return tokens, torch.cat(logits_seen)


def test_long_greedy_generation_equals_the_fake_quant_reference(tiny_kv4):
    from transformers import DynamicCache

    cache = make_cache(tiny_kv4)
    assert isinstance(cache, LatticeKVCache)
    ids = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(1))
    got, got_logits = _greedy(tiny_kv4, ids, cache, 64)
    ref, ref_logits = _greedy(tiny_kv4, ids, DynamicCache(config=tiny_kv4.config), 64)
    assert got == ref
    assert torch.equal(got_logits, ref_logits)  # every cached row is the fake-quant row, bit for bit
    assert cache.get_seq_length() == 16 + 63


def test_prefill_with_the_cache_equals_the_no_cache_path(tiny_kv4):
    """Perplexity runs use_cache=False: the attention function fake-quantizes there, with the same rows."""
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        no_cache = tiny_kv4(input_ids=ids, use_cache=False).logits
        cached = tiny_kv4(input_ids=ids, cache=make_cache(tiny_kv4, batch_size=2), use_cache=True).logits
    assert torch.equal(no_cache, cached)


def test_make_cache_without_kv_quantizers_is_a_dynamic_cache():
    from transformers import DynamicCache

    from llmquant.models.tiny import tiny_random_model

    assert type(make_cache(tiny_random_model("llama"))) is DynamicCache
    with pytest.raises(ValueError, match="batch_size"):
        make_cache(tiny_random_model("llama"), batch_size=0)


def test_lattice_cache_bytes_per_token(tiny_kv4):
    cache = make_cache(tiny_kv4)
    ids = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tiny_kv4(input_ids=ids, cache=cache, use_cache=True)
    cfg = tiny_kv4.config
    d = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    rows = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads  # K and V rows per token
    per_row = d // 2 + -(-(d // 8) // 8) + 2
    from llmquant.quant.kv_cache import GROW_TOKENS

    assert cache.nbytes() == rows * per_row * (50 + GROW_TOKENS)


def test_sliding_window_layers_match_the_fake_quant_reference():
    """Gemma3 (sliding + full layers, window 4): the packed layer keeps the last window - 1 tokens, as
    transformers' DynamicSlidingWindowLayer, and gives the same logits."""
    from transformers import DynamicCache

    from llmquant import api
    from llmquant.config import load_config
    from llmquant.models.tiny import tiny_random_model

    cfg = load_config(TINY, ["model.spec=tiny-random-gemma3", "calibration.n_samples=2", "calibration.seq_len=16",
                             "calibration.batch_size=2", "model.backend=reference"])
    model = tiny_random_model("gemma3")
    api.quantize(model, cfg, torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0)),
                 progress=False, log=None)
    cache = make_cache(model)
    window = model.config.sliding_window
    assert [layer.sliding_window for layer in cache.layers] == [window if t == "sliding_attention" else None
                                                                for t in model.config.layer_types]
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(1))
    got, got_logits = _greedy(model, ids, cache, 8)
    ref, ref_logits = _greedy(model, ids, DynamicCache(config=model.config), 8)
    assert got == ref and torch.equal(got_logits, ref_logits)
    sliding = [layer for layer in cache.layers if layer.sliding_window is not None]
    assert sliding and all(len(layer.k_store) == window - 1 for layer in sliding)
