"""OpenAI-compatible HTTP server (FastAPI + uvicorn) around an :class:`~llmquant.serve.engine.Engine`.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.
With ``"stream": true`` the response is Server-Sent Events: one ``data: {chunk}`` line per text
delta in OpenAI's chunk format (``text_completion`` / ``chat.completion.chunk``; chat starts
with a ``{"role": "assistant"}`` delta), a last chunk carrying ``finish_reason``, an optional
usage chunk (``stream_options.include_usage``), then ``data: [DONE]``.

Every error (validation, unknown model or route, busy queue, a failing generation) is answered
with an OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` and the server
keeps running.  FastAPI/uvicorn are imported inside the functions (optional dependencies).
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the ``Request`` annotation of the
# route functions at definition time, and ``Request`` is imported inside ``create_app``.
import asyncio
import json
import threading
import time

from llmquant.serve.protocol import APIError, completion_object, new_id, parse_request


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


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

    def error_response(err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        code = "not_found" if exc.status_code == 404 else None
        return error_response(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc):
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

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
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        parsed = parse_request(body, kind, engine.model_name)
        include_usage = bool(isinstance(body.get("stream_options"), dict)
                             and body["stream_options"].get("include_usage"))
        prompt_ids = engine.encode_prompt(parsed.prompt, parsed.messages)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def on_event(name, payload):
            loop.call_soon_threadsafe(events.put_nowait, (name, payload))

        engine.submit(prompt_ids, parsed.params, on_event, cancel.is_set)
        rid, created, model = new_id(kind), int(time.time()), engine.model_name

        if not parsed.stream:
            try:
                while True:
                    name, payload = await events.get()
                    if name == "done":
                        return JSONResponse(completion_object(kind, rid, model, payload.text, payload.finish_reason,
                                                              payload.usage(), created))
                    if name == "error":
                        raise APIError(500, f"generation failed: {payload}")
            except asyncio.CancelledError:
                cancel.set()
                raise

        def chunk(text, finish=None, first=False):
            return _sse(completion_object(kind, rid, model, text, finish, None, created, chunk=True,
                                          first_chunk=first))

        async def stream():
            try:
                if kind == "chat":
                    yield chunk("", first=True)
                while True:
                    name, payload = await events.get()
                    if name == "delta":
                        yield chunk(payload)
                    elif name == "done":
                        yield chunk("", finish=payload.finish_reason)
                        if include_usage:
                            usage_obj = completion_object(kind, rid, model, "", None, payload.usage(), created,
                                                          chunk=True)
                            usage_obj["choices"] = []
                            yield _sse(usage_obj)
                        break
                    else:
                        yield _sse(APIError(500, f"generation failed: {payload}").body())
                        break
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


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, load tests): ``with ServerThread(app) as s: s.url``.

    ``port=0`` picks a free port; the actual one is read back from the bound socket.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(self.config)
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

    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")
