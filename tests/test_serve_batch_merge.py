"""Continuous batching on sliding-window and packed (W4A4KV4 lattice) caches: requests join a running
batch (left-padded merge) and leave it (compaction, trimming of all-padding columns), and every request's
greedy tokens equal the same request run alone, token for token."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.eval.tiny import byte_tokenizer

from llmquant.models.tiny import tiny_random_model
from llmquant.serve import batch_cache, packed_layers
from llmquant.serve.batch import DecodeBatch, Request
from llmquant.serve.engine import Engine
from llmquant.serve.protocol import SamplingParams

TINY_KV4 = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"

# Lengths 5, 14, 1, 7, 12, 30: shorter and longer than the windows (mistral 6, gemma3 4), so merges pad
# sliding layers partly, fully and not at all.
PROMPTS = [[72, 101, 108, 108, 111], [84, 104, 101, 32, 99, 97, 116, 32, 115, 97, 116, 32, 111, 110],
           [65], [49, 44, 32, 50, 44, 32, 51], [87, 104, 121, 63, 32, 66, 101, 99, 97, 117, 115, 101],
           [50 + i for i in range(30)]]
BUDGETS = [10, 3, 14, 7, 12, 6]


_KV4: dict = {}


def _kv4(arch: str):
    """A tiny ``arch`` model quantized W4A4KV4 (rotation, E8 lattice weights/activations/KV), built once."""
    if arch in _KV4:
        return _KV4[arch]
    from llmquant import api
    from llmquant.config import load_config

    cfg = load_config(TINY_KV4, [f"model.spec=tiny-random-{arch}", "calibration.n_samples=2",
                                 "calibration.seq_len=16", "calibration.batch_size=2", "model.backend=reference"])
    model = tiny_random_model(arch, seed=1)
    api.quantize(model, cfg, torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0)),
                 progress=False, log=None)
    _KV4[arch] = model
    return model


class Collector:
    def __init__(self):
        self.result = self.error = None

    def __call__(self, name, payload):
        if name == "done":
            self.result = payload
        elif name == "error":
            self.error = payload


def _run_with_joins(engine):
    """Admit 2 rows, decode (one retires), admit 2 shorter ones, then a 30-token one; drain."""
    params = [SamplingParams(max_tokens=b, temperature=0.0) for b in BUDGETS]
    cols = [Collector() for _ in PROMPTS]
    reqs = [Request(list(p), prm, c) for p, prm, c in zip(PROMPTS, params, cols)]
    batch = engine._batch()
    batch.admit(reqs[:2])
    assert batch.mergeable and batch.accepting
    for _ in range(4):
        batch.step()
    assert batch.live == 1 and cols[1].result is not None
    batch.admit(reqs[2:4])  # the running row is longer: the new rows are left-padded
    batch.step()
    batch.admit(reqs[4:])  # a 30-token prompt: now the running rows are left-padded
    assert batch.mask.shape[0] == batch.live == 5
    while not batch.empty:
        batch.step()
        if not batch.empty:
            assert bool(batch.mask[:, 0].any())  # compaction dropped all-padding leading columns
            for layer in batch.cache.layers:  # every layer's token count follows the mask
                assert batch_cache._total(layer) == batch.mask.shape[1]
    for prompt, prm, col in zip(PROMPTS, params, cols):
        assert col.error is None
        assert col.result.token_ids == engine.generate(prompt, prm).token_ids, prompt
    return cols


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_requests_join_a_running_batch(tok, arch):
    model = tiny_random_model(arch, seed=2)
    engine = Engine(model, tok, model_name="t")
    _run_with_joins(engine)
    cache = batch_cache.new_cache(model, 1)
    with torch.no_grad():
        model(input_ids=torch.tensor([PROMPTS[1]]), cache=cache, use_cache=True)
    kinds = [batch_cache._kind(layer) for layer in cache.layers]
    assert "sliding" in kinds and batch_cache.can_merge(cache)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_w4a4kv4_requests_join_a_running_packed_batch(tok, arch):
    """Packed lattice KV (gemma3: one sliding packed layer, one full): joins and compaction never re-encode."""
    from llmquant.quant.kv_cache import LatticeKVCache

    model = _kv4(arch)
    engine = Engine(model, tok, model_name="t")
    seen = []
    real_merge = packed_layers.merge

    def spy(layer_a, layer_b, pad_a, pad_b, total):
        seen.append((getattr(layer_a, "sliding_window", None), pad_a, pad_b))
        return real_merge(layer_a, layer_b, pad_a, pad_b, total)

    packed_layers.merge = spy
    try:
        _run_with_joins(engine)
    finally:
        packed_layers.merge = real_merge
    assert isinstance(batch_cache.new_cache(model, 1), LatticeKVCache)
    assert seen and any(p for _, p, _ in seen) and any(p for _, _, p in seen)  # both sides got padded
    if arch == "gemma3":
        assert any(w is not None for w, _, _ in seen)


def test_packed_merge_keeps_every_rows_bytes():
    """The merged store's live columns are each source row's packed bytes, left-padded with its first column."""
    model = _kv4("llama")
    a, b = batch_cache.new_cache(model, 2), batch_cache.new_cache(model, 1)
    g = torch.Generator().manual_seed(3)
    ids_a, ids_b = torch.randint(3, 128, (2, 9), generator=g), torch.randint(3, 128, (1, 4), generator=g)
    with torch.no_grad():
        model(input_ids=ids_a, cache=a, use_cache=True)
        model(input_ids=ids_b, cache=b, use_cache=True)
    before_a = [{n: t[:, :, s.start:s.end].clone() for n, t in s.t.items()}
                for layer in a.layers for s in (layer.k_store, layer.v_store)]
    before_b = [{n: t[:, :, s.start:s.end].clone() for n, t in s.t.items()}
                for layer in b.layers for s in (layer.k_store, layer.v_store)]
    assert batch_cache.can_merge(a) and batch_cache.can_merge(b)
    batch_cache.merge(a, b, 9, 4)
    stores = [s for layer in a.layers for s in (layer.k_store, layer.v_store)]
    for s, ra, rb in zip(stores, before_a, before_b):
        for name, t in s.t.items():
            live = t[:, :, s.start:s.end]
            assert torch.equal(live[:2], ra[name])
            assert torch.equal(live[2:, :, 5:], rb[name])
            assert torch.equal(live[2:, :, :5], rb[name][:, :, :1].expand_as(live[2:, :, :5]))
    assert all(layer.get_seq_length() == 9 for layer in a.layers)
    batch_cache.select_rows(a, torch.tensor([2]))  # only the short row is left: drop its 5 padding columns
    batch_cache.trim_left(a, 5)
    for s, rb in zip(stores, before_b):
        for name, t in s.t.items():
            assert torch.equal(t[:, :, s.start:s.end], rb[name])
    assert all(layer.get_seq_length() == 4 for layer in a.layers)


def test_unmergeable_layouts_are_refused():
    """A recording sliding layer or a layer without the packed layout is not merged (requests then wait)."""
    from transformers import DynamicCache

    model = tiny_random_model("gemma3", seed=0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), cache=cache, use_cache=True)
    assert batch_cache.can_merge(cache)
    cache.layers[0].record_past = True
    assert not batch_cache.can_merge(cache)
    assert not packed_layers.is_packed(cache.layers[1])
    assert not batch_cache.can_merge(DynamicCache(config=model.config))  # nothing prefilled yet


@pytest.mark.parametrize("arch", ["gemma3", "kv4-llama"])
def test_worker_admits_a_request_into_the_running_batch(tok, arch, monkeypatch):
    """Through the engine's worker: a request submitted while another decodes joins its batch (it is admitted
    while the batch has a live row) and both get their tokens alone."""
    model = _kv4("llama") if arch == "kv4-llama" else tiny_random_model("gemma3", seed=2)
    engine = Engine(model, tok, model_name="t", max_batch=4)
    first = (PROMPTS[1], SamplingParams(max_tokens=12, temperature=0.0))
    second = (PROMPTS[3], SamplingParams(max_tokens=5, temperature=0.0))
    alone = [engine.generate(*first).token_ids, engine.generate(*second).token_ids]
    assert len(alone[0]) >= 4  # the first request is still decoding when the second arrives
    live_at_admit, cols, done = [], [Collector(), Collector()], threading.Semaphore(0)
    real_admit, real_step = DecodeBatch.admit, DecodeBatch.step

    def on_event(col):
        def handler(name, payload):
            col(name, payload)
            if name != "delta":
                done.release()
        return handler

    def admit(self, requests):
        live_at_admit.append(self.live)
        return real_admit(self, requests)

    def step(self):
        if not live_at_admit[1:]:
            engine.submit(*second, on_event(cols[1]))  # arrives after the first request's prefill
            live_at_admit.append(None)
        return real_step(self)

    monkeypatch.setattr(DecodeBatch, "admit", admit)
    monkeypatch.setattr(DecodeBatch, "step", step)
    engine.start()
    try:
        engine.submit(*first, on_event(cols[0]))
        assert done.acquire(timeout=120) and done.acquire(timeout=120)
    finally:
        engine.stop()
    assert live_at_admit[0] == 0 and live_at_admit[2] == 1  # joined a batch holding the first request
    assert [c.result.token_ids for c in cols] == alone
