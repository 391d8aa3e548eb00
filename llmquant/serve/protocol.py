"""OpenAI request validation and response objects for the server (plain Python, no web framework).

Supported request fields (others are accepted and ignored, as OpenAI-compatible servers do):

* ``/v1/completions``: ``model`` (str, required), ``prompt`` (str or a list holding one str,
  required), ``max_tokens`` (int >= 1, default 16), ``temperature`` (0..2, default 1; 0 = greedy),
  ``top_p`` (0 < p <= 1, default 1), ``stop`` (str or list of up to 4 non-empty str), ``seed``
  (int64), ``stream`` (bool), ``n`` (1..``limits.max_n``; choice ``i`` uses ``seed + i``).
* ``/v1/chat/completions``: the same with ``messages`` (list of ``{role, content: str}``,
  required) instead of ``prompt``; ``max_completion_tokens`` is an alias of ``max_tokens``.

Server limits (:class:`~llmquant.serve.limits.ServeLimits`) bound ``max_tokens`` and ``n``.  Strings
must be valid Unicode (no unpaired surrogates) and numbers finite.

Errors are :class:`APIError` (HTTP status + OpenAI error body
``{"error": {"message", "type", "param", "code"}}``); messages never carry internal exception text.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field


class APIError(Exception):
    """An error answered with ``status`` and an OpenAI-format JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        # Messages may quote client input: keep them encodable (no unpaired surrogates).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


#: ``seed`` must fit a signed 64-bit integer (what ``torch.Generator.manual_seed`` and OpenAI accept).
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass
class ParsedRequest:
    kind: str  # "completion" | "chat"
    model: str
    prompt: str | None
    messages: list[dict] | None
    params: SamplingParams
    stream: bool
    n: int = 1


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number, got {type(value).__name__}", name)
    if not math.isfinite(value):
        raise _bad(f"'{name}' must be a finite number", name)
    if (value <= lo if lo_open else value < lo) or value > hi:
        bracket = "(" if lo_open else "["
        raise _bad(f"'{name}' must be in {bracket}{lo}, {hi}], got {value}", name)
    return float(value)


def _int(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None,
         hi_hint: str = "") -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {type(value).__name__}", name)
    if lo is not None and value < lo:
        raise _bad(f"'{name}' must be >= {lo}, got {_short(value)}", name)
    if hi is not None and value > hi:
        raise _bad(f"'{name}' must be <= {hi}{hi_hint}, got {_short(value)}", name)
    return value


def _short(value: int) -> str:
    return str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"


def _text(value: str, name: str) -> str:
    """``value`` if it is valid Unicode (JSON may carry unpaired surrogates, which no tokenizer accepts)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"'{name}' contains an unpaired UTF-16 surrogate (invalid Unicode)", name) from None
    return value


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad("'stop' must be a string or a list of strings", "stop")
    if len(value) > 4:
        raise _bad(f"'stop' takes at most 4 sequences, got {len(value)}", "stop")
    if any(s == "" for s in value):
        raise _bad("'stop' sequences must be non-empty", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in value):
        raise _bad(f"'stop' sequences must be at most {MAX_STOP_CHARS} characters", "stop")
    return [_text(s, "stop") for s in value]


#: longest accepted stop string (the stream holds back up to this many characters).
MAX_STOP_CHARS = 256


def parse_request(body, kind: str, served_model: str, limits=None) -> ParsedRequest:
    """Validate a decoded JSON body for ``kind`` (``"completion"`` or ``"chat"``) against ``limits``
    (a :class:`~llmquant.serve.limits.ServeLimits`; its defaults when None)."""
    if limits is None:
        from llmquant.serve.limits import ServeLimits

        limits = ServeLimits()
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _bad("missing required field 'model'", "model")
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {type(model).__name__}", "model")
    _text(model, "model")
    if model != served_model:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{served_model}'",
                       param="model", code="model_not_found")
    prompt = messages = None
    if kind == "completion":
        prompt = body.get("prompt")
        if prompt is None:
            raise _bad("missing required field 'prompt'", "prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _bad("'prompt' must be a string (or a list with one string)", "prompt")
        _text(prompt, "prompt")
    else:
        messages = body.get("messages")
        if messages is None:
            raise _bad("missing required field 'messages'", "messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _bad(f"messages[{i}] must be an object with string 'role' and 'content'", "messages")
            _text(m["role"], "messages")
            _text(m["content"], "messages")
    n = _int(body, "n", 1, lo=1)
    if n > limits.max_n:
        raise _bad("only n=1 is supported on this server (--max-n)" if limits.max_n == 1 else
                   f"'n' must be <= {limits.max_n} on this server, got {_short(n)}", "n")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    max_name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    params = SamplingParams(
        max_tokens=_int(body, max_name, min(16, limits.max_tokens_cap), lo=1, hi=limits.max_tokens_cap,
                        hi_hint=" on this server"),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stop(body),
        seed=_int(body, "seed", None, lo=SEED_RANGE[0], hi=SEED_RANGE[1]),
    )
    if params.seed is not None and n > 1 and params.seed + n - 1 > SEED_RANGE[1]:
        raise _bad(f"'seed' + n - 1 must be <= {SEED_RANGE[1]} (choice i uses seed + i)", "seed")
    return ParsedRequest(kind, model, prompt, messages, params, stream, n)


def new_id(kind: str) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]


def completion_object(kind: str, rid: str, model: str, text: str, finish_reason: str | None,
                      usage: dict | None, created: int | None = None, chunk: bool = False,
                      first_chunk: bool = False, index: int = 0) -> dict:
    """A full response (``chunk=False``) or one SSE chunk (``chunk=True``, ``text`` is the delta) for choice ``index``."""
    created = created or int(time.time())
    if kind == "completion":
        choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
        obj = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    elif chunk:
        delta: dict = {}
        if first_chunk:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    else:
        choice = {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                  "logprobs": None}
        obj = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice]}
    if usage is not None:
        obj["usage"] = usage
    return obj
