"""``llmquant generate`` and ``llmquant serve`` end to end on the in-code tiny model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from llmquant.cli import main as cli_main


def test_generate_command(capsys):
    rc = cli_main(["generate", "tiny-llama", "--prompt", "Hello", "--max-tokens", "6", "--device", "cpu"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Hello")
    assert "finish_reason=" in captured.err and "tokens in" in captured.err
    # Greedy decoding is deterministic.
    cli_main(["generate", "tiny-llama", "--prompt", "Hello", "--max-tokens", "6", "--device", "cpu"])
    assert capsys.readouterr().out == captured.out


def test_generate_rejects_bad_sampling(capsys):
    assert cli_main(["generate", "tiny-llama", "--prompt", "x", "--top-p", "0"]) == 2
    assert "'top_p' must be in" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_subprocess():
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmquant.cli", "serve", "tiny-llama", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny-llama"
        r = httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": "Hi", "max_tokens": 3},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2
    finally:
        proc.terminate()
        proc.wait(30)
