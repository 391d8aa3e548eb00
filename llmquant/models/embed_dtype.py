"""Input embeddings and ``lm_head`` stored in a narrower float dtype than the model computes in.

``set_embed_dtype(model, torch.bfloat16)`` casts the weight of the input embedding (adapter role ``embed``) and
of ``lm_head`` to the storage dtype (a tied pair stays one ``Parameter``) and gives both modules a forward that
computes in the model's dtype from the stored values:

* embedding: ``F.embedding(ids, W_stored).to(compute)`` (a row lookup, so the upcast rows are exactly the stored
  values); a Gemma-style ``embed_scale`` buffer is then applied in the compute dtype: ``rows * embed_scale``;
* ``lm_head``: ``logits[..., r] = x @ W_stored[r].to(compute)^T (+ bias)``, computed over blocks of
  :data:`HEAD_BLOCK_ROWS` vocabulary rows, so at most one block of the weight exists in the compute dtype at
  a time (``HEAD_BLOCK_ROWS * hidden`` entries) instead of a full-precision copy.

Only the storage is rounded: the result equals the float computation with ``W`` replaced by its stored
(rounded) values.  The modules keep their class (a subclass is swapped in, named ``Stored<Class>``), names
and state-dict keys; the weight tensors in the state dict have the storage dtype, so a checkpoint stores
``vocab * hidden`` entries at 16 bits instead of 32 for float16 / bfloat16.  The module attribute
``llmquant_compute_dtype`` holds the compute dtype, and ``model.config.dtype`` is set to it (what
``config.json`` then names).  Works on meta parameters too (a model being rebuilt from a
checkpoint: the shapes and dtypes the file must have).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: vocabulary rows of ``lm_head`` upcast at a time
HEAD_BLOCK_ROWS = 4096


class _StoredEmbedding:
    """Forward of an ``nn.Embedding`` (or subclass) whose weight is stored narrower than it computes."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(input_ids, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse).to(self.llmquant_compute_dtype)
        scale = self._buffers.get("embed_scale")  # Gemma3TextScaledWordEmbedding: rows * sqrt(hidden)
        return out * scale.to(out.dtype) if scale is not None else out


class _StoredLinear:
    """Forward of an ``nn.Linear`` (``lm_head``) whose weight is stored narrower than it computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cd = self.llmquant_compute_dtype
        w, b = self.weight, self.bias
        x = x.to(cd)
        out = self._native(x)
        if out is not None:
            return out
        out = x.new_empty(*x.shape[:-1], w.shape[0])
        for r in range(0, w.shape[0], HEAD_BLOCK_ROWS):
            rows = slice(r, r + HEAD_BLOCK_ROWS)
            out[..., rows] = F.linear(x, w[rows].to(cd), b[rows].to(cd) if b is not None else None)
        return out


    def _native(self, x: torch.Tensor) -> torch.Tensor | None:
        """Decode steps on CPU (float32 compute, at most ``GEMV_MAX_ROWS`` input rows, ``backend`` native / auto): the compiled
        GEMV reading the 16-bit weight directly (:func:`llmquant.lattice.native.half_gemv`), instead of upcasting
        ``HEAD_BLOCK_ROWS`` rows at a time; equal to the blocked path up to fp32 rounding.  None otherwise."""
        from llmquant.lattice import native

        w = self.weight
        if (getattr(self, "backend", "auto") not in ("native", "auto") or x.dtype != torch.float32
                or w.device.type != "cpu" or x.numel() > native.GEMV_MAX_ROWS * w.shape[1] or not w.is_contiguous()):
            return None

        if not native.available():
            return None
        y = native.half_gemv(w, x.reshape(-1, w.shape[1]), self.bias)
        return y.view(*x.shape[:-1], w.shape[0])


_CLASSES: dict[tuple[type, type], type] = {}


def _stored_class(base: type, mixin: type) -> type:
    key = (base, mixin)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Stored{base.__name__}", (mixin, base), {"__module__": __name__})
    return _CLASSES[key]


def is_stored(module: nn.Module) -> bool:
    """True for a module :func:`set_embed_dtype` changed."""
    return isinstance(module, (_StoredEmbedding, _StoredLinear))


@torch.no_grad()
def set_embed_dtype(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Store ``model``'s input embedding and ``lm_head`` weights in ``dtype`` (see the module docstring); the compute
    dtype is the embedding weight's dtype before the first call.  Returns the module names changed ([] when the
    weights already have ``dtype`` and were never changed)."""
    from llmquant.models.adapters import get_adapter

    ad = get_adapter(model)
    emb, head = ad.get(model, "embed"), ad.get(model, "lm_head")
    if not isinstance(emb, nn.Embedding) or not isinstance(head, nn.Linear):
        raise TypeError(f"set_embed_dtype: expected an nn.Embedding and an nn.Linear lm_head, got "
                        f"{type(emb).__name__} and {type(head).__name__}")
    compute = getattr(emb, "llmquant_compute_dtype", emb.weight.dtype)
    if emb.weight.dtype == dtype and head.weight.dtype == dtype and not is_stored(emb):
        return []
    tied = head.weight is emb.weight
    new = nn.Parameter(emb.weight.detach().to(dtype), requires_grad=emb.weight.requires_grad)
    emb.weight = new
    head.weight = new if tied else nn.Parameter(head.weight.detach().to(dtype), requires_grad=head.weight.requires_grad)
    for module, mixin in ((emb, _StoredEmbedding), (head, _StoredLinear)):
        if not is_stored(module):
            module.__class__ = _stored_class(type(module), mixin)
        module.llmquant_compute_dtype = compute
    if getattr(model, "config", None) is not None and hasattr(model.config, "dtype"):
        # config.json names the compute dtype, so that from_pretrained's dtype="auto" does not take the
        # embeddings' storage dtype (its first floating tensor) for the model's
        model.config.dtype = compute
    return [ad.roles["embed"], ad.roles["lm_head"]]


def apply_embed_dtype(model: nn.Module, cfg) -> list[str]:
    """:func:`set_embed_dtype` with ``cfg.model.embed_dtype`` (an llmquant config); nothing when it is null or
    ``cfg.model.dtype``.  Returns the module names changed."""
    e = cfg.model.embed_dtype
    if e is None or e == cfg.model.dtype:
        return []
    return set_embed_dtype(model, getattr(torch, e))
