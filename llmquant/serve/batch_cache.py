"""The KV cache of a decode batch: creation and the batch-dimension edits continuous batching needs.

A batch's cache holds, per layer, keys/values ``[B, kv_heads, L, head_dim]`` where every row is
left-padded: row ``b``'s real tokens are the last ``n_b`` columns (contiguous, so cache-index distance
equals position distance, which keeps sliding-window masks right).  The 2-D attention mask ``[B, L]``
(1 = real) travels next to the cache.

* :func:`new_cache`: ``llmquant.quant.kv_cache.make_cache(model, batch_size)`` when that module exists
  (it returns a lattice-quantized cache for models with KV quantizers), else a ``DynamicCache``.
* :func:`can_select`: rows can be dropped (``batch_select_indices``) -- true for transformers'
  ``DynamicLayer``/``DynamicSlidingWindowLayer`` layers, for layer classes that define their own
  ``batch_select_indices`` (llmquant's packed ``LatticeKVLayer``), or a cache that declares
  ``supports_batch_select = True``.  Otherwise finished rows stay in the batch as dead rows.
* :func:`can_merge` / :func:`merge` / :func:`trim_left`: plain full-history ``DynamicLayer`` layers only:
  two batches are joined by left-padding the shorter one to the longer length (padding columns copy
  the row's first column, so no quantizer ever sees an all-zero row; the mask hides them), and leading
  columns that are padding in every row are dropped after rows retire.  Caches without this (sliding
  windows, quantized layouts) are never merged: new requests wait until the batch drains.
"""

from __future__ import annotations

import torch


def new_cache(model, batch_size: int):
    """A fresh, empty cache for ``batch_size`` rows of ``model``."""
    try:
        from llmquant.quant.kv_cache import make_cache
    except ModuleNotFoundError as exc:
        if exc.name != "llmquant.quant.kv_cache":
            raise
        from transformers import DynamicCache

        return DynamicCache()
    return make_cache(model, batch_size)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    return list(layers) if isinstance(layers, (list, tuple)) else None


def _layer_types():
    from transformers import cache_utils

    full = getattr(cache_utils, "DynamicLayer", None)
    sliding = getattr(cache_utils, "DynamicSlidingWindowLayer", None)
    return full, sliding


def can_select(cache) -> bool:
    if getattr(cache, "supports_batch_select", False):
        return True
    layers = _layers(cache)
    full, sliding = _layer_types()
    if layers is None or full is None:
        return False
    allowed = tuple(t for t in (full, sliding) if t is not None)
    return all(type(layer) in allowed or "batch_select_indices" in type(layer).__dict__ for layer in layers)


def can_merge(cache) -> bool:
    layers = _layers(cache)
    full, _ = _layer_types()
    return layers is not None and full is not None and all(type(layer) is full for layer in layers)


def select_rows(cache, keep: torch.Tensor) -> None:
    """Keep only rows ``keep`` (1-D long tensor), in place."""
    cache.batch_select_indices(keep)


def _left_pad(t: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return t
    return torch.cat([t[:, :, :1].expand(-1, -1, extra, -1), t], dim=2)


def merge(cache_a, cache_b, len_a: int, len_b: int) -> None:
    """Append ``cache_b``'s rows below ``cache_a``'s (in place in ``cache_a``); lengths ``len_a``/``len_b``."""
    length = max(len_a, len_b)
    for la, lb in zip(cache_a.layers, cache_b.layers):
        if not getattr(lb, "is_initialized", True) or lb.keys is None or lb.keys.numel() == 0:
            continue
        la.keys = torch.cat([_left_pad(la.keys, length - len_a), _left_pad(lb.keys, length - len_b)], dim=0)
        la.values = torch.cat([_left_pad(la.values, length - len_a), _left_pad(lb.values, length - len_b)], dim=0)


def trim_left(cache, columns: int) -> None:
    """Drop the first ``columns`` cache columns of every layer (they must be padding in every row)."""
    if columns <= 0:
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, columns:]
            layer.values = layer.values[:, :, columns:]
