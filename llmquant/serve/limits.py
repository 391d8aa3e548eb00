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

``--limits FILE`` reads them from a YAML (``.yaml``/``.yml``) or JSON (``.json``) file: one mapping from the
field names above to values, e.g. ``{"max_batch": 16, "request_timeout_s": 120}``; a field it omits keeps its
default, an unknown key or a bad value is an error naming the file.  A flag given on the command line
overrides the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


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


#: ServeLimits field -> attribute of the parsed ``llmquant serve`` arguments
FLAG_FIELDS = {"max_body_bytes": "max_body_bytes", "max_prompt_tokens": "max_prompt_tokens",
               "max_tokens_cap": "max_tokens_cap", "max_n": "max_n", "max_queue": "max_queue",
               "max_batch": "max_batch", "request_timeout_s": "request_timeout"}


def add_limit_arguments(parser) -> None:
    """The ``--limits FILE`` and ``--max-*`` / ``--request-timeout`` flags of ``llmquant serve``.

    The flags default to None ("not given") so that :func:`limits_from_args` can tell a flag from the file's
    value; the defaults shown are :class:`ServeLimits`'."""
    d = ServeLimits()
    parser.add_argument("--limits", default=None, metavar="FILE",
                        help="YAML or JSON file of limits (keys: " + ", ".join(f.name for f in fields(ServeLimits))
                             + "); flags given here override it")
    parser.add_argument("--max-body-bytes", type=int, default=None,
                        help=f"largest request body; larger gets HTTP 413 (default: {d.max_body_bytes})")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="longest prompt in tokens (default: the context length minus one)")
    parser.add_argument("--max-tokens-cap", type=int, default=None,
                        help=f"largest max_tokens a request may ask for (default: {d.max_tokens_cap})")
    parser.add_argument("--max-n", type=int, default=None, help=f"largest n (choices per request) (default: {d.max_n})")
    parser.add_argument("--max-queue", type=int, default=None,
                        help=f"requests allowed to wait for a batch slot; more get HTTP 429 (default: {d.max_queue})")
    parser.add_argument("--max-batch", type=int, default=None,
                        help=f"sequences decoded together in one forward (default: {d.max_batch})")
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="seconds a request may take from arrival (queueing included); later gets HTTP 504 "
                             f"(default: {d.request_timeout_s:g})")


def load_limits_file(path: str | Path) -> ServeLimits:
    """:class:`ServeLimits` from a YAML/JSON mapping of field names (see the module docstring); raises
    ``ValueError`` (one line naming the file) for a missing or unparsable file, a non-mapping, an unknown key
    or a bad value."""
    try:
        return ServeLimits(**read_limits_file(path))
    except ValueError as exc:
        raise ValueError(f"limits file {path}: {exc}") from None


def read_limits_file(path: str | Path) -> dict:
    """The file's mapping, keys checked against the :class:`ServeLimits` fields (values are checked when the
    limits are built: a flag may still change a value the file's other values depend on)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"limits file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json/yaml parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"limits file {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} "
                         f"({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):  # ValueError like every other file problem: the caller reports them alike
        raise ValueError(f"limits file {path}: expected a mapping of limit names to values, "  # noqa: TRY004
                         f"got {type(data).__name__}")
    known = [f.name for f in fields(ServeLimits)]
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        raise ValueError(f"limits file {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; allowed: {', '.join(known)}")
    return data


def limits_from_args(args) -> ServeLimits:
    """The limits of ``llmquant serve``: defaults, then ``--limits FILE``, then the flags given."""
    path = getattr(args, "limits", None)
    values = asdict(ServeLimits())
    if path:
        values.update(read_limits_file(path))
    for name, attr in FLAG_FIELDS.items():
        given = getattr(args, attr, None)
        if given is not None:
            values[name] = given
    try:
        return ServeLimits(**values)
    except ValueError as exc:
        if not path:
            raise
        raise ValueError(f"limits file {path} (with the flags given): {exc}") from None
