"""Batched decoding: batched greedy == each request alone, token by token; continuous admission;
row retirement; per-request seeds; incremental detokenization and stop scanning."""

from __future__ import annotations

import itertools
import random
import threading

import pytest
import torch
from llmquant.eval.tiny import byte_tokenizer, tiny_llama

from llmquant.models.tiny import tiny_random_model
from llmquant.serve import batch_cache
from llmquant.serve.batch import DecodeBatch, Request
from llmquant.serve.detok import IncrementalDetokenizer, StopScanner
from llmquant.serve.engine import Engine, scan_stops
from llmquant.serve.protocol import SamplingParams


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _greedy_full_recompute(model, ids, n, eos):
    """Reference: no cache, no batch, no padding; stops at the first EOS (excluded)."""
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


class Collector:
    def __init__(self):
        self.pieces: list[str] = []
        self.result = None
        self.error = None

    def __call__(self, name, payload):
        if name == "delta":
            self.pieces.append(payload)
        elif name == "done":
            self.result = payload
        else:
            self.error = payload


def _requests(prompts, params_list):
    cols = [Collector() for _ in prompts]
    reqs = [Request(list(p), prm, c) for p, prm, c in zip(prompts, params_list, cols)]
    return reqs, cols


def _run_alone(engine, prompt, params):
    return engine.generate(prompt, params)


PROMPTS = [[72, 101, 108, 108, 111], [84, 104, 101, 32, 99, 97, 116, 32, 115, 97, 116, 32, 111, 110],
           [65], [49, 44, 32, 50, 44, 32, 51], [87, 104, 121, 63, 32, 66, 101, 99, 97, 117, 115, 101]]


@pytest.mark.parametrize("arch", ["eval-llama", "llama", "mistral", "gemma3"])
def test_batched_greedy_equals_each_request_alone(tok, arch):
    if arch == "eval-llama":
        model = tiny_llama(seed=3)
    else:
        model = tiny_random_model(arch, seed=1)
    engine = Engine(model, tok, model_name="t")
    eos = engine.eos_ids
    budgets = [10, 4, 12, 7, 1]  # rows retire at different steps
    params = [SamplingParams(max_tokens=b, temperature=0.0) for b in budgets]
    reqs, cols = _requests(PROMPTS, params)
    batch = engine._batch()
    with torch.no_grad():
        batch.admit(reqs)
        while not batch.empty:
            batch.step()
    for prompt, prm, col in zip(PROMPTS, params, cols):
        assert col.error is None
        alone = _run_alone(engine, prompt, prm)
        ref = _greedy_full_recompute(model, prompt, prm.max_tokens, eos)
        assert col.result.token_ids == alone.token_ids == ref, (arch, prompt)
        assert col.result.text == alone.text == "".join(col.pieces)
        assert col.result.completion_tokens == len(ref)


def test_requests_admitted_mid_decode_match_alone(tok):
    """Continuous batching: rows joining a running batch (cache merge + left re-padding) and rows
    retiring (cache compaction + trimming of all-padding columns) leave every row's tokens unchanged."""
    model = tiny_random_model("llama", seed=2)
    engine = Engine(model, tok, model_name="t")
    prompts = PROMPTS + [[50 + i for i in range(30)]]
    budgets = [10, 3, 14, 7, 12, 6]
    params = [SamplingParams(max_tokens=b, temperature=0.0) for b in budgets]
    reqs, cols = _requests(prompts, params)
    batch = engine._batch()
    batch.admit(reqs[:2])
    assert batch.mergeable
    for _ in range(4):  # request 1 (3 tokens) retires in here; the cache is compacted
        batch.step()
    assert batch.live == 1 and cols[1].result is not None
    batch.admit(reqs[2:4])  # shorter history than the running row: the new rows are left-padded
    batch.step()
    batch.admit(reqs[4:])  # a 30-token prompt: now the running rows are left-padded
    assert batch.mask.shape[0] == batch.live == 5
    widths = []
    while not batch.empty:
        batch.step()
        if not batch.empty:
            widths.append(batch.mask.shape[1])
            # After compaction no leading column is padding in every row.
            assert bool(batch.mask[:, 0].any())
    for prompt, prm, col in zip(prompts, params, cols):
        assert col.result.token_ids == _run_alone(engine, prompt, prm).token_ids


@pytest.mark.parametrize("mode", ["no-merge", "dead-rows"])
def test_caches_that_cannot_merge_or_select(tok, monkeypatch, mode):
    """A cache that cannot be merged is compacted but new rows wait; one that cannot drop rows keeps
    finished rows as dead rows.  Both still give each request's own tokens (sliding-window layers here;
    their merging is tested in tests/test_serve_batch_merge.py)."""
    from transformers import DynamicCache

    model = tiny_random_model("mistral", seed=4)
    engine = Engine(model, tok, model_name="t")
    monkeypatch.setattr(batch_cache, "new_cache", lambda m, n: DynamicCache(config=m.config))
    monkeypatch.setattr(batch_cache, "can_merge", lambda cache: False)
    if mode == "dead-rows":
        monkeypatch.setattr(batch_cache, "can_select", lambda cache: False)
    params = [SamplingParams(max_tokens=b, temperature=0.0) for b in (7, 2, 9)]
    reqs, cols = _requests(PROMPTS[:3], params)
    batch = engine._batch()
    batch.admit(reqs)
    assert not batch.accepting
    rows_seen = set()
    while not batch.empty:
        batch.step()
        rows_seen.add(len(batch.rows))
    assert (3 in rows_seen) == (mode == "dead-rows")
    for prompt, prm, col in zip(PROMPTS[:3], params, cols):
        ref = _greedy_full_recompute(model, prompt, prm.max_tokens, engine.eos_ids)
        assert col.result.token_ids == ref


