"""Server limits and failure modes over HTTP: 413/400/429/503/504, n > 1, shutdown with queued and
in-flight requests, tokenization off the event loop, generic 500s, and malformed bodies (property-based)."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import torch
from llmquant.eval.tiny import byte_tokenizer, tiny_llama
from test_serve_engine import GatedLM
from torch import nn

from llmquant.serve.app import ServerThread, create_app
from llmquant.serve.engine import Engine
from llmquant.serve.limits import ServeLimits
from llmquant.serve.protocol import APIError, parse_request

LIMITS = ServeLimits(max_body_bytes=4096, max_prompt_tokens=64, max_tokens_cap=8, max_n=2, max_queue=4,
                     max_batch=4, request_timeout_s=30.0)


@pytest.fixture(scope="module")
def server():
    engine = Engine(tiny_llama(seed=0), byte_tokenizer(), model_name="tiny", limits=LIMITS)
    with ServerThread(create_app(engine)) as srv:
        yield srv


def _post(url, body=None, content=None, path="/v1/completions", **kw):
    if content is None:
        content = json.dumps(body)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=60, **kw)


def _is_openai_error(r, status):
    err = r.json()["error"]
    assert r.status_code == status, r.text
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_limits_validate():
    with pytest.raises(ValueError, match="max_batch"):
        ServeLimits(max_batch=0)
    with pytest.raises(ValueError, match="max_queue"):
        ServeLimits(max_queue=2.5)


def test_body_too_large_is_413(server):
    big = {"model": "tiny", "prompt": "x" * 5000}
    err = _is_openai_error(_post(server.url, big), 413)
    assert err["code"] == "request_too_large" and "4096" in err["message"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(server.url + "/v1/completions", content=chunks(), timeout=60)
    _is_openai_error(r, 413)


BAD_FIELDS = [
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"max_tokens": 9}, "max_tokens"),
    ({"n": 3}, "n"),
    ({"n": 2, "seed": 2**63 - 1}, "seed"),
    ({"prompt": "\ud800abc"}, "prompt"),
    ({"stop": ["\udfff"]}, "stop"),
    ({"stop": "s" * 300}, "stop"),
    ({"prompt": "p" * 65}, "prompt"),  # over max_prompt_tokens
]


def test_bad_fields_are_400_without_internals(server):
    for extra, param in BAD_FIELDS:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra}
        err = _is_openai_error(_post(server.url, body), 400)
        assert err["param"] == param, (extra, err)
        assert "Traceback" not in err["message"] and "Error:" not in err["message"]
    for raw in (b'{"model": "tiny", "prompt": "a", "temperature": NaN}', b"[" * 2000 + b"]" * 2000,
                b'{"model": "tiny", "prompt": "a", "top_p": Infinity}', b"\xff\xfe\x00"):
        _is_openai_error(_post(server.url, content=raw), 400)
    err = _is_openai_error(_post(server.url, {"model": "\ud800", "prompt": "a"}), 400)
    assert err["param"] == "model"
    # The seed bounds themselves are fine.
    for seed in (2**63 - 1, -(2**63)):
        assert _post(server.url, {"model": "tiny", "prompt": "a", "max_tokens": 1, "seed": seed}).status_code == 200


def test_n_choices(server):
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 5, "n": 2, "temperature": 1.0, "seed": 7}
    r = _post(server.url, body)
    assert r.status_code == 200
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    one = _post(server.url, {**body, "n": 1, "seed": 8}).json()["choices"][0]["text"]
    assert choices[1]["text"] == one  # choice i is seeded seed + i
    assert r.json()["usage"]["completion_tokens"] == 10
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        events = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    texts = ["".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i) for i in (0, 1)]
    assert texts == [c["text"] for c in choices]


def test_bench_serve_baseline_ratio(server, capsys, tmp_path):
    import argparse

    from llmquant.serve import load_test

    parser = argparse.ArgumentParser()
    load_test.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--url", server.url, "--clients", "3", "--requests", "1", "--max-tokens", "2",
                              "--baseline", "--json", str(out)])
    assert load_test.main(args) == 0
    assert "throughput 3 clients / 1 client = " in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["baseline"]["clients"] == 1 and summary["clients"] == 3 and summary["errors"] == 0
    assert summary["speedup_vs_1_client"] == summary["tokens_per_s"] / summary["baseline"]["tokens_per_s"]


class SlowLM(nn.Module):
    """Each forward sleeps ``delay`` seconds (a slow model, for deadlines)."""

    def __init__(self, inner, delay):
        super().__init__()
        self.inner, self.delay = inner, delay
        self.config, self.generation_config = inner.config, inner.generation_config

    def forward(self, **kw):
        time.sleep(self.delay)
        return self.inner(**kw)


def test_deadline_is_504_and_server_keeps_serving():
    limits = ServeLimits(request_timeout_s=0.6, max_tokens_cap=64)
    engine = Engine(SlowLM(tiny_llama(seed=0), 0.1), byte_tokenizer(), model_name="tiny", limits=limits)
    with ServerThread(create_app(engine)) as srv:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 60, "temperature": 0}
        t0 = time.monotonic()
        err = _is_openai_error(_post(srv.url, body), 504)
        assert err["code"] == "request_timeout" and time.monotonic() - t0 < 5
        with httpx.stream("POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            assert r.status_code == 200
            lines = [ln for ln in r.iter_lines() if ln]
        assert json.loads(lines[-2][6:])["error"]["code"] == "request_timeout" and lines[-1] == "data: [DONE]"
        assert _post(srv.url, {**body, "max_tokens": 2}).status_code == 200


def _wait(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_queue_full_429_and_shutdown_answers_queued_and_inflight():
    gated = GatedLM(tiny_llama(seed=0))
    limits = ServeLimits(max_queue=2, max_batch=1)
    engine = Engine(gated, byte_tokenizer(), model_name="tiny", limits=limits)
    srv = ServerThread(create_app(engine)).start()
    results = {}

    def post(i):
        r = _post(srv.url, {"model": "tiny", "prompt": f"q{i}", "max_tokens": 3})
        results[i] = (r.status_code, r.json())

    threads = [threading.Thread(target=post, args=(0,))]
    threads[0].start()
    assert gated.entered.wait(20)  # request 0 is in flight, blocked in the forward
    for i in (1, 2):
        threads.append(threading.Thread(target=post, args=(i,)))
        threads[-1].start()
    _wait(lambda: engine.queued == 2)
    err = _is_openai_error(_post(srv.url, {"model": "tiny", "prompt": "x"}), 429)
    assert err["code"] == "server_busy"
    assert "Retry-After" in _post(srv.url, {"model": "tiny", "prompt": "x"}).headers
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    _wait(lambda: engine._closing)
    gated.gate.set()  # the in-flight forward returns; the worker then answers everyone
    for t in threads:
        t.join(30)
    stopper.join(30)
    assert sorted(results) == [0, 1, 2]
    for status, body in results.values():
        assert status == 503 and body["error"]["code"] == "server_shutting_down"
    with pytest.raises(APIError) as exc:
        engine.submit([1], parse_request({"model": "m", "prompt": "a"}, "completion", "m").params, lambda *a: None)
    assert exc.value.status == 503


def test_shutting_down_engine_refuses_with_503():
    engine = Engine(tiny_llama(seed=0), byte_tokenizer(), model_name="tiny")
    with ServerThread(create_app(engine)) as srv:
        engine.begin_shutdown()
        err = _is_openai_error(_post(srv.url, {"model": "tiny", "prompt": "a"}), 503)
        assert err["code"] == "server_shutting_down"


class SlowTokenizer:
    """A tokenizer whose ``encode`` takes 1.5 s (to show tokenization does not block the event loop)."""

    def __init__(self, inner):
        self.inner = inner

    def encode(self, *a, **kw):
        time.sleep(1.5)
        return self.inner.encode(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_tokenization_runs_off_the_event_loop():
    engine = Engine(tiny_llama(seed=0), SlowTokenizer(byte_tokenizer()), model_name="tiny")
    with ServerThread(create_app(engine)) as srv:
        t = threading.Thread(target=_post, args=(srv.url, {"model": "tiny", "prompt": "a", "max_tokens": 1}))
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - t0 < 1.0
        t.join(30)


class BrokenLM(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config, self.generation_config = inner.config, inner.generation_config
        self.fail = True

    def forward(self, **kw):
        if self.fail:
            raise RuntimeError("secret internal detail /path/to/weights")
        return self.inner(**kw)


def test_failing_forward_is_a_generic_500_and_server_recovers():
    broken = BrokenLM(tiny_llama(seed=0))
    engine = Engine(broken, byte_tokenizer(), model_name="tiny")
    with ServerThread(create_app(engine)) as srv:
        err = _is_openai_error(_post(srv.url, {"model": "tiny", "prompt": "a", "max_tokens": 2}), 500)
        assert "secret" not in err["message"] and "RuntimeError" not in err["message"]
        broken.fail = False
        assert _post(srv.url, {"model": "tiny", "prompt": "a", "max_tokens": 2}).status_code == 200


# ---- property-based: malformed bodies never give a 5xx and never take the server down -------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
          "seed", "stream", "n", "stream_options"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.just("tiny"))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(["role", "content"]), inner, max_size=3),
                      max_leaves=8)
bodies = (st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=7)
          | values
          | st.fixed_dictionaries({"model": st.just("tiny"), "prompt": st.text(max_size=30)},
                                  optional={k: values for k in FIELDS[3:]}))


@pytest.fixture(scope="module")
def fuzz_server():
    limits = ServeLimits(max_body_bytes=2048, max_tokens_cap=3, max_n=2, max_queue=8)
    engine = Engine(tiny_llama(seed=0), byte_tokenizer(), model_name="tiny", limits=limits)
    with ServerThread(create_app(engine)) as srv:
        yield srv


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, raw=st.binary(max_size=64), chat=st.booleans(), use_raw=st.booleans())
def test_malformed_bodies_never_5xx(fuzz_server, body, raw, chat, use_raw):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    content = raw if use_raw else json.dumps(body).encode()
    r = _post(fuzz_server.url, content=content, path=path)
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
    assert httpx.get(fuzz_server.url + "/health", timeout=10).json()["status"] == "ok"


def test_torch_untouched():  # the fuzz run above must not leave grad mode changed
    assert torch.is_grad_enabled()
