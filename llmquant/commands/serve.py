"""``llmquant serve PATH [--host 127.0.0.1] [--port 8000]``: OpenAI-compatible HTTP server.

PATH is an llmquant checkpoint directory or a model spec (``smollm2-135m``, hub id, local dir,
``.gguf``), loaded with :func:`llmquant.api.load`.  See :mod:`llmquant.serve.app` for the routes.
"""

from __future__ import annotations

from pathlib import Path

from llmquant.commands.eval import add_runtime_arguments, load_from_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model with an OpenAI-compatible API (FastAPI + uvicorn)")
    p.add_argument("model", help="llmquant checkpoint directory or model spec")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--model-name", default=None, help="name clients pass as 'model' (default: PATH's last part)")
    p.add_argument("--max-queue", type=int, default=8,
                   help="requests allowed to wait; more get HTTP 503 (default: %(default)s)")
    p.add_argument("--context", type=int, default=None, help="context limit in tokens (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_runtime_arguments(p)
    p.set_defaults(func=main)


def served_name(spec: str) -> str:
    return Path(str(spec).rstrip("/")).name or str(spec)


def main(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("error: serving needs fastapi and uvicorn: pip install 'llmquant[serve]'")
        return 2
    from llmquant.serve.app import serve
    from llmquant.serve.engine import Engine

    model, tokenizer = load_from_args(args)
    if tokenizer is None:
        print(f"error: {args.model} has no tokenizer, so it cannot serve text")
        return 2
    engine = Engine(model, tokenizer, model_name=args.model_name or served_name(args.model),
                    max_queue=args.max_queue, context_length=args.context)
    print(f"serving {engine.model_name} (context {engine.context_length}) on http://{args.host}:{args.port}/v1")
    serve(engine, args.host, args.port)
    return 0
