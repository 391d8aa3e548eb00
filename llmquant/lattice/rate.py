"""Rate accounting in bits per entry, counting every piece of side information.

A *stream* is one row or column of ``n`` entries, cut into ``n / d`` d-vectors.  Its bits:

* codes and β indices, mixed-radix packed (:func:`.packing.pack_mixed_radix`):
  ``bitlength(q^n * k^(n/d) - 1)`` bits, i.e. ``n log2 q + (n/d) log2 k`` rounded up;
* or nibble-packed (:func:`.packing.pack_codes` + :func:`.packing.pack_bits` of the β index at
  ``ceil(log2 k)`` bits, 32-bit word aligned): ``4 n`` + ``32 ceil((n/d) ceil(log2 k) / 32)``;
* plus side information per stream: ``side_bits`` (e.g. 16 for one fp16 scale, 32 for an
  fp16 scale and an fp16 mean).

``stream_rate`` returns (total bits) / n, the number the benchmark reports.
"""

from __future__ import annotations

import math

from .packing import stream_bits_exact


def nested_rate(q: int, k: int, d: int = 8) -> float:
    """Asymptotic rate of the mixed-radix packer: ``log2 q + log2 k / d`` bits per entry."""
    return math.log2(q) + math.log2(k) / d


def beta_index_width(k: int) -> int:
    """Bits per β index in the fixed-width layout (``pack_bits``); 0 when k == 1 (nothing stored)."""
    return 0 if k <= 1 else math.ceil(math.log2(k))


def stream_bits(n: int, q: int, k: int, d: int = 8, side_bits: int = 16, packer: str = "mixed_radix") -> int:
    """Exact bits of one stream of ``n`` entries (``n % d == 0``) for ``packer`` in
    {"mixed_radix", "nibble"}, including ``side_bits`` of side information."""
    if n % d:
        raise ValueError(f"stream length {n} is not a multiple of the lattice dimension {d}: pad the stream")
    nv = n // d
    if packer == "mixed_radix":
        body = stream_bits_exact(nv, q, k, d)
    elif packer == "nibble":
        if q > 16:
            raise ValueError(f"the nibble packer holds q <= 16, got q={q}: use packer='mixed_radix'")
        w = beta_index_width(k)
        body = 4 * n + 32 * math.ceil(nv * w / 32)
    else:
        raise ValueError(f"packer must be 'mixed_radix' or 'nibble', got {packer!r}")
    return body + side_bits


def stream_rate(n: int, q: int, k: int, d: int = 8, side_bits: int = 16, packer: str = "mixed_radix") -> float:
    """Bits per entry of one stream (see :func:`stream_bits`)."""
    return stream_bits(n, q, k, d, side_bits, packer) / n


def scalar_stream_bits(n: int, levels: int, side_bits: int = 16) -> int:
    """Exact bits of ``n`` scalar indices with ``levels`` values, mixed-radix packed, plus side info."""
    return (levels**n - 1).bit_length() + side_bits