def test_seeded_sampling_in_a_batch_equals_alone(tok):
    engine = Engine(tiny_llama(seed=5), tok, model_name="t")
    params = [SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=s) for s in (1, 2, 1)]
    params.append(SamplingParams(max_tokens=10, temperature=0.0))
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    reqs, cols = _requests(prompts, params)
    batch = engine._batch()
    batch.admit(reqs)
    while not batch.empty:
        batch.step()
    for prompt, prm, col in zip(prompts, params, cols):
        assert col.result.token_ids == _run_alone(engine, prompt, prm).token_ids
    assert cols[0].result.token_ids != cols[1].result.token_ids  # different seeds, same prompt


def test_worker_batches_concurrent_requests(tok):
    """Through the worker thread: 7 requests, at most 3 rows at a time, all equal to running alone."""
    engine = Engine(tiny_llama(seed=6), tok, model_name="t", max_batch=3, max_queue=16)
    seen_batch = []
    real_step = DecodeBatch.step

    def spy(self):
        seen_batch.append(self.live)
        return real_step(self)

    params = [SamplingParams(max_tokens=6 + i, temperature=0.0, stop=["zz"] if i == 2 else []) for i in range(7)]
    prompts = [[40 + i, 41, 42 + i] for i in range(7)]
    engine.start()
    try:
        DecodeBatch.step = spy
        done = threading.Event()
        cols = [Collector() for _ in prompts]
        count = [0]

        def make(c):
            def on_event(name, payload):
                c(name, payload)
                if name != "delta":
                    count[0] += 1
                    if count[0] == len(prompts):
                        done.set()
            return on_event

        for p, prm, c in zip(prompts, params, cols):
            engine.submit(p, prm, make(c))
        assert done.wait(60)
    finally:
        DecodeBatch.step = real_step
        engine.stop()
    assert max(seen_batch) == 3 and engine.served == 7
    for p, prm, c in zip(prompts, params, cols):
        assert c.error is None and c.result.token_ids == _run_alone(engine, p, prm).token_ids


def test_incremental_detokenizer_equals_full_decode(tok):
    rng = random.Random(0)
    texts = ["héllo wörld", "中文字符 and emoji 😀👍🏽", "plain ascii", "ß∂ƒ©˙∆˚¬…æ"]
    for trial in range(200):
        if trial < len(texts):
            ids = list(texts[trial].encode("utf-8"))
        else:  # random bytes: valid and invalid UTF-8, plus special tokens (skipped when decoding)
            ids = [rng.choice([rng.randrange(256), rng.randrange(256), 256, 0xE4, 0xF0, 0x80])
                   for _ in range(rng.randrange(1, 40))]
        det = IncrementalDetokenizer(tok)
        pieces = [det.add(t) for t in ids]
        pieces.append(det.flush())
        full = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert "".join(pieces) == full, ids
        if trial < len(texts):  # valid UTF-8 split anywhere: no piece carries a replacement character
            assert all("\ufffd" not in p for p in pieces)
            assert all(len(det._decode(list(p.encode()))) == len(p) for p in pieces if p)


def test_stop_scanner_equals_whole_text_scan():
    """Piece by piece, the scanner cuts exactly where rescanning the whole text after every piece cuts
    (the former O(n^2) algorithm), and never emits held-back text that later turns into a stop."""
    rng = random.Random(1)
    alphabet = "abc "
    for _ in range(1000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4))) for _ in range(rng.randrange(0, 3))]
        cuts, i = [0], 0
        while i < len(text):
            i = min(len(text), i + rng.randrange(1, 5))
            cuts.append(i)
        pieces = [text[a:b] for a, b in itertools.pairwise(cuts)]
        expect, seen = text, ""
        for piece in pieces:  # reference: whole-text rescan after each piece
            seen += piece
            cut, _ = scan_stops(seen, stops)
            if cut is not None:
                expect = seen[:cut]
                break
        sc = StopScanner(stops)
        out = []
        for piece in pieces:
            out.append(sc.feed(piece))
            if sc.stopped:
                break
        out.append(sc.flush())
        assert "".join(out) == expect and sc.stopped == (expect != text or
                                                        scan_stops(text, stops)[0] is not None), (pieces, stops)


def test_batched_greedy_on_kv_quantized_model_uses_packed_cache(tok):
    """W4A4KV4 (rotations, packed lattice KV cache from make_cache): the packed cache can drop and merge rows
    (joins: tests/test_serve_batch_merge.py); batched greedy == alone == full recompute."""
    from pathlib import Path

    from llmquant.api import quantize

    model = tiny_llama(seed=0)
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize(model, str(config), calib=calib, progress=False, log=lambda *a, **k: None)
    engine = Engine(model, tok, model_name="t")
    params = [SamplingParams(max_tokens=b, temperature=0.0) for b in (6, 2, 8)]
    reqs, cols = _requests(PROMPTS[:3], params)
    batch = engine._batch()
    batch.admit(reqs)
    assert batch.selectable and batch.mergeable and batch.accepting
    while not batch.empty:
        batch.step()
    for prompt, prm, col in zip(PROMPTS[:3], params, cols):
        ref = _greedy_full_recompute(model, prompt, prm.max_tokens, engine.eos_ids)
        assert col.result.token_ids == _run_alone(engine, prompt, prm).token_ids == ref
