"""INT-b scalar quantization with scale and zero point, range clipping, and nibble packing.

Asymmetric: ``scale = (max - min) / (2^b - 1)``, ``zero = round(-min / scale)``,
``c = clamp(round(w / scale) + zero, 0, 2^b - 1)``, ``w_hat = scale * (c - zero)``.
Symmetric: ``zero = 2^(b-1)`` fixed, ``scale = 2 * absmax / (2^b - 1)`` (codes stay unsigned).
Scales are rounded to fp16 precision (that is what the bit count charges for).

Clipping: the range ``[min, max]`` is shrunk by a ratio ``p`` (RTN: the ``p`` on a grid that
minimizes the squared error per row/group; dynamic quantizers: a fixed ``clip_ratio``).
"""

from __future__ import annotations

import torch

#: shrink ratios tried by the RTN clipping search
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 .. 0.5


def _range_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    maxq = 2**bits - 1
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = 2 * amax / maxq
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        lo = torch.minimum(lo, torch.zeros_like(lo))
        hi = torch.maximum(hi, torch.zeros_like(hi))
        scale = (hi - lo) / maxq
        zero = None
    # an all-zero row/group still needs a usable, finite scale
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.half().float()
    if zero is None:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in ``[0, 2^bits)`` (same shape as ``w``; ``scale``/``zero`` broadcast)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return scale * (quantize_codes(w, scale, zero, bits) - zero)


def find_params(
    w: torch.Tensor, bits: int, symmetric: bool, clip_search: bool = False, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` of shape ``[..., 1]`` for ``w [..., G]`` (rows are the last dim).

    ``clip_search``: choose, per row, the shrink ratio in :data:`CLIP_GRID` with the smallest
    squared error; otherwise use ``clip_ratio``.
    """
    lo = w.amin(dim=-1, keepdim=True)
    hi = w.amax(dim=-1, keepdim=True)
    if not clip_search:
        return _range_params(lo * clip_ratio, hi * clip_ratio, bits, symmetric)
    best_err = None
    best_scale = best_zero = None
    for p in CLIP_GRID:
        scale, zero = _range_params(lo * p, hi * p, bits, symmetric)
        err = (fake_quant(w, scale, zero, bits) - w).pow(2).sum(dim=-1, keepdim=True)
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def grouped_params(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, clip_search: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of shape ``[N, K/G]`` for a weight ``[N, K]`` (``group_size`` 0 = per row)."""
    n, k = w.shape
    g = group_size or k
    scale, zero = find_params(w.reshape(n, k // g, g), bits, symmetric, clip_search)
    return scale.squeeze(-1), zero.squeeze(-1)


def expand_groups(t: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, K/G]`` -> ``[N, K]`` by repeating each group's value over its ``G`` columns."""
    return t.repeat_interleave(k // t.shape[1], dim=1)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes ``[N, K]`` in ``[0, 16)``, ``K`` even -> uint8 ``[N, K/2]``;
    column ``2j`` in the low nibble, ``2j+1`` in the high nibble of byte ``j``."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles` -> uint8 ``[N, K]``."""
    lo = packed & 0xF
    hi = packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)
