"""The HTTP server on 127.0.0.1 with a tiny model: official openai client, SSE, bad requests, load test."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from llmquant.eval.tiny import byte_tokenizer, tiny_llama
from test_serve_engine import GatedLM

from llmquant.serve.app import ServerThread, create_app
from llmquant.serve.engine import Engine


@pytest.fixture(scope="module")
def server():
    engine = Engine(tiny_llama(seed=0), byte_tokenizer(), model_name="tiny", max_queue=16)
    with ServerThread(create_app(engine)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"


def test_completion_non_streaming_and_streaming(client):
    kw = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0.8, "top_p": 0.95, "seed": 5}
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert a.object == "text_completion" and a.choices[0].text == b.choices[0].text
    assert a.usage.prompt_tokens == 5 and a.usage.completion_tokens == 8
    assert a.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == a.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat_non_streaming_and_streaming(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, seed=1)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    # ChatML prompt for the two messages plus the generation prompt, one token per byte/special.
    assert r.usage.prompt_tokens == len(
        byte_tokenizer().apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        .replace("<|im_start|>", "S").replace("<|im_end|>", "E").encode())
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, seed=1,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_raw_sse_format(server):
    body = {"model": "tiny", "prompt": "a", "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


BAD = [
    ({"prompt": "x"}, 400, "model"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x" * 400}, 400, "prompt"),
]


def test_bad_requests_get_openai_errors_and_server_keeps_serving(server, client):
    for body, status, param in BAD:
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/completions", content=b"{oops", timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": "hi"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert httpx.get(server.url + "/v2/nothing").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    # Still alive and correct afterwards.
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).usage.completion_tokens == 2


def test_concurrent_clients_all_served(client):
    def one(i):
        r = client.completions.create(model="tiny", prompt=f"req {i}", max_tokens=4, seed=i)
        return r.choices[0].text, r.usage.completion_tokens

    with cf.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(one, range(6)))
    # Requests do not interfere: the same seeded requests one by one give the same answers.
    assert together == [one(i) for i in range(6)]
    assert all(n <= 4 for _, n in together)


def test_full_queue_gets_503_over_http():
    gated = GatedLM(tiny_llama(seed=0))
    engine = Engine(gated, byte_tokenizer(), model_name="tiny", max_queue=1)
    with ServerThread(create_app(engine)) as srv:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 2}
        results = []

        def post():
            results.append(httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert gated.entered.wait(20)
        second = threading.Thread(target=post)
        second.start()
        for _ in range(200):  # until the second request sits in the queue
            if engine.queued == 1:
                break
            threading.Event().wait(0.02)
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "server_busy"  # queue full: 429 (issue 10)
        gated.gate.set()
        first.join(30)
        second.join(30)
        assert results == [200, 200]
        assert httpx.get(srv.url + "/health").json()["served"] == 2


def test_load_test_against_server(server, capsys):
    from llmquant.serve import load_test

    parser = argparse.ArgumentParser()
    load_test.add_arguments(parser)
    for extra in ([], ["--stream", "--chat"]):
        args = parser.parse_args(["--url", server.url, "--clients", "3", "--requests", "2", "--max-tokens", "4",
                                  *extra])
        assert load_test.main(args) == 0
        out = capsys.readouterr().out
        assert "p50" in out and "p95" in out and "tokens/s" in out and "errors 0" in out
    summary = load_test.run_load(server.url, "tiny", 2, 2, 3, "hi")
    assert summary["errors"] == 0 and summary["ok"] == 4 and summary["tokens"] == 12
    bad = load_test.run_load(server.url, "nope", 1, 2, 3, "hi")
    assert bad["errors"] == 2 and "404" in bad["error_messages"][0]
