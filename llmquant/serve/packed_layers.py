"""Batch-dimension edits on llmquant's packed KV layers (:class:`llmquant.quant.kv_cache.LatticeKVLayer`).

Continuous batching joins two caches by left-padding and drops leading all-padding columns
(:mod:`llmquant.serve.batch_cache`).  A packed layer holds, per K and V store, a dict ``t`` of tensors
``[B, H, cap, ...]`` (time on dim 2; lattice: ``words``/``beta``/``scale``, box: ``words``/``scale``,
scalar: ``codes``/``scale``/``zero``, none: ``rows``) whose live columns are ``[start, end)``, plus the
layer's token count ``cumulative_length``.  These functions edit exactly those, without decoding or
re-encoding anything: a merged row's packed bytes are the bytes it had alone, so its decoded keys and
values are bit-identical.

Padding columns copy the row's first live packed column (a valid code that decodes to a finite row);
the attention mask hides them.

This is an adapter over ``kv_cache.py`` internals until that module offers the operations itself (wanted
there: ``PackedRows.left_pad(n)``, ``PackedRows.cat(other)`` along the batch, ``PackedRows.drop_first(n)``
and ``LatticeKVLayer.batch_merge(other, pad_self, pad_other)``).  :func:`is_packed` checks the layout it
relies on, so a layer that no longer has it is simply not merged (requests then wait for the batch to drain)
instead of being edited wrongly.
"""

from __future__ import annotations

import torch


def _store_ok(store) -> bool:
    return (isinstance(getattr(store, "t", None), dict) and isinstance(getattr(store, "start", None), int)
            and isinstance(getattr(store, "end", None), int))


def is_packed(layer) -> bool:
    """The layer has the packed-store layout of the module docstring (K and V stores, ``cumulative_length``)."""
    return (_store_ok(getattr(layer, "k_store", None)) and _store_ok(getattr(layer, "v_store", None))
            and isinstance(getattr(layer, "cumulative_length", None), int))


def stored_columns(layer) -> int:
    """Live cache columns the layer holds (all tokens, or the last ``window - 1`` of a sliding layer)."""
    return layer.k_store.end - layer.k_store.start


def _live(store) -> dict[str, torch.Tensor]:
    return {name: t[:, :, store.start:store.end] for name, t in store.t.items()}


def left_pad(t: torch.Tensor, extra: int) -> torch.Tensor:
    """``t [B, H, T, ...]`` with ``extra`` copies of column 0 prepended along dim 2."""
    if extra == 0:
        return t
    return torch.cat([t[:, :, :1].expand(*t.shape[:2], extra, *t.shape[3:]), t], dim=2)


def merge(layer_a, layer_b, pad_a: int, pad_b: int, total: int) -> None:
    """Rows of ``layer_b`` appended below ``layer_a``'s (in place in ``layer_a``), after left-padding ``a``'s
    live columns by ``pad_a`` and ``b``'s by ``pad_b`` (both then hold the same column count); ``total`` is
    the merged token count (the attention mask's width)."""
    for sa, sb in ((layer_a.k_store, layer_b.k_store), (layer_a.v_store, layer_b.v_store)):
        if set(sa.t) != set(sb.t):
            raise ValueError(f"packed KV merge: stores with different layouts ({sorted(sa.t)} vs {sorted(sb.t)})")
        a, b = _live(sa), _live(sb)
        merged = {name: torch.cat([left_pad(a[name], pad_a), left_pad(b[name], pad_b)], dim=0) for name in a}
        sa.t = merged
        sa.start, sa.end = 0, next(iter(merged.values())).shape[2]
    layer_a.cumulative_length = int(total)


def drop_first(layer, columns: int, total: int) -> None:
    """Forget the first ``columns`` live columns (padding in every row); ``total`` is the new token count."""
    for store in (layer.k_store, layer.v_store):
        store.start += int(columns)
    layer.cumulative_length = int(total)
