"""Continuation log-likelihoods of a causal LM, tokenized and scored the way lm-eval's HF model does.

For a request ``(context, continuation)``:

* Trailing whitespace of ``context`` moves to the front of ``continuation`` (word-boundary
  tokenization).  Then ``whole = enc(context + continuation)``, ``ctx = enc(context)`` and the
  continuation tokens are ``whole[len(ctx):]``; ``enc`` is ``tokenizer.encode`` with the
  tokenizer's default special-token behaviour (lm-eval's ``add_bos_token=None``).
* An empty context is replaced by the prefix token (BOS, else EOS), unless the continuation
  already starts with it.
* Input ``inp = (ctx + cont)[-(max_length + 1):][:-1]``; logits at the last ``len(cont)``
  positions of ``inp`` predict ``cont``.  ``loglik = sum_t log_softmax(logits_t)[cont_t]`` in
  float32; ``is_greedy = all(argmax(logits_t) == cont_t)``.

Batches are right-padded: in a causal model a token never attends to later positions, so
padding after a sequence cannot change its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MAX_LENGTH = 2048


def resolve_max_length(model, tokenizer, explicit: int | None = None) -> int:
    """Context limit: ``explicit``, else the config's position limit, else the tokenizer's, else 2048."""
    if explicit:
        return int(explicit)
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (1e30).
    if limit and limit < 10**7:
        return int(limit)
    return DEFAULT_MAX_LENGTH


class LoglikScorer:
    """Scores ``(context, continuation)`` pairs with ``model``; see the module docstring."""

    def __init__(self, model, tokenizer, batch_size: int = 1, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = resolve_max_length(model, tokenizer, max_length)
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``(context, continuation)`` following lm-eval's causal-LM rules."""
        if context == "":
            cont = self.tokenizer.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tokenizer.encode(context + continuation)
        ctx = self.tokenizer.encode(context)
        return ctx, whole[len(ctx) :]

    @torch.no_grad()
    def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(loglik, is_greedy)`` for pre-tokenized pairs, in input order."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        # Longest first keeps padding small inside each batch.
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            inps, conts = [], []
            for i in idx:
                ctx, cont = pairs[i]
                if not cont:
                    raise ValueError(f"empty continuation for request {i}: nothing to score")
                if len(cont) > self.max_length:
                    raise ValueError(
                        f"continuation of {len(cont)} tokens exceeds the model's maximum length {self.max_length}"
                    )
                inps.append((ctx + cont)[-(self.max_length + 1) :][:-1])
                conts.append(cont)
            width = max(len(x) for x in inps)
            pad = self.prefix_token_id if self.prefix_token_id is not None else 0
            batch = torch.full((len(inps), width), pad, dtype=torch.long)
            for r, x in enumerate(inps):
                batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(idx):
                n_in, cont = len(inps[r]), conts[r]
                sel = logp[r, n_in - len(cont) : n_in]
                target = torch.tensor(cont, dtype=torch.long, device=sel.device)
                ll = sel.gather(-1, target[:, None]).sum().item()
                greedy = bool((sel.argmax(dim=-1) == target).all().item())
                out[i] = (float(ll), greedy)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(loglik, is_greedy)`` of each continuation given its context."""
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])
