"""OpenAI request validation and response objects for the server (plain Python, no web framework).

Supported request fields (others are accepted and ignored, as OpenAI-compatible servers do):

* ``/v1/completions``: ``model`` (str, required), ``prompt`` (str or a list holding one str,
  required), ``max_tokens`` (int >= 1, default 16), ``temperature`` (0..2, default 1; 0 = greedy),
  ``top_p`` (0 < p <= 1, default 1), ``stop`` (str or list of up to 4 non-empty str), ``seed``
  (int), ``stream`` (bool), ``n`` (only 1).
* ``/v1/chat/completions``: the same with ``messages`` (list of ``{role, content: str}``,
  required) instead of ``prompt``; ``max_completion_tokens`` is an alias of ``max_tokens``.

Errors are :class:`APIError` (HTTP status + OpenAI error body
``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


class APIError(Exception):
    """An error answered with ``status`` and an OpenAI-format JSON body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
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


@dataclass
class ParsedRequest:
    kind: str  # "completion" | "chat"
    model: str
    prompt: str | None
    messages: list[dict] | None
    params: SamplingParams
    stream: bool


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"'{name}' must be a number, got {type(value).__name__}", name)
    if (value <= lo if lo_open else value < lo) or value > hi:
        bracket = "(" if lo_open else "["
        raise _bad(f"'{name}' must be in {bracket}{lo}, {hi}], got {value}", name)
    return float(value)


def _int(body: dict, name: str, default: int | None, lo: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {type(value).__name__}", name)
    if lo is not None and value < lo:
        raise _bad(f"'{name}' must be >= {lo}, got {value}", name)
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
    return value


def parse_request(body, kind: str, served_model: str) -> ParsedRequest:
    """Validate a decoded JSON body for ``kind`` (``"completion"`` or ``"chat"``)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _bad("missing required field 'model'", "model")
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {type(model).__name__}", "model")
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
    else:
        messages = body.get("messages")
        if messages is None:
            raise _bad("missing required field 'messages'", "messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise _bad(f"messages[{i}] must be an object with string 'role' and 'content'", "messages")
    n = _int(body, "n", 1, lo=1)
    if n != 1:
        raise _bad("only n=1 is supported", "n")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    max_name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    params = SamplingParams(
        max_tokens=_int(body, max_name, 16, lo=1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stop(body),
        seed=_int(body, "seed", None),
    )
    return ParsedRequest(kind, model, prompt, messages, params, stream)


def new_id(kind: str) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]


def completion_object(kind: str, rid: str, model: str, text: str, finish_reason: str | None,
                      usage: dict | None, created: int | None = None, chunk: bool = False,
                      first_chunk: bool = False) -> dict:
    """A full response (``chunk=False``) or one SSE chunk (``chunk=True``, ``text`` is the delta)."""
    created = created or int(time.time())
    if kind == "completion":
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        obj = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    elif chunk:
        delta: dict = {}
        if first_chunk:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                  "logprobs": None}
        obj = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice]}
    if usage is not None:
        obj["usage"] = usage
    return obj
