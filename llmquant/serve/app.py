"""OpenAI-compatible HTTP server (FastAPI + uvicorn) around an :class:`~llmquant.serve.engine.Engine`.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.
With ``"stream": true`` the response is Server-Sent Events: one ``data: {chunk}`` line per text
delta in OpenAI's chunk format (``text_completion`` / ``chat.completion.chunk``; chat starts
with a ``{"role": "assistant"}`` delta), a last chunk carrying ``finish_reason``, an optional
usage chunk (``stream_options.include_usage``), then ``data: [DONE]``.

With ``n > 1`` a request becomes ``n`` engine requests (choice ``i`` seeded ``seed + i``) that are
batched like any others; chunks carry their choice ``index``.

Every error is answered with an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``
and the server keeps running: 400 (bad JSON or fields, prompt too long), 404 (model, route), 405,
413 (body over ``limits.max_body_bytes``, checked while reading), 429 (queue full), 503 (shutting
down), 504 (request timeout), 500 (a failing forward; the message is generic, the traceback is
logged).  An error after a stream has started is sent as one ``data: {"error": ...}`` event before
``[DONE]``.  The prompt is tokenized in a worker thread, never on the event loop.  On shutdown the
server first has the engine answer every queued and in-flight request (503), then stops uvicorn.
FastAPI/uvicorn are imported inside the functions (optional dependencies).
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the ``Request`` annotation of the
# route functions at definition time, and ``Request`` is imported inside ``create_app``.
import asyncio
import json
import logging
import threading
import time
from dataclasses import replace

from llmquant.serve.protocol import APIError, completion_object, new_id, parse_request

log = logging.getLogger("llmquant.serve")


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json_body(request, max_bytes: int):
    """The decoded JSON body; APIError 413 past ``max_bytes`` (never buffers more), 400 when not strict JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is {int(declared)} bytes; this server accepts at most {max_bytes}",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is over {max_bytes} bytes, the most this server accepts",
                           code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise APIError(400, "the request body is not valid JSON") from None


def create_app(engine):
    """The FastAPI application serving ``engine`` (the engine's worker is started on app startup)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="llmquant", lifespan=lifespan)
    app.state.engine = engine
    limits = engine.limits

    def error_response(err: APIError):
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        code = "not_found" if exc.status_code == 404 else None
        return error_response(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc):
        log.error("unexpected error while handling a request", exc_info=exc)
        return error_response(APIError(500, "internal server error; the server log has the details",
                                       code="internal_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_name, "queued": engine.queued,
                "served": engine.served, "failed": engine.failed}

    @app.get("/v1/models")
    async def models():
        card = {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "llmquant",
                "context_length": engine.context_length}
        return {"object": "list", "data": [card]}

    async def handle(request: Request, kind: str):
        body = await read_json_body(request, limits.max_body_bytes)
        parsed = parse_request(body, kind, engine.model_name, limits)
        include_usage = bool(isinstance(body.get("stream_options"), dict)
                             and body["stream_options"].get("include_usage"))
        engine.check_capacity(parsed.n)  # refuse (429/503) before tokenizing
        prompt_ids = await asyncio.to_thread(engine.encode_prompt, parsed.prompt, parsed.messages)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        n = parsed.n

        def submit_all():
            for i in range(n):
                params = parsed.params
                if i and params.seed is not None:
                    params = replace(params, seed=params.seed + i)

                def on_event(name, payload, i=i):
                    loop.call_soon_threadsafe(events.put_nowait, (i, name, payload))

                engine.submit(prompt_ids, params, on_event, cancel.is_set)

        try:
            submit_all()
        except APIError:
            cancel.set()  # choices already queued are dropped
            raise
        rid, created, model = new_id(kind), int(time.time()), engine.model_name
        # The engine answers every request (done, error, timeout, shutdown); this is only a backstop.
        wait_s = limits.request_timeout_s + 60.0

        async def next_event():
            try:
                return await asyncio.wait_for(events.get(), wait_s)
            except asyncio.TimeoutError:
                return 0, "error", APIError(504, "the request timed out", code="request_timeout",
                                            type_="timeout_error")

        if not parsed.stream:
            results: dict[int, object] = {}
            try:
                while len(results) < n:
                    i, name, payload = await next_event()
                    if name == "error":
                        raise payload
                    if name == "done":
                        results[i] = payload
            finally:
                cancel.set()
            res = [results[i] for i in range(n)]
            usage = {"prompt_tokens": res[0].prompt_tokens, "completion_tokens": sum(r.completion_tokens for r in res)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            obj = completion_object(kind, rid, model, res[0].text, res[0].finish_reason, usage, created)
            obj["choices"] = [completion_object(kind, rid, model, r.text, r.finish_reason, None, created,
                                                index=i)["choices"][0] for i, r in enumerate(res)]
            return JSONResponse(obj)

        def chunk(text, finish=None, first=False, index=0):
            return _sse(completion_object(kind, rid, model, text, finish, None, created, chunk=True,
                                          first_chunk=first, index=index))

        async def stream():
            try:
                if kind == "chat":
                    for i in range(n):
                        yield chunk("", first=True, index=i)
                done: dict[int, object] = {}
                while len(done) < n:
                    i, name, payload = await next_event()
                    if name == "delta":
                        yield chunk(payload, index=i)
                    elif name == "done":
                        done[i] = payload
                        yield chunk("", finish=payload.finish_reason, index=i)
                    else:
                        yield _sse(payload.body())
                        break
                else:
                    if include_usage:
                        completion = sum(r.completion_tokens for r in done.values())
                        prompt = done[0].prompt_tokens
                        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
                        usage_obj = completion_object(kind, rid, model, "", None, usage, created, chunk=True)
                        usage_obj["choices"] = []
                        yield _sse(usage_obj)
                yield "data: [DONE]\n\n"
            finally:
                # A client that hangs up mid-stream stops its generation at the next token.
                cancel.set()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, "chat")

    return app


def _server(config, engine):
    """A ``uvicorn.Server`` whose shutdown first has ``engine`` answer everything queued and in flight (503),
    so that open requests end with a clear error instead of holding the shutdown until they finish."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            if engine is not None:
                engine.begin_shutdown()
            await super().shutdown(sockets)

    return _Server(config)


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, load tests): ``with ServerThread(app) as s: s.url``.

    ``port=0`` picks a free port; the actual one is read back from the bound socket.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = _server(self.config, getattr(app.state, "engine", None))
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.thread = threading.Thread(target=self.server.run, name="llmquant-uvicorn", daemon=True)

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        sockets = [s for srv in getattr(self.server, "servers", []) for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(engine, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``engine`` until interrupted (blocking)."""
    import uvicorn

    app = create_app(engine)
    _server(uvicorn.Config(app, host=host, port=port, log_level="info"), engine).run()
