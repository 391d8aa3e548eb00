"""Server limits (``llmquant serve`` flags), validated once at startup.

Every limit protects the server from one kind of oversized request; exceeding one is a client error:

==================  =========================  ==============================================================
field               flag                       refused with
==================  =========================  ==============================================================
max_body_bytes      ``--max-body-bytes``       413 (body read in chunks; never buffered past the limit)
max_prompt_tokens   ``--max-prompt-tokens``    400 ``context_length_exceeded`` (also when >= the context)
max_tokens_cap      ``--max-tokens-cap``       400 ``invalid_value`` on ``max_tokens``
max_n               ``--max-n``                400 ``invalid_value`` on ``n``
max_queue           ``--max-queue``            429 ``server_busy`` (requests waiting for a batch slot)
max_batch           ``--max-batch``            (not an error: rows decoded together; the rest wait)
request_timeout_s   ``--request-timeout``      504 ``request_timeout`` (from arrival, queueing included)
==================  =========================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_tokens_cap: int = 2048
    max_n: int = 1
    max_queue: int = 64
    max_batch: int = 8
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "max_prompt_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"serve limit {f.name} must be a positive number, got {value!r}")
            if f.name != "request_timeout_s" and not isinstance(value, int):
                raise ValueError(f"serve limit {f.name} must be an integer, got {value!r}")
        if self.max_n > self.max_queue:
            raise ValueError(f"serve limit max_n ({self.max_n}) must be <= max_queue ({self.max_queue}): "
                             "the n choices of a request wait in the queue together")


def add_limit_arguments(parser) -> None:
    """The ``--max-*`` / ``--request-timeout`` flags of ``llmquant serve`` (defaults from :class:`ServeLimits`)."""
    d = ServeLimits()
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help="largest request body; larger gets HTTP 413 (default: %(default)s)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="longest prompt in tokens (default: the context length minus one)")
    parser.add_argument("--max-tokens-cap", type=int, default=d.max_tokens_cap,
                        help="largest max_tokens a request may ask for (default: %(default)s)")
    parser.add_argument("--max-n", type=int, default=d.max_n, help="largest n (choices per request) (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="requests allowed to wait for a batch slot; more get HTTP 429 (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=d.max_batch,
                        help="sequences decoded together in one forward (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                        help="seconds a request may take from arrival (queueing included); later gets HTTP 504 "
                             "(default: %(default)s)")


def limits_from_args(args) -> ServeLimits:
    return ServeLimits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
                       max_tokens_cap=args.max_tokens_cap, max_n=args.max_n, max_queue=args.max_queue,
                       max_batch=args.max_batch, request_timeout_s=args.request_timeout)
