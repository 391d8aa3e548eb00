"""Perplexity of a causal LM on WikiText-2 / C4: the standard non-overlapping-window protocol.

Protocol
--------
1. Text: the test split as one string (WikiText-2: the raw test file joined as-is, i.e.
   ``"".join(rows)`` of HF ``wikitext-2-raw-v1``; C4: the validation documents joined with
   ``"\\n\\n"``), see :func:`llmquant.data.load_text`.
2. Tokenize once, without special tokens -> ``ids[T]``.
3. Windows: ``W = T // context`` non-overlapping windows ``ids[w*c : (w+1)*c]``; the last
   partial window is dropped.  ``max_tokens`` caps the tokens used: ``W = min(W, max_tokens // c)``;
   if ``max_tokens < context`` a single window of ``max_tokens`` tokens is used instead.
4. Each window is scored independently (no state carried across windows), so its first token
   has no prediction: a window contributes ``c - 1`` scored tokens.
5. ``NLL = -(1/N) * sum_{w, t=1..c-1} log p(x_{w,t} | x_{w,<t})`` with ``N = W * (c - 1)``,
   accumulated in float64; ``ppl = exp(NLL)``.

Works with any HF causal LM whose ``model(input_ids).logits`` is ``[B, L, V]``.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-less wrapper: assume CPU
        return torch.device("cpu")


def window_ids(ids: torch.Tensor, context: int, max_tokens: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into non-overlapping windows -> LongTensor ``[W, L]`` (protocol steps 3).

    ``L = context`` normally, ``L = max_tokens`` when ``max_tokens < context``.
    """
    if ids.dim() != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(ids.shape)}")
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens (got {context})")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (got {max_tokens})")
    length = context
    n_windows = ids.numel() // context
    if max_tokens is not None:
        if max_tokens < context:
            length, n_windows = max_tokens, 1
        else:
            n_windows = min(n_windows, max_tokens // context)
    if n_windows < 1 or ids.numel() < length:
        raise ValueError(
            f"the text has {ids.numel()} tokens, fewer than one window of {length}; "
            "use a smaller --context or a longer text"
        )
    return ids[: n_windows * length].view(n_windows, length)


@torch.no_grad()
def nll_of_windows(model, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> tuple[float, int]:
    """Summed next-token NLL (float64) and the number of scored tokens over ``windows [W, L]``."""
    device = _model_device(model)
    total = 0.0
    count = 0
    batches = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="perplexity", unit="batch")
    for start in batches:
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        # Predictions for positions 1..L-1 come from positions 0..L-2.
        pred = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
        target = batch[:, 1:].reshape(-1)
        # Per-token losses in fp32, summed in fp64 so long evaluations do not drift.
        total += F.cross_entropy(pred, target, reduction="none").double().sum().item()
        count += target.numel()
    return total, count


def perplexity(
    model,
    tokenizer,
    dataset: str = "wikitext2",
    context: int = 2048,
    max_tokens: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    batch_size: int = 1,
) -> dict:
    """Perplexity of ``model`` on ``dataset``'s test split (see the module docstring for the protocol).

    Returns ``{"ppl", "nll", "tokens", "scored_tokens", "windows", "context", "dataset", "seconds"}``
    where ``tokens = windows * window_length`` is the number of tokens fed to the model.
    """
    from llmquant.data import load_text, tokenize_text

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    t0 = time.perf_counter()
    ids = tokenize_text(tokenizer, load_text(dataset, "test", data_dir))
    windows = window_ids(ids, context, max_tokens)
    was_training = model.training
    model.eval()
    try:
        total, count = nll_of_windows(model, windows, batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    nll = total / count
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": int(windows.numel()),
        "scored_tokens": int(count),
        "windows": int(windows.shape[0]),
        "context": int(windows.shape[1]),
        "dataset": dataset,
        "seconds": time.perf_counter() - t0,
    }
