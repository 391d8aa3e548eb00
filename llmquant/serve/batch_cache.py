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
* :func:`can_merge` / :func:`merge` / :func:`trim_left`: two batches are joined by left-padding the shorter one
  to the longer length ``L`` (padding columns copy the row's first stored column, so no quantizer ever sees
  an all-zero row; the mask hides them), and leading columns that are padding in every row are dropped after
  rows retire.  Layers that allow it: transformers' ``DynamicLayer`` (stores all ``L`` columns),
  ``DynamicSlidingWindowLayer`` (stores the last ``min(L, w - 1)`` columns, ``cumulative_length = L``) and
  llmquant's packed ``LatticeKVLayer``, full or sliding (edited through :mod:`llmquant.serve.packed_layers`
  without re-encoding: a row's packed bytes are the bytes it had alone).  A sliding layer of a batch with
  ``L`` columns stores ``s(L) = min(L, w - 1)``; joining at ``L* = max(L_a, L_b)`` prepends
  ``s(L*) - s(L_a)`` (resp. ``s(L*) - s(L_b)``) padding columns, and dropping ``c`` leading columns removes
  ``s(L) - s(L - c)`` stored ones.  Other caches (static, offloaded, recording sliding layers) are never
  merged: new requests wait until the batch drains.
"""

from __future__ import annotations

import torch

from llmquant.serve import packed_layers


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


def _kind(layer) -> str | None:
    """``"full"``, ``"sliding"`` (transformers tensor layers), ``"packed"`` (llmquant) or None (not mergeable)."""
    full, sliding = _layer_types()
    if full is not None and type(layer) is full:
        return "full"
    if sliding is not None and type(layer) is sliding:
        return None if getattr(layer, "record_past", False) else "sliding"
    return "packed" if packed_layers.is_packed(layer) else None


def _window(layer) -> int | None:
    return getattr(layer, "sliding_window", None) if _kind(layer) != "full" else None


def _kept(columns: int, window: int | None) -> int:
    """Columns a layer stores for a batch with ``columns`` mask columns: all, or the last ``window - 1``."""
    return columns if window is None else min(columns, window - 1)


def _stored(layer) -> int:
    if _kind(layer) == "packed":
        return packed_layers.stored_columns(layer)
    return layer.keys.shape[-2] if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 else 0


def _total(layer) -> int:
    """The layer's token count (the attention mask's width)."""
    return layer.keys.shape[-2] if _kind(layer) == "full" else int(layer.cumulative_length)


def can_merge(cache) -> bool:
    layers = _layers(cache)
    if not layers or getattr(cache, "offloading", False):
        return False
    for layer in layers:
        if _kind(layer) is None or not getattr(layer, "is_initialized", False):
            return False
        window = _window(layer)
        if window is not None and (not isinstance(window, int) or window < 2):
            return False
    return True


def select_rows(cache, keep: torch.Tensor) -> None:
    """Keep only rows ``keep`` (1-D long tensor), in place."""
    cache.batch_select_indices(keep)


def _check(layer, columns: int, what: str) -> None:
    window = _window(layer)
    if _total(layer) != columns or _stored(layer) != _kept(columns, window):
        raise RuntimeError(f"batch cache {what}: a {type(layer).__name__} holds {_stored(layer)} columns for "
                           f"{_total(layer)} tokens, expected {_kept(columns, window)} for {columns} mask columns")


def merge(cache_a, cache_b, len_a: int, len_b: int) -> None:
    """Append ``cache_b``'s rows below ``cache_a``'s (in place in ``cache_a``); ``len_a``/``len_b`` are the
    two batches' mask widths (token counts); the merged batch has ``max(len_a, len_b)`` (module docstring)."""
    length = max(len_a, len_b)
    if len(cache_a.layers) != len(cache_b.layers):
        raise RuntimeError(f"batch cache merge: {len(cache_a.layers)} vs {len(cache_b.layers)} layers")
    for la, lb in zip(cache_a.layers, cache_b.layers):
        if type(la) is not type(lb) or _window(la) != _window(lb):
            raise RuntimeError(f"batch cache merge: layer kinds differ ({type(la).__name__} vs {type(lb).__name__})")
        _check(la, len_a, "merge")
        _check(lb, len_b, "merge")
        window = _window(la)
        pad_a = _kept(length, window) - _kept(len_a, window)
        pad_b = _kept(length, window) - _kept(len_b, window)
        if _kind(la) == "packed":
            packed_layers.merge(la, lb, pad_a, pad_b, length)
            continue
        la.keys = torch.cat([packed_layers.left_pad(la.keys, pad_a), packed_layers.left_pad(lb.keys, pad_b)], dim=0)
        la.values = torch.cat([packed_layers.left_pad(la.values, pad_a),
                               packed_layers.left_pad(lb.values, pad_b)], dim=0)
        if _kind(la) == "sliding":
            la.cumulative_length = length


def trim_left(cache, columns: int) -> None:
    """Drop the first ``columns`` mask columns from every layer (they must be padding in every row)."""
    if columns <= 0:
        return
    for layer in cache.layers:
        total = _total(layer)
        window = _window(layer)
        _check(layer, total, "trim")
        drop = _kept(total, window) - _kept(total - columns, window)
        if _kind(layer) == "packed":
            packed_layers.drop_first(layer, drop, total - columns)
            continue
        layer.keys = layer.keys[:, :, drop:]
        layer.values = layer.values[:, :, drop:]
        if _kind(layer) == "sliding":
            layer.cumulative_length = total - columns
