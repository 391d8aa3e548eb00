"""Generation engine: sampling, stop strings, KV-cache greedy decoding, bounded queue."""

from __future__ import annotations

import threading

import pytest
import torch
from llmquant.eval.tiny import byte_tokenizer, tiny_llama
from torch import nn

from llmquant.serve.engine import Engine, sample_next, scan_stops
from llmquant.serve.protocol import APIError, SamplingParams, parse_request


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_llama(seed=0), byte_tokenizer(), model_name="tiny")


def test_sample_next_greedy_top_p_and_seed():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0, 1.0, g) == 1
    # top_p below the top token's mass keeps only that token.
    assert all(sample_next(logits, 1.0, 0.01, g) == 1 for _ in range(20))
    # top_p covering the two best tokens never yields the others.
    draws = {sample_next(logits, 1.0, 0.8, g) for _ in range(200)}
    assert draws == {1, 3}
    a = [sample_next(logits, 1.5, 1.0, torch.Generator().manual_seed(7)) for _ in range(5)]
    b = [sample_next(logits, 1.5, 1.0, torch.Generator().manual_seed(7)) for _ in range(5)]
    assert a == b


def test_scan_stops_cuts_and_holds_back_partials():
    assert scan_stops("hello world", ["wor"]) == (6, 6)
    assert scan_stops("ab STOP cd STO", ["STO", "cd"]) == (3, 3)
    assert scan_stops("hello wo", ["world"]) == (None, 6)  # "wo" may begin "world"
    assert scan_stops("hello", []) == (None, 5)
    assert scan_stops("caf\ufffd", []) == (None, 3)  # incomplete multi-byte character


def _greedy_without_cache(model, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def test_greedy_generation_matches_full_recompute(engine):
    ids = engine.encode_prompt("The cat sat")
    res = engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0))
    ref = _greedy_without_cache(engine.model, ids, 12)
    if engine.tokenizer.eos_token_id in ref:
        ref = ref[: ref.index(engine.tokenizer.eos_token_id)]
    assert res.text == engine.tokenizer.decode(ref, skip_special_tokens=True)
    assert res.completion_tokens == len(ref) and res.prompt_tokens == len(ids)


def test_seeded_sampling_and_streaming_agree(engine):
    ids = engine.encode_prompt("Once upon")
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=11)
    pieces = []
    a = engine.generate(ids, p, on_delta=pieces.append)
    b = engine.generate(ids, p)
    c = engine.generate(ids, SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=12))
    assert a.text == b.text == "".join(pieces)
    assert a.text != c.text


def test_stop_string_cuts_output(engine):
    ids = engine.encode_prompt("Numbers:")
    full = engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0)).text
    assert len(full) >= 6
    stop = full[3:5]
    pieces = []
    res = engine.generate(ids, SamplingParams(max_tokens=12, temperature=0.0, stop=[stop]), on_delta=pieces.append)
    assert res.text == full[: full.find(stop)] and res.finish_reason == "stop"
    assert "".join(pieces) == res.text


def test_prompt_longer_than_context_is_rejected(engine):
    with pytest.raises(APIError) as err:
        engine.encode_prompt("x" * 300)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    # Generation stops at the context limit with finish_reason "length".
    ids = engine.encode_prompt("y" * 250)
    res = engine.generate(ids, SamplingParams(max_tokens=50, temperature=0.0))
    assert res.finish_reason in ("length", "stop") and len(ids) + res.completion_tokens <= 256


def test_parse_request_validation():
    ok = parse_request({"model": "m", "prompt": ["hi"], "stop": "x", "seed": 3}, "completion", "m")
    assert ok.prompt == "hi" and ok.params.stop == ["x"] and ok.params.seed == 3 and ok.params.max_tokens == 16
    cases = [
        ([], "completion", 400, "JSON object"),
        ({"model": "m"}, "completion", 400, "'prompt'"),
        ({"model": 3, "prompt": "a"}, "completion", 400, "'model' must be a string"),
        ({"model": "x", "prompt": "a"}, "completion", 404, "does not exist"),
        ({"model": "m", "prompt": "a", "temperature": 3}, "completion", 400, "'temperature' must be in"),
        ({"model": "m", "prompt": "a", "top_p": 0}, "completion", 400, "'top_p'"),
        ({"model": "m", "prompt": "a", "n": 2}, "completion", 400, "n=1"),
        ({"model": "m", "prompt": "a", "stop": ["", "b"]}, "completion", 400, "non-empty"),
        ({"model": "m", "prompt": "a", "stream": "yes"}, "completion", 400, "'stream'"),
        ({"model": "m", "messages": [{"role": "user"}]}, "chat", 400, "messages[0]"),
        ({"model": "m", "messages": []}, "chat", 400, "non-empty list"),
    ]
    for body, kind, status, text in cases:
        with pytest.raises(APIError) as err:
            parse_request(body, kind, "m")
        assert err.value.status == status and text in err.value.message, (body, err.value.message)
        assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


class GatedLM(nn.Module):
    """Wraps a model; every forward waits for ``gate`` (to hold requests inside the engine)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config
        self.gate = threading.Event()
        self.entered = threading.Event()

    def forward(self, **kw):
        self.entered.set()
        self.gate.wait(30)
        return self.inner(**kw)


def test_bounded_queue_refuses_with_503_and_keeps_serving():
    gated = GatedLM(tiny_llama(seed=0))
    eng = Engine(gated, byte_tokenizer(), max_queue=1)
    eng.start()
    try:
        done = []
        ids = eng.encode_prompt("a")
        p = SamplingParams(max_tokens=2, temperature=0.0)
        eng.submit(ids, p, lambda k, v: done.append(k) if k != "delta" else None)
        assert gated.entered.wait(10)  # first request is running (blocked on the gate)
        eng.submit(ids, p, lambda k, v: done.append(k) if k != "delta" else None)  # waits in the queue
        with pytest.raises(APIError) as err:
            eng.submit(ids, p, lambda k, v: None)
        assert err.value.status == 429 and "busy" in err.value.message  # queue full: 429 (issue 10)
        gated.gate.set()
        for _ in range(200):
            if len(done) == 2:
                break
            threading.Event().wait(0.05)
        assert done == ["done", "done"]
    finally:
        gated.gate.set()
        eng.stop()
    with pytest.raises(APIError, match="not running"):
        eng.submit(ids, p, lambda k, v: None)


def test_kv_cache_generation_on_quantized_model():
    """W4A4KV4 with rotations (online Hadamards, KV quantizers): cached decoding == full recompute."""
    from pathlib import Path

    from llmquant.api import quantize

    model, tok = tiny_llama(seed=0), byte_tokenizer()
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize(model, str(config), calib=calib, progress=False, log=lambda *a, **k: None)
    eng = Engine(model, tok)
    ids = eng.encode_prompt("The cat sat")
    res = eng.generate(ids, SamplingParams(max_tokens=8, temperature=0.0))
    ref = _greedy_without_cache(model, ids, 8)
    if tok.eos_token_id in ref:
        ref = ref[: ref.index(tok.eos_token_id)]
    assert res.text == tok.decode(ref, skip_special_tokens=True)
