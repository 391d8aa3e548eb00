"""``llmquant bench serve``: N concurrent clients x M requests against a running llmquant server.

Each client is a thread with its own ``httpx.Client`` sending ``M`` sequential ``/v1/completions``
(or ``/v1/chat/completions`` with ``--chat``) requests; client ``c``'s request ``m`` uses
``seed = base_seed + c * M + m``.  Reported: request latency p50/p95 (nearest-rank), completion
tokens/s (sum of ``usage.completion_tokens`` over the wall time of the whole run), and the
error count (any non-200 answer or transport failure).  Exit status 1 when any request failed.

``--baseline`` first runs the same load with one client (``--requests`` requests) and reports the
throughput ratio ``tokens_per_s(N clients) / tokens_per_s(1 client)`` -- what batching buys.
"""

from __future__ import annotations

import json
import math
import threading
import time


def add_arguments(parser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the first one /v1/models lists)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients N (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=8, help="requests per client M (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default: %(default)s)")
    parser.add_argument("--prompt", default="The capital of France is", help="prompt text")
    parser.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    parser.add_argument("--stream", action="store_true", help="request SSE streaming")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    parser.add_argument("--baseline", action="store_true",
                        help="first run 1 client with the same settings and report the tokens/s ratio")
    parser.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the summary as JSON")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _one_request(client, url: str, body: dict, stream: bool) -> int:
    """Send one request; returns completion tokens (raises on any failure)."""
    if not stream:
        r = client.post(url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        return int(r.json()["usage"]["completion_tokens"])
    tokens = None
    done = False
    with client.stream("POST", url, json={**body, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                break
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(obj["error"].get("message"))
            if obj.get("usage"):
                tokens = int(obj["usage"]["completion_tokens"])
    if not done or tokens is None:
        raise RuntimeError("stream ended without usage and [DONE]")
    return tokens


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int, prompt: str,
             chat: bool = False, stream: bool = False, temperature: float = 0.0, seed: int = 0,
             timeout: float = 600.0) -> dict:
    """Run the load and return ``{"requests", "errors", "p50_s", "p95_s", "tokens", "tokens_per_s", "wall_s", ...}``."""
    import httpx

    if clients < 1 or requests < 1:
        raise ValueError(f"clients and requests must be >= 1 (got {clients}, {requests})")
    endpoint = url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=timeout) as client:
            for m in range(requests):
                body = {"model": model, "max_tokens": max_tokens, "temperature": temperature,
                        "seed": seed + c * requests + m, "stream": stream}
                if chat:
                    body["messages"] = [{"role": "user", "content": prompt}]
                else:
                    body["prompt"] = prompt
                t0 = time.perf_counter()
                try:
                    n = _one_request(client, endpoint, body, stream)
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none aborts the run
                    with lock:
                        errors.append(f"client {c} request {m}: {type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    tokens.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "url": url, "model": model, "clients": clients, "requests_per_client": requests,
        "requests": clients * requests, "ok": len(latencies), "errors": len(errors), "error_messages": errors[:10],
        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
        "tokens": sum(tokens), "wall_s": wall, "tokens_per_s": sum(tokens) / wall if wall > 0 else float("nan"),
        "max_tokens": max_tokens, "stream": stream, "chat": chat,
    }


def _served_model(url: str, timeout: float) -> str:
    import httpx

    r = httpx.get(url.rstrip("/") + "/v1/models", timeout=timeout)
    r.raise_for_status()
    data = r.json()["data"]
    if not data:
        raise RuntimeError(f"{url} serves no model")
    return data[0]["id"]


def main(args) -> int:
    try:
        model = args.model or _served_model(args.url, min(args.timeout, 30.0))
    except Exception as exc:  # noqa: BLE001
        print(f"error: cannot reach an llmquant server at {args.url} ({type(exc).__name__}: {exc}); "
              "start one with `llmquant serve PATH --port ...` and pass --url")
        return 2
    runs = [1, args.clients] if args.baseline else [args.clients]
    summaries = []
    for clients in runs:
        summary = run_load(args.url, model, clients, args.requests, args.max_tokens, args.prompt,
                           chat=args.chat, stream=args.stream, temperature=args.temperature, seed=args.seed,
                           timeout=args.timeout)
        summaries.append(summary)
        print(f"{summary['clients']} clients x {summary['requests_per_client']} requests against {args.url} "
              f"(model {model}, max_tokens {args.max_tokens}{', stream' if args.stream else ''})")
        print(f"latency p50 {summary['p50_s']:.3f} s  p95 {summary['p95_s']:.3f} s")
        print(f"tokens {summary['tokens']} in {summary['wall_s']:.2f} s = {summary['tokens_per_s']:.1f} tokens/s")
        print(f"errors {summary['errors']}")
        for msg in summary["error_messages"]:
            print(f"  {msg}")
    out = summaries[-1]
    if args.baseline:
        ratio = summaries[1]["tokens_per_s"] / summaries[0]["tokens_per_s"] if summaries[0]["tokens_per_s"] else 0.0
        out = {**summaries[1], "baseline": summaries[0], "speedup_vs_1_client": ratio}
        print(f"throughput {args.clients} clients / 1 client = {ratio:.2f}x")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(out, fh, indent=2)
    return 1 if any(s["errors"] for s in summaries) else 0
