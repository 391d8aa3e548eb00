"""KV-cache quantizers plugged into the attention slots of the ``llmquant`` attention function.

Each attention module (adapter role ``attn``) gets ``llmquant_k_quant`` and
``llmquant_v_quant``: :class:`~llmquant.quant.activations.RowQuantizer` instances applied to
keys (after RoPE and the online Q/K Hadamard) and values, ``[batch, kv_heads, seq, head_dim]``,
per token and per head (one row = ``head_dim`` entries, one scale per row).  Keys and values
have their own quantizer objects (and so their own beta buffers).
"""

from __future__ import annotations

from llmquant.quant.activations import row_quantizer_from_config


def attach_kv_quantizers(layer, adapter, kv_cfg) -> None:
    """Set the K/V slots of one decoder layer's attention module from ``kv_cfg`` (no-op for ``none``)."""
    if kv_cfg.method == "none":
        return
    attn = adapter.get(layer, "attn")
    if not hasattr(attn, "llmquant_qk_rotation") and kv_cfg.method != "none":
        raise RuntimeError(
            "kv quantization needs the llmquant attention function (rotation.enabled with rotation.qk); "
            f"attention module {type(attn).__name__} has no llmquant_qk_rotation"
        )
    attn.llmquant_k_quant = row_quantizer_from_config(kv_cfg)
    attn.llmquant_v_quant = row_quantizer_from_config(kv_cfg)


def detach_kv_quantizers(layer, adapter) -> None:
    attn = adapter.get(layer, "attn")
    for slot in ("llmquant_k_quant", "llmquant_v_quant"):
        if slot in attn._modules:
            del attn._modules[slot]
        setattr(attn, slot, None)
