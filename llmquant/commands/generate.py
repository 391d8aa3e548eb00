"""``llmquant generate PATH --prompt "..." [--max-tokens N] [--chat]``: quick generation, streamed to stdout."""

from __future__ import annotations

import sys

from llmquant.commands.eval import add_runtime_arguments, load_from_args


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a checkpoint or model spec")
    p.add_argument("model", help="llmquant checkpoint directory or model spec")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_runtime_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from llmquant.serve.engine import Engine
    from llmquant.serve.protocol import APIError, parse_request

    body = {"model": "local", "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "seed": args.seed, "stop": args.stop}
    if args.chat:
        body["messages"] = [{"role": "user", "content": args.prompt}]
    else:
        body["prompt"] = args.prompt
    try:
        # The server's validation gives the same clear messages for bad sampling values.
        parsed = parse_request(body, "chat" if args.chat else "completion", "local")
    except APIError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    model, tokenizer = load_from_args(args)
    if tokenizer is None:
        print(f"error: {args.model} has no tokenizer, so it cannot generate text", file=sys.stderr)
        return 2
    engine = Engine(model, tokenizer, model_name="local")
    try:
        ids = engine.encode_prompt(parsed.prompt, parsed.messages)
    except APIError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    if not args.chat:
        sys.stdout.write(args.prompt)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = engine.generate(ids, parsed.params, on_delta=emit)
    sys.stdout.write("\n")
    print(f"[{result.completion_tokens} tokens in {result.seconds:.2f} s, finish_reason={result.finish_reason}]",
          file=sys.stderr)
    return 0
