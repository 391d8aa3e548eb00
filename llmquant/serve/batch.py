"""Requests decoded together: left-padded prefill, one batched forward per step, retiring finished rows.

Shapes (``B`` live rows, ``L`` cache columns, ``V`` vocabulary):

* prefill of ``n`` new prompts of lengths ``l_i``: ``input_ids [n, max l_i]`` left-padded with id 0,
  ``attention_mask [n, max l_i]`` (1 = real), ``position_ids = clamp(cumsum(mask) - 1, 0)`` so every row's
  first real token is at position 0 exactly as when it runs alone;
* decode step: ``input_ids [B, 1]`` (each row's last sampled token), the mask grown by a column of ones,
  ``position_ids [B, 1]`` = the number of real tokens the row already has;
* only the last position's logits are computed (``logits_to_keep=1``): ``[B, 1, V]``.

Each row samples from its own logits with its own ``torch.Generator`` (seeded by the request), so a
row's tokens do not depend on which other rows share its batch: greedy decoding in a batch gives the
tokens of the request run alone (up to floating-point summation order; exact on the tiny test models).

Between steps, finished rows (EOS, stop string, ``max_tokens``, context limit, cancelled, past the
deadline) are answered and removed from the cache (:mod:`llmquant.serve.batch_cache`); new requests are
prefilled as their own small batch and appended when the cache layout allows it (see
:func:`~llmquant.serve.batch_cache.can_merge`: full-history and sliding-window transformers caches and the
packed lattice KV cache of W4A4KV4 models do), otherwise they wait until this batch is empty.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmquant.serve import batch_cache
from llmquant.serve.detok import IncrementalDetokenizer, StopScanner
from llmquant.serve.protocol import APIError, SamplingParams

log = logging.getLogger("llmquant.serve")


@dataclass
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    token_ids: list[int] = field(default_factory=list)  # generated ids (EOS excluded)

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(eq=False)
class Request:
    """One submitted generation.  ``on_event`` gets ``("delta", str)`` pieces, then exactly one
    terminal ``("done", GenerationResult)`` or ``("error", APIError)`` (:meth:`answer` is idempotent)."""

    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[str, object], None]
    cancelled: Callable[[], bool] = lambda: False
    timeout_s: float | None = None
    submitted: float = field(default_factory=time.monotonic)
    _answered: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def answered(self) -> bool:
        return self._answered

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.submitted >= self.timeout_s

    def timeout_error(self, produced: int) -> APIError:
        return APIError(504, f"the request did not finish within the server's timeout of {self.timeout_s:g} s "
                             f"({produced} tokens generated); ask for fewer max_tokens or retry later",
                        code="request_timeout", type_="timeout_error")

    def delta(self, text: str) -> None:
        if text and not self._answered:
            self._call("delta", text)

    def answer(self, name: str, payload) -> bool:
        with self._guard:
            if self._answered:
                return False
            self._answered = True
        self._call(name, payload)
        return True

    def _call(self, name, payload) -> None:
        try:
            self.on_event(name, payload)
        except Exception:
            log.exception("request event listener failed")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from 1-D ``logits``: argmax when ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the smallest top-``top_p`` nucleus."""
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


