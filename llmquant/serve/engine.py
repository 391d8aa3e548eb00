"""Text generation for the server: sampling, stop sequences, and a worker thread with a bounded queue.

Generation (one request): the prompt is run once, then one token per step with the model's KV
cache.  Next-token choice from the last logits ``z`` (float32):

* ``temperature == 0``: ``argmax z`` (greedy).
* else ``p = softmax(z / temperature)``; with ``top_p < 1`` only the smallest set of most likely
  tokens whose mass reaches ``top_p`` is kept (renormalized); a token is drawn with
  ``torch.multinomial`` from a ``torch.Generator`` seeded by the request's ``seed`` (a fresh
  random seed when none is given), so equal seeds give equal outputs.

A request ends at EOS (``finish_reason="stop"``), at a stop string (the text is cut before it;
``"stop"``), after ``max_tokens`` tokens or at the context limit (``"length"``).  Streamed
deltas never contain a partial stop string nor a dangling partial UTF-8 character.

Concurrency: :class:`Engine` owns one worker thread that runs requests one at a time from a
``queue.Queue(maxsize=max_queue)``; a request arriving when the queue is full is refused with
HTTP 503 (:class:`~llmquant.serve.protocol.APIError`) instead of piling up.  A failing request
reports its error to its caller; the worker keeps serving.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmquant.serve.protocol import APIError, SamplingParams


@dataclass
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from 1-D ``logits`` (see the module docstring)."""
    logits = logits.float().cpu()
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep = mass_before < top_p  # the first token always survives
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


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

    ``submit`` queues a request for the worker thread; ``generate`` runs one synchronously
    (for ``llmquant generate``); both use the same lock, so they never overlap on the model.
    """

    def __init__(self, model, tokenizer, model_name: str = "llmquant", max_queue: int = 8,
                 context_length: int | None = None):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1 (got {max_queue})")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.context_length = _context_length(model, tokenizer, context_length)
        self.eos_ids = _eos_ids(model, tokenizer)
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.served = 0
        self.failed = 0

    # ---- prompts -------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Prompt token ids (chat: the tokenizer's chat template with the generation prompt)."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions",
                               param="messages")
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = self.tokenizer.encode(prompt)
        if not ids:
            # An empty prompt still needs one conditioning token.
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else next(iter(self.eos_ids), 0)]
        if len(ids) >= self.context_length:
            raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context is "
                                f"{self.context_length} tokens; shorten the prompt",
                           param="messages" if messages is not None else "prompt",
                           code="context_length_exceeded")
        return ids

    # ---- generation ----------------------------------------------------------------------

    # no_grad, not inference_mode: quantizer modules memoize on tensor version counters, which
    # inference tensors do not have.
    @torch.no_grad()
    def _run(self, prompt_ids: list[int], params: SamplingParams, on_delta: Callable[[str], None] | None,
             cancelled: Callable[[], bool]) -> GenerationResult:
        t0 = time.perf_counter()
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        gen = torch.Generator().manual_seed(int(seed))
        budget = min(params.max_tokens, self.context_length - len(prompt_ids))
        inp = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        past = None
        out_ids: list[int] = []
        emitted = 0
        text = ""
        finish = "length"
        for _ in range(budget):
            if cancelled():
                finish = "cancelled"
                break
            out = self.model(input_ids=inp, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = sample_next(out.logits[0, -1], params.temperature, params.top_p, gen)
            if tok in self.eos_ids:
                finish = "stop"
                break
            out_ids.append(tok)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            cut, safe = scan_stops(text, params.stop)
            if cut is not None:
                text = text[:cut]
                finish = "stop"
                break
            if on_delta is not None and safe > emitted:
                on_delta(text[emitted:safe])
                emitted = safe
            inp = torch.tensor([[tok]], dtype=torch.long, device=self.device)
        if on_delta is not None and len(text) > emitted:
            on_delta(text[emitted:])
        return GenerationResult(text, finish, len(prompt_ids), len(out_ids), time.perf_counter() - t0)

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 on_delta: Callable[[str], None] | None = None) -> GenerationResult:
        """Run one request now, in the calling thread."""
        with self._lock:
            return self._run(prompt_ids, params, on_delta, lambda: False)

    # ---- worker --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._worker, name="llmquant-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               on_event: Callable[[str, object], None], cancelled: Callable[[], bool] = lambda: False) -> None:
        """Queue a request.  ``on_event`` is called from the worker thread with ``("delta", str)``
        for each text piece, then exactly one of ``("done", GenerationResult)`` or ``("error", str)``.

        Raises :class:`APIError` 503 when the queue is full or the engine is not running.
        """
        if self._thread is None or not self._thread.is_alive():
            raise APIError(503, "the generation engine is not running", code="engine_stopped")
        try:
            self._queue.put_nowait((prompt_ids, params, on_event, cancelled))
        except queue.Full:
            raise APIError(503, f"server busy: {self._queue.maxsize} requests are already waiting; retry later",
                           code="server_busy", type_="server_overloaded") from None

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                prompt_ids, params, on_event, cancelled = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                with self._lock:
                    result = self._run(prompt_ids, params, lambda d, emit=on_event: emit("delta", d), cancelled)
                self.served += 1
                on_event("done", result)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                self.failed += 1
                on_event("error", f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()
