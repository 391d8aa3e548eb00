"""Stored bits = counted bits: weight bits per weight computed from the tensors actually stored.

A quantized linear is found by the names of its tensors (``<prefix>.<buffer>``): ``LatticeLinear`` with the
Voronoi layout (``codes``, ``beta_idx``, ``row_scale``, ``betas``), with a packed codec layout such as the
box code (``words``, ``row_scale``), or ``ScalarLinear`` (``qweight``, ``scale``, ``zero``); its optional
``bias`` (a model bias or the one bias correction adds) is counted with it.  Activation quantizers are
submodules (``<prefix>.act_q.*``) and are not weights.  Bits = 8 x the bytes of those tensors; weights =
``sum(in_features * out_features)`` over the module specs.  The same function reads sizes from a model's
state dict (:func:`state_sizes`, before saving) or from a ``model.safetensors`` header
(:func:`safetensors_sizes`: each tensor's ``data_offsets``), so ``results.json``'s ``bits.weights`` equals
:func:`checkpoint_weight_bits` of the saved checkpoint exactly.  Embeddings and ``lm_head`` are not weights of
this figure; with ``model.embed_dtype`` set, ``bits.embeddings`` is their stored figure
(:func:`model_embedding_bits`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

#: buffer names (bias aside) that identify the tensors of one quantized linear
SIGNATURES = (
    frozenset({"codes", "beta_idx", "row_scale", "betas"}),  # LatticeLinear, Voronoi nibble layout
    frozenset({"words", "row_scale"}),  # LatticeLinear, box code (codec.pack)
    frozenset({"qweight", "scale", "zero"}),  # ScalarLinear
)


def state_sizes(model) -> dict[str, int]:
    """``{tensor name: bytes}`` of ``model.state_dict()`` (what ``save_model`` writes, tensor by tensor)."""
    return {name: t.numel() * t.element_size() for name, t in model.state_dict().items()}


def safetensors_sizes(file: str | os.PathLike) -> dict[str, int]:
    """``{tensor name: bytes}`` of a safetensors file, from its header's ``data_offsets`` (no data is read)."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: int(v["data_offsets"][1]) - int(v["data_offsets"][0]) for k, v in header.items()
            if k != "__metadata__"}


def quantized_prefixes(names) -> list[str]:
    """Module prefixes whose tensors match one of :data:`SIGNATURES` (sorted)."""
    groups: dict[str, set[str]] = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        groups.setdefault(prefix, set()).add(leaf)
    return sorted(p for p, leaves in groups.items() if (leaves - {"bias"}) in SIGNATURES)


def stored_weight_bits(sizes: Mapping[str, int], specs: Mapping) -> dict:
    """``{"weights": bits per weight, "bits": total stored bits, "n_weights", "modules"}`` of the quantized
    linears in ``sizes`` (``{tensor name: bytes}``); ``specs``: ``{layer: {role: module spec}}`` (the
    checkpoint's ``quantized`` section or ``model.llmquant_specs``), for the number of weights."""
    prefixes = quantized_prefixes(sizes)
    mods = [s for layer in specs.values() for s in layer.values()]
    if len(prefixes) != len(mods):
        raise ValueError(f"stored_weight_bits: {len(prefixes)} quantized linears in the tensors, "
                         f"{len(mods)} module specs")
    keep = set(prefixes)
    total = 8 * sum(b for name, b in sizes.items() if name.rpartition(".")[0] in keep)
    n = sum(int(s["in_features"]) * int(s["out_features"]) for s in mods)
    return {"weights": total / n if n else float("nan"), "bits": total, "n_weights": n, "modules": len(mods)}


def model_weight_bits(model, specs: Mapping) -> float:
    """Stored bits per weight of a quantized ``model`` in memory (see :func:`stored_weight_bits`)."""
    return stored_weight_bits(state_sizes(model), specs)["weights"]


def checkpoint_weight_bits(path: str | os.PathLike, detail: bool = False):
    """Stored bits per weight of the checkpoint at ``path``: tensor sizes from ``model.safetensors``,
    weight counts from ``llmquant_config.json``'s module specs (``detail=True``: the whole dict)."""
    from llmquant.quant.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    path = Path(path)
    specs = json.loads((path / CONFIG_FILE).read_text()).get("quantized") or {}
    d = stored_weight_bits(safetensors_sizes(path / WEIGHTS_FILE), specs)
    return d if detail else d["weights"]


def model_embedding_bits(model) -> float:
    """Stored bits per entry of ``model``'s input embedding and ``lm_head`` weights (8 x bytes / entries over the
    distinct tensors: a tied pair counts once), what :func:`llmquant.config.bits.embedding_bits` predicts from the
    config."""
    from llmquant.models.adapters import get_adapter

    ad = get_adapter(model)
    tensors = {id(w): w for w in (ad.get(model, "embed").weight, ad.get(model, "lm_head").weight)}.values()
    return 8 * sum(w.numel() * w.element_size() for w in tensors) / sum(w.numel() for w in tensors)
