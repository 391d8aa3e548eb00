"""Bits per entry, side information included, computed from a config (never typed by hand).

Weights (per quantized linear with ``in_features = K``):

* lattice: ``log2(q) + log2(k)/8`` for the code and the beta index of each 8-vector, plus
  ``16/K`` for the fp16 per-row scale (the information rate; what ``LatticeLinear`` stores is more:
  results report the stored figure, :mod:`llmquant.quant.stored_bits`); ``code: box``: the packed
  words, ``b + 1`` bits per entry, + ``16/K`` (stored = counted);
* scalar: ``bits`` plus ``16/G`` for the fp16 scale and, asymmetric, ``16/G`` for the zero
  point, with ``G = group_size`` (``K`` when per channel);
* none: 16 (fp16/bf16 storage);
* plus ``32/K`` with ``weights.bias_correction`` (a float32 bias per output row).

The model figure is the parameter-weighted mean over all quantized linears.  Activations
(per token, row of length ``K``) and KV (per token per head, ``head_dim`` entries) use the
same formulas with their own scale granularity (``code: box``: the row's packed words + one fp16 scale).  Embeddings and ``lm_head`` stay in floating
point and are not counted in these figures (as in the QuaRot / NestQuant papers); with ``model.embed_dtype`` set,
the dict also has ``"embeddings"``: their stored bits per entry (:func:`embedding_bits`: 16 for float16 /
bfloat16, 32 for float32), so a reduced-precision embedding is stated next to the other figures.
"""

from __future__ import annotations

import math

from llmquant.config.schema import Config, DynamicQuantConfig, WeightConfig

FP_BITS = 16.0
SCALE_BITS = 16.0
BIAS_BITS = 32.0


def weight_bits(w: WeightConfig, in_features: int) -> float:
    """Bits per weight entry of one linear with ``in_features`` inputs."""
    if w.method == "none":
        return FP_BITS
    # bias correction stores one float32 bias per output row
    bias = BIAS_BITS / in_features if w.bias_correction and w.algorithm == "gptq" else 0.0
    if w.method == "lattice" and w.code == "box":
        return box_weight_bits(w.box_bits, in_features) + bias
    if w.method == "lattice":
        return math.log2(w.q) + math.log2(w.k) / 8 + SCALE_BITS / in_features + bias
    group = w.group_size or in_features
    side = SCALE_BITS * (1 if w.symmetric else 2)
    return w.bits + side / group + bias


def box_weight_bits(b: int, in_features: int) -> float:
    """Stored bits per entry of one box-coded row (:class:`llmquant.lattice.box.BoxCodec`): its
    ``in_features / 8`` words of ``8b + 8`` bits as an int32 stream (last int32 zero-padded) + the fp16 scale."""
    n_int32 = -(-(8 * b + 8) * (in_features // 8) // 32)
    return (32 * n_int32 + SCALE_BITS) / in_features


def dynamic_bits(d: DynamicQuantConfig, row: int) -> float:
    """Bits per entry of a dynamically quantized row of ``row`` entries (one scale per row)."""
    if d.method == "none":
        return FP_BITS
    if d.method == "lattice" and getattr(d, "code", "voronoi") == "box":
        return box_weight_bits(d.box_bits, row)  # the row's packed words + its fp16 scale (stored = counted)
    if d.method == "lattice":
        return math.log2(d.q) + math.log2(d.k) / 8 + SCALE_BITS / row
    side = SCALE_BITS * (1 if d.symmetric else 2)
    return d.bits + side / row


#: bits of one entry of each floating-point storage dtype (``model.dtype`` / ``model.embed_dtype``)
DTYPE_BITS = {"float32": 32.0, "float16": 16.0, "bfloat16": 16.0}


def embedding_bits(cfg: Config) -> float:
    """Stored bits per entry of the input embeddings and ``lm_head``: ``model.embed_dtype``, else ``model.dtype``."""
    return DTYPE_BITS[cfg.model.embed_dtype or cfg.model.dtype]


def model_bits(cfg: Config, linear_shapes: dict[str, tuple[int, int]], head_dim: int) -> dict[str, float]:
    """``{"weights", "activations", "kv"}`` bits per entry for a model, plus ``"embeddings"``
    (:func:`embedding_bits`) when ``model.embed_dtype`` is set.

    ``linear_shapes``: quantized linear name -> ``(out_features, in_features)``.  Weights are
    weighted by parameter count, activations by input width (one input row per linear call).
    """
    if not linear_shapes:
        raise ValueError("model_bits: no linear shapes given; pass the decoder-layer linears")
    n_params = sum(n * k for n, k in linear_shapes.values())
    wbits = sum(n * k * weight_bits(cfg.weights, k) for n, k in linear_shapes.values()) / n_params
    width = sum(k for _, k in linear_shapes.values())
    abits = sum(k * dynamic_bits(cfg.activations, k) for _, k in linear_shapes.values()) / width
    out = {"weights": wbits, "activations": abits, "kv": dynamic_bits(cfg.kv, head_dim)}
    if cfg.model.embed_dtype is not None:
        out["embeddings"] = embedding_bits(cfg)
    return out