class _Row:
    """Per-request decoding state: generator, detokenizer, stop scanner, counters."""

    def __init__(self, req: Request, tokenizer, context_length: int, eos_ids: set[int]):
        self.req = req
        self.params = req.params
        seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopScanner(self.params.stop)
        self.eos_ids = eos_ids
        self.budget = min(self.params.max_tokens, context_length - len(req.prompt_ids))
        self.produced = 0
        self.parts: list[str] = []
        self.finished = False
        self.t0 = time.perf_counter()

    def _emit(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.req.delta(text)

    def take(self, tok: int) -> bool:
        """Process one sampled token; True when the row is finished."""
        if tok in self.eos_ids:
            return self.finish("stop")
        self.produced += 1
        self._emit(self.stops.feed(self.detok.add(tok)))
        if self.stops.stopped:
            return self.finish("stop")
        if self.produced >= self.budget:
            return self.finish("length")
        return False

    def finish(self, reason: str) -> bool:
        if not self.stops.stopped:
            self._emit(self.stops.feed(self.detok.flush()))
            if self.stops.stopped:
                reason = "stop"
            self._emit(self.stops.flush())
        self.finished = True
        result = GenerationResult("".join(self.parts), reason, len(self.req.prompt_ids), self.produced,
                                  time.perf_counter() - self.t0, list(self.detok.ids))
        self.req.answer("done", result)
        return True

    def fail(self, err: APIError) -> None:
        self.finished = True
        self.req.answer("error", err)


def cache_keyword(model) -> str:
    """The forward keyword of the KV cache: ``cache`` (transformers >= 5) or ``past_key_values``."""
    params = inspect.signature(type(model).forward).parameters
    if "cache" in params or "past_key_values" in params:
        return "cache" if "cache" in params else "past_key_values"
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


class DecodeBatch:
    """The rows being decoded together (see the module docstring)."""

    def __init__(self, model, tokenizer, eos_ids: set[int], context_length: int, device,
                 cache_kw: str = "past_key_values"):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.context_length = context_length
        self.device = device
        self.cache_kw = cache_kw
        self._reset()

    def _reset(self) -> None:
        self.rows: list[_Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [B, L] long
        self.next_tok: torch.Tensor | None = None  # [B] long
        self.pos: torch.Tensor | None = None  # [B] long
        self.selectable = self.mergeable = False

    @property
    def live(self) -> int:
        return sum(not r.finished for r in self.rows)

    @property
    def empty(self) -> bool:
        return self.live == 0

    @property
    def accepting(self) -> bool:
        """New rows can join now (an empty batch, or a cache that can be merged)."""
        return self.empty or self.mergeable

    def _forward(self, ids, mask, pos, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: cache})
        return out.logits[:, -1]

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        toks = [0] * len(rows)
        greedy = [i for i, r in enumerate(rows) if r.params.temperature == 0.0]
        if greedy:
            picks = logits[greedy].float().argmax(dim=-1).tolist()
            for i, t in zip(greedy, picks):
                toks[i] = int(t)
        for i, r in enumerate(rows):
            if r.params.temperature != 0.0:
                toks[i] = sample_next(logits[i], r.params.temperature, r.params.top_p, r.gen)
        return toks

    # no_grad, not inference_mode: quantizer modules memoize on tensor version counters, which
    # inference tensors do not have.
    @torch.no_grad()
    def admit(self, requests: list[Request]) -> None:
        """Prefill ``requests`` together and add them to the batch (caller checks :attr:`accepting`)."""
        rows = []
        for req in requests:
            row = _Row(req, self.tokenizer, self.context_length, self.eos_ids)
            if row.budget <= 0:
                row.finish("length")
            else:
                rows.append(row)
        if not rows:
            return
        n, width = len(rows), max(len(r.req.prompt_ids) for r in rows)
        ids = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r.req.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = batch_cache.new_cache(self.model, n)
        logits = self._forward(ids, mask, pos, cache)
        toks = self._sample(rows, logits)
        next_tok = torch.tensor(toks, dtype=torch.long, device=self.device)
        if self.empty:
            self._reset()
            self.cache, self.mask, self.next_tok, self.pos = cache, mask, next_tok, mask.sum(-1)
            self.selectable = batch_cache.can_select(cache)
            self.mergeable = self.selectable and batch_cache.can_merge(cache)
        else:
            la, lb = self.mask.shape[1], width
            batch_cache.merge(self.cache, cache, la, lb)
            length = max(la, lb)
            self.mask = torch.cat([torch.nn.functional.pad(self.mask, (length - la, 0)),
                                   torch.nn.functional.pad(mask, (length - lb, 0))], dim=0)
            self.next_tok = torch.cat([self.next_tok, next_tok])
            self.pos = torch.cat([self.pos, mask.sum(-1)])
        self.rows.extend(rows)
        for r, t in zip(rows, toks):
            r.take(t)
        self._retire()

    def drop_unwanted(self, now: float) -> None:
        """Answer rows whose client went away (finish_reason ``cancelled``) or whose deadline passed (504)."""
        for r in self.rows:
            if r.finished:
                continue
            if r.req.cancelled():
                r.finish("cancelled")
            elif r.req.expired(now):
                r.fail(r.req.timeout_error(r.produced))
        self._retire()

    @torch.no_grad()
    def step(self) -> None:
        """One batched decode step for every live row."""
        self.drop_unwanted(time.monotonic())
        if self.empty:
            return
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.device)
        mask = torch.cat([self.mask, ones], dim=1)
        logits = self._forward(self.next_tok[:, None], mask, self.pos[:, None], self.cache)
        self.mask = mask
        self.pos = self.pos + 1
        live = [i for i, r in enumerate(self.rows) if not r.finished]
        toks = self._sample([self.rows[i] for i in live], logits[live])
        self.next_tok[live] = torch.tensor(toks, dtype=torch.long, device=self.device)
        for i, t in zip(live, toks):
            self.rows[i].take(t)
        self._retire()

    def _retire(self) -> None:
        if not any(r.finished for r in self.rows):
            return
        if self.empty:
            self._reset()
            return
        if not self.selectable:
            return  # dead rows stay until the batch drains
        keep = [i for i, r in enumerate(self.rows) if not r.finished]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        batch_cache.select_rows(self.cache, index)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.next_tok, self.pos = self.mask[index], self.next_tok[index], self.pos[index]
        if self.mergeable:
            lead = int(self.mask.any(dim=0).long().argmax())  # first column that is real in some row
            if lead:
                batch_cache.trim_left(self.cache, lead)
                self.mask = self.mask[:, lead:]

    def fail_all(self, err: APIError) -> int:
        """Answer every live row with ``err`` and empty the batch; the number of rows answered."""
        count = 0
        for r in self.rows:
            if not r.finished:
                r.fail(err)
                count += 1
        self._reset()
        return count
