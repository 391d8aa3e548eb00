"""The generation engine: a bounded request queue and one worker thread decoding requests in batches.

Next-token choice, per request (:func:`~llmquant.serve.batch.sample_next`): greedy when
``temperature == 0``, else a draw from ``softmax(z / temperature)`` restricted to the ``top_p``
nucleus, from a ``torch.Generator`` seeded by the request's ``seed`` (a fresh random seed when none
is given), so equal seeds give equal outputs whatever else is running.

A request ends at EOS (``finish_reason="stop"``), at a stop string (the text is cut before it;
``"stop"``), after ``max_tokens`` tokens or at the context limit (``"length"``).  Streamed deltas
never contain a partial stop string nor a dangling partial UTF-8 character (incremental
detokenization, :mod:`llmquant.serve.detok`).

Concurrency (continuous batching): ``submit`` appends to a queue of at most ``limits.max_queue``
waiting requests (more: HTTP 429).  The worker thread keeps a :class:`~llmquant.serve.batch.DecodeBatch`
of up to ``limits.max_batch`` rows; between two decode steps it answers rows that finished, were
cancelled or passed their deadline (``limits.request_timeout_s`` from arrival: HTTP 504), and
prefills waiting requests into free rows.  A failing forward answers the rows it held with a generic
500 (the traceback goes to the server log, never to clients) and the worker keeps serving.
:meth:`Engine.begin_shutdown` / :meth:`Engine.stop` refuse new requests (503) and answer every queued
and in-flight request with a 503 ``server_shutting_down`` error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import torch

from llmquant.serve.batch import DecodeBatch, GenerationResult, Request, cache_keyword, sample_next
from llmquant.serve.limits import ServeLimits
from llmquant.serve.protocol import APIError, SamplingParams

__all__ = ["Engine", "GenerationResult", "Request", "sample_next", "scan_stops"]

log = logging.getLogger("llmquant.serve")


def scan_stops(text: str, stops: list[str]) -> tuple[int | None, int]:
    """``(cut, safe)``: ``cut`` is where the earliest stop string starts (``None`` if none occurs);
    ``safe`` is how much of ``text`` may be emitted now (partial stop strings and a trailing
    U+FFFD from an incomplete multi-byte character are held back)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        cut = min(hits)
        return cut, cut
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    safe = len(text) - hold
    while safe > 0 and text[safe - 1] == "\ufffd":
        safe -= 1
    return None, safe


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _context_length(model, tokenizer, explicit: int | None) -> int:
    if explicit:
        return int(explicit)
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if value:
        return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**7 else 2048


