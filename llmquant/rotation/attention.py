"""The ``llmquant`` attention function: Hadamard on queries/keys after RoPE, KV quantizer slots.

Registered with transformers' ``AttentionInterface`` (and a matching mask function with
``AttentionMaskInterface``) by :func:`ensure_registered`, never at import time.  Two names:

* ``"llmquant"``: the underlying kernel is transformers' ``sdpa`` (mask from ``sdpa_mask``);
* ``"llmquant_eager"``: the model's own ``eager_attention_forward`` (mask from ``eager_mask``), for models
  that were running eager attention.

Given the attention module ``module`` (query/key/value [batch, heads, seq, head_dim], keys/values already
updated in the KV cache by the caller):

    q, k = R(q), R(k)         R = module.llmquant_qk_rotation (x -> x @ Q_h, Q_h orthogonal [head_dim]^2)
    k = module.llmquant_k_quant(k)   if set   (None by default)
    v = module.llmquant_v_quant(v)   if set
    return base(module, q, k, v, mask, ...)

Keys/values tagged ``llmquant_kv_stored`` come from :class:`llmquant.quant.kv_cache.LatticeKVLayer`, which
rotated and quantized each token once on insert (bit-identical rows): for them only ``q = R(q)`` runs here.
Without a cache (``use_cache=False``, perplexity) or with a plain ``DynamicCache`` the keys and values
are rotated and fake-quantized here, every call.

Since ``(q Q_h)(k Q_h)^T = q k^T`` the scores are unchanged; the rotation only spreads outliers in the
keys before they are quantized.  Modules without the attributes pass through unchanged.  ``R`` is a
:class:`~llmquant.rotation.random_hadamard.HadamardRotation`; its ``backend`` (set with
:func:`llmquant.quant.set_backend`) routes it through the Triton fast Hadamard kernel when possible.
"""

from __future__ import annotations

import sys

ATTN_NAME = "llmquant"
ATTN_NAME_EAGER = "llmquant_eager"


def _base_forward(module, implementation: str):
    if implementation == ATTN_NAME_EAGER:
        # Each modeling file has its own eager function (Gemma3 adds softcapping/sliding windows).
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its modeling module")
        return fn
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def llmquant_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """Attention function registered as ``llmquant`` / ``llmquant_eager`` (see module docstring)."""
    rot = getattr(module, "llmquant_qk_rotation", None)
    stored = getattr(key, "llmquant_kv_stored", False)  # rotated + quantized on insert by the lattice KV cache
    if rot is not None:
        query = rot(query)
        if not stored:
            key = rot(key)
    k_quant = getattr(module, "llmquant_k_quant", None)
    if k_quant is not None and not stored:
        key = k_quant(key)
    v_quant = getattr(module, "llmquant_v_quant", None)
    if v_quant is not None and not getattr(value, "llmquant_kv_stored", False):
        value = v_quant(value)
    impl = getattr(module.config, "_attn_implementation", ATTN_NAME)
    return _base_forward(module, impl)(module, query, key, value, attention_mask, **kwargs)


def ensure_registered() -> None:
    """Register ``llmquant`` and ``llmquant_eager`` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(ATTN_NAME, llmquant_attention_forward)
    AttentionInterface.register(ATTN_NAME_EAGER, llmquant_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    AttentionMaskInterface.register(ATTN_NAME_EAGER, eager_mask)


def llmquant_implementation_for(current: str | None) -> str:
    """The llmquant attention name wrapping the model's current implementation ("eager" -> eager)."""
    if current in (ATTN_NAME, ATTN_NAME_EAGER):
        return current
    if current == "eager":
        return ATTN_NAME_EAGER
    if current in (None, "sdpa"):
        return ATTN_NAME
    raise ValueError(
        f"attention implementation {current!r} cannot be wrapped by llmquant's Q/K rotation; load the model "
        "with attn_implementation='sdpa' or 'eager'"
    )
