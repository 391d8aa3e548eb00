"""The KV cache of one generation: :func:`make_cache`.

A model without KV quantizers (no attention module has ``llmquant_k_quant``/``llmquant_v_quant`` set)
gets a plain transformers ``DynamicCache``.
"""

from __future__ import annotations

from torch import nn


def kv_quantized_attention(model: nn.Module) -> dict[int, nn.Module]:
    """``{layer_idx: attention module}`` of the attention modules whose K or V quantizer slot is set."""
    out = {}
    for mod in model.modules():
        if getattr(mod, "llmquant_k_quant", None) is not None or getattr(mod, "llmquant_v_quant", None) is not None:
            idx = getattr(mod, "layer_idx", None)
            if idx is None:
                raise ValueError(f"make_cache: attention module {type(mod).__name__} has KV quantizers but no "
                                 "layer_idx, so its cache layer cannot be found")
            out[int(idx)] = mod
    return out


def make_cache(model: nn.Module, batch_size: int = 1):
    """A transformers ``Cache`` for one generation with ``model`` (``batch_size`` sequences).

    ``DynamicCache`` (full-precision keys/values) when the model has no KV quantizers."""
    from transformers import DynamicCache

    if batch_size < 1:
        raise ValueError(f"make_cache: batch_size must be >= 1, got {batch_size}")
    return DynamicCache(config=getattr(model, "config", None))