class Engine:
    """Serves ``(model, tokenizer)``; see the module docstring.

    ``submit`` queues a request for the worker thread; ``generate`` runs one synchronously in the
    calling thread (for ``llmquant generate``), holding the model lock for its whole run; the worker
    takes the same lock for each admission + step.
    """

    def __init__(self, model, tokenizer, model_name: str = "llmquant", max_queue: int | None = None,
                 context_length: int | None = None, limits: ServeLimits | None = None,
                 max_batch: int | None = None):
        limits = limits or ServeLimits()
        if max_queue is not None:
            if max_queue < 1:
                raise ValueError(f"max_queue must be >= 1 (got {max_queue})")
            limits = replace(limits, max_queue=max_queue)
        if max_batch is not None:
            limits = replace(limits, max_batch=max_batch)
        self.limits = limits
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context_length = _context_length(model, tokenizer, context_length)
        self.max_prompt_tokens = min(self.context_length - 1, limits.max_prompt_tokens or self.context_length)
        self.eos_ids = _eos_ids(model, tokenizer)
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self._cache_kw = cache_keyword(model)
        self._pending: deque[Request] = deque()
        self._cv = threading.Condition()
        self._lock = threading.Lock()  # the model: one forward at a time
        self._closing = False
        self._thread: threading.Thread | None = None
        self.served = 0
        self.failed = 0

    # ---- prompts -------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Prompt token ids (chat: the tokenizer's chat template with the generation prompt).

        Raises :class:`APIError` 400 for a template that rejects the messages or a prompt longer than
        ``max_prompt_tokens`` (the context minus one, or the ``--max-prompt-tokens`` limit)."""
        param = "messages" if messages is not None else "prompt"
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions",
                               param="messages")
            try:
                text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # noqa: BLE001 - templates raise on message layouts they refuse
                reason = str(exc) if type(exc).__module__.startswith("jinja2") else "the layout is not supported"
                raise APIError(400, f"the model's chat template rejected these messages: {reason}",
                               param="messages") from None
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = self.tokenizer.encode(prompt)
        if not ids:
            # An empty prompt still needs one conditioning token.
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else next(iter(self.eos_ids), 0)]
        if len(ids) > self.max_prompt_tokens:
            what = ("the model's context is " f"{self.context_length} tokens" if self.max_prompt_tokens
                    == self.context_length - 1 else f"this server accepts at most {self.max_prompt_tokens}")
            raise APIError(400, f"the prompt is {len(ids)} tokens but {what}; shorten the prompt",
                           param=param, code="context_length_exceeded")
        return ids

    # ---- generation ----------------------------------------------------------------------

    def _batch(self) -> DecodeBatch:
        return DecodeBatch(self.model, self.tokenizer, self.eos_ids, self.context_length, self.device,
                           cache_kw=self._cache_kw)

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 on_delta: Callable[[str], None] | None = None) -> GenerationResult:
        """Run one request now, in the calling thread (no deadline)."""
        outcome: dict = {}

        def on_event(name, payload):
            if name == "delta":
                if on_delta is not None:
                    on_delta(payload)
            else:
                outcome[name] = payload

        batch = self._batch()
        with self._lock:
            batch.admit([Request(list(prompt_ids), params, on_event)])
            while not batch.empty:
                batch.step()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["done"]

    # ---- worker --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._closing = False
        self._thread = threading.Thread(target=self._worker, name="llmquant-engine", daemon=True)
        self._thread.start()

    def begin_shutdown(self) -> None:
        """Refuse new requests; the worker answers everything queued or in flight with 503 and exits."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        self.begin_shutdown()
        if self._thread is not None:
            self._thread.join(timeout)
        stuck = self._thread is not None and self._thread.is_alive()
        self._thread = None
        self._answer_pending(_shutdown_error())  # in case the worker could not (stuck in a forward)
        if not stuck:
            self._closing = False  # stopped: submit says "not running" (a stuck worker still sees closing)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def check_capacity(self, n: int = 1) -> None:
        """Raise the error :meth:`submit` would raise now for ``n`` more requests (503 not running or shutting
        down, 429 queue full) -- lets the server refuse before spending time on tokenization."""
        if self._closing:
            raise _shutdown_error()
        if self._thread is None or not self._thread.is_alive():
            raise APIError(503, "the generation engine is not running", code="engine_stopped")
        if len(self._pending) + n > self.limits.max_queue:
            raise APIError(429, f"server busy: {self.limits.max_queue} requests are already waiting; retry later",
                           code="server_busy", type_="server_overloaded")

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               on_event: Callable[[str, object], None], cancelled: Callable[[], bool] = lambda: False) -> Request:
        """Queue a request.  ``on_event`` is called from the worker thread with ``("delta", str)``
        for each text piece, then exactly one of ``("done", GenerationResult)`` or ``("error", APIError)``.

        Raises :class:`APIError` 503 when the engine is not running or shutting down, 429 when
        ``limits.max_queue`` requests are already waiting.
        """
        if self._closing:
            raise _shutdown_error()
        if self._thread is None or not self._thread.is_alive():
            raise APIError(503, "the generation engine is not running", code="engine_stopped")

        def counted(name, payload, emit=on_event):
            if name == "done":
                self.served += 1
            elif name == "error":
                self.failed += 1
            emit(name, payload)

        req = Request(list(prompt_ids), params, counted, cancelled, timeout_s=self.limits.request_timeout_s)
        with self._cv:
            if self._closing:
                raise _shutdown_error()
            if len(self._pending) >= self.limits.max_queue:
                raise APIError(429, f"server busy: {self.limits.max_queue} requests are already waiting; "
                                    "retry later", code="server_busy", type_="server_overloaded")
            self._pending.append(req)
            self._cv.notify_all()
        return req

    def _answer_pending(self, err: APIError) -> None:
        with self._cv:
            waiting = list(self._pending)
            self._pending.clear()
        for req in waiting:
            req.answer("error", err)

    def _sweep_pending(self, now: float) -> None:
        """Answer queued requests that were cancelled or passed their deadline (caller holds ``_cv``)."""
        if not any(r.cancelled() or r.expired(now) for r in self._pending):
            return
        keep = deque()
        for r in self._pending:
            if r.cancelled():
                r.answer("error", APIError(499, "the client closed the request", code="cancelled"))
            elif r.expired(now):
                r.answer("error", r.timeout_error(0))
            else:
                keep.append(r)
        self._pending = keep

    def _worker(self) -> None:
        batch = self._batch()
        try:
            while True:
                take: list[Request] = []
                with self._cv:
                    while not self._closing and not self._pending and batch.empty:
                        self._cv.wait(0.5)
                    if self._closing:
                        break
                    self._sweep_pending(time.monotonic())
                    room = self.limits.max_batch - batch.live
                    if room > 0 and self._pending and batch.accepting:
                        take = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
                try:
                    with self._lock:
                        if take:
                            batch.admit(take)
                        if not batch.empty:
                            batch.step()
                except Exception:
                    log.exception("generation failed; answering the affected requests with HTTP 500")
                    err = APIError(500, "internal error while generating; the server log has the details",
                                   code="internal_error")
                    batch.fail_all(err)
                    for req in take:
                        req.answer("error", err)
                    batch = self._batch()
        finally:
            err = _shutdown_error()
            batch.fail_all(err)
            self._answer_pending(err)


def _shutdown_error() -> APIError:
    return APIError(503, "the server is shutting down; the request was not completed, retry on another server "
                         "or after restart", code="server_shutting_down")
