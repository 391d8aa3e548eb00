"""``llmquant serve PATH [--host 127.0.0.1] [--port 8000]``: OpenAI-compatible HTTP server.

PATH is an llmquant checkpoint directory or a model spec (``smollm2-135m``, hub id, local dir,
``.gguf``), loaded with :func:`llmquant.api.load`.  See :mod:`llmquant.serve.app` for the routes and
:mod:`llmquant.serve.limits` for the ``--max-*`` / ``--request-timeout`` limits, which ``--limits FILE`` (YAML or
JSON, keys = :class:`~llmquant.serve.limits.ServeLimits` fields, unknown keys are errors) sets too; flags given
on the command line override the file.
"""

from __future__ import annotations

from pathlib import Path

from llmquant.commands.eval import add_runtime_arguments, load_from_args
from llmquant.serve.limits import add_limit_arguments, limits_from_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model with an OpenAI-compatible API (FastAPI + uvicorn)")
    p.add_argument("model", help="llmquant checkpoint directory or model spec")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--model-name", default=None, help="name clients pass as 'model' (default: PATH's last part)")
    p.add_argument("--context", type=int, default=None, help="context limit in tokens (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_limit_arguments(p)
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

    try:
        limits = limits_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    model, tokenizer = load_from_args(args)
    if tokenizer is None:
        print(f"error: {args.model} has no tokenizer, so it cannot serve text")
        return 2
    engine = Engine(model, tokenizer, model_name=args.model_name or served_name(args.model),
                    context_length=args.context, limits=limits)
    print(f"serving {engine.model_name} (context {engine.context_length}, batches of up to {limits.max_batch}, "
          f"queue {limits.max_queue}, timeout {limits.request_timeout_s:g} s) on http://{args.host}:{args.port}/v1")
    serve(engine, args.host, args.port)
    return 0
