"""Table-driven box-code decoder: the exact values of :meth:`llmquant.lattice.box.BoxCodec.decode` from a few
whole-tensor integer passes and one gather (the CPU reference path of packed weights and of the packed KV cache).

Math.  A word (layout in :mod:`llmquant.lattice.box`) holds ``u_0..u_7`` (``b`` bits each, bits ``[b i, b i + b)``)
and its top byte ``t`` = bits ``[8b, 8b + 8)`` = ``(m, j)`` (``M + K = 8``).  Coordinate ``i`` decodes to
``β_j λ[2 u_i + h_i(m)]``, so the coordinate pair ``(2p, 2p + 1)``, ``p = 0..3``, depends only on its ``2b`` u bits
(word bits ``[2bp, 2bp + 2b)``) and on the lane key ``κ_p(t) = h_2p | h_(2p+1) << 1 | j << 2`` (``2 + K <= 6`` bits).
Its index ``i_p = u_pair | κ_p(t) << 2b < 2^(2b + 2 + K) <= 4096`` selects a row of the pair table

    PAIRS[i] = (β_j λ[2 u_lo + h_lo],  β_j λ[2 u_hi + h_hi])     (u_lo = i & (2^b - 1), u_hi = (i >> b) & (2^b - 1),
                                                                 h_lo, h_hi = bits 2b, 2b + 1 of i, j = i >> (2b + 2))

computed exactly as ``decode`` computes it (``betas.to(dtype)[j] * levels.to(dtype)[l]``), so the output is
bit-identical to ``decode``.  The four indices of a word are built in the four 16-bit lanes of one int64
(SWAR, whole-tensor ops, no broadcast over a small inner dimension):

    w2 = (w & M4) | ((w >> 4b) & M4) << 32             M4 = 2^(4b) - 1           (u_0..3 low half, u_4..7 high half)
    w4 = (w2 & M2) | ((w2 >> 2b) & M2) << 16           M2 = (2^(2b) - 1)(1 + 2^32)  (pair p in lane p)
    w4 |= KEYS[t]                                       KEYS[t] = Σ_p κ_p(t) << (2b + 16 p)

The int64 viewed as int16 is the index vector ``[..., 4]`` (little-endian lane order, values < 2^15), one
``index_select`` of the table viewed as one integer per row (a float32 pair = one int64) gives the eight values in
order.  :func:`decode_flat` optionally multiplies each row by its scale (``scales.to(dtype)[..., None] * x``, the
product ``decode_rows`` and the KV cache compute) and writes into ``out`` (cast to ``out``'s dtype), in chunks of
:data:`CHUNK_WORDS` words so the intermediates stay in cache.  Tables (32 KiB for b = 3) are cached per codec
object, dtype and device.
"""

from __future__ import annotations

import sys
import threading

import torch

#: words decoded per chunk (2 int64 + 5 int32 of reused scratch per word, :func:`_scratch`: 1.7 MiB; larger
#: chunks pay fewer per-op overheads, which dominate below ~30K words)
CHUNK_WORDS = 65536
#: value dtypes with a pair table (a pair of them is one int64 / int32 for the gather)
_PAIR_INT = {torch.float32: torch.int64, torch.float16: torch.int32, torch.bfloat16: torch.int32}


def supported(dtype: torch.dtype) -> bool:
    """Whether :func:`decode_flat` has a table for values of ``dtype`` (little-endian hosts only)."""
    return dtype in _PAIR_INT and sys.byteorder == "little"


#: tables shared by every codec object of one value (:func:`codec_key`), per dtype and device
_SHARED: dict = {}


def codec_key(codec) -> tuple:
    """A hashable value of everything a box codec's encode/decode depends on (width, code, β set, levels), so
    equal codecs held by different modules share their cached tables."""
    return (codec.b, codec.code, codec.m_bits, codec.k_bits, codec.level_table is None,
            None if codec.gamma is None else float(codec.gamma),
            codec.betas.detach().to(torch.float64).cpu().numpy().tobytes(),
            codec.levels.detach().to(torch.float64).cpu().numpy().tobytes())


def _tables(codec, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KEYS int64 [256], PAIRS [2^(2b+2+K)] in _PAIR_INT[dtype])`` of ``codec`` (module docstring), cached on
    the codec and shared by equal codecs."""
    cache = codec.__dict__.setdefault("_lut_cache", {})
    key = (dtype, str(device))
    hit = cache.get(key)
    if hit is not None:
        return hit
    vkey = (codec_key(codec), *key)
    hit = _SHARED.get(vkey)
    if hit is not None:
        cache[key] = hit
        return hit
    from llmquant.lattice.box import codewords

    b, M, K = codec.b, codec.m_bits, codec.k_bits
    H = codewords(codec.code)  # int64 (2^M, 8)
    t = torch.arange(256)
    m, j = t & ((1 << M) - 1), t >> M
    keys = torch.zeros(256, dtype=torch.int64)
    for p in range(4):
        kappa = H[m, 2 * p] | (H[m, 2 * p + 1] << 1) | (j << 2)
        keys |= kappa << (2 * b + 16 * p)
    i = torch.arange(1 << (2 * b + 2 + K))
    u_lo, u_hi = i & ((1 << b) - 1), (i >> b) & ((1 << b) - 1)
    h_lo, h_hi, jj = (i >> (2 * b)) & 1, (i >> (2 * b + 1)) & 1, i >> (2 * b + 2)
    lv, beta = codec.levels.to(dtype), codec.betas.to(dtype)
    if codec.per_beta_levels:  # row jj of the per-β tables
        lo, hi = lv[jj, 2 * u_lo + h_lo], lv[jj, 2 * u_hi + h_hi]
    else:
        lo, hi = lv[2 * u_lo + h_lo], lv[2 * u_hi + h_hi]
    pairs = torch.stack([beta[jj] * lo, beta[jj] * hi], 1).contiguous()
    hit = cache[key] = _SHARED[vkey] = (keys.to(device), pairs.view(_PAIR_INT[dtype]).reshape(-1).to(device))
    return hit


_SCRATCH = threading.local()


def _scratch(n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """This thread's index work buffers for ``n`` words: ``(hi int64 [n], w4 int64 [n], top int32 [n],
    idx int32 [4 n])``, grown on demand and reused by every call (no allocation or first-touch page faults per
    call; at most :data:`CHUNK_WORDS` words: 26 bytes a word)."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    key = str(device)
    b = bufs.get(key)
    if b is None or b[0].numel() < n:
        b = bufs[key] = (torch.empty(n, dtype=torch.int64, device=device), torch.empty(n, dtype=torch.int64, device=device),
                         torch.empty(n, dtype=torch.int32, device=device), torch.empty(4 * n, dtype=torch.int32, device=device))
    return b[0][:n], b[1][:n], b[2][:n], b[3][:4 * n]


def _indices(w: torch.Tensor, b: int, keys: torch.Tensor) -> torch.Tensor:
    """int32 ``[r, 4 n]`` pair-table indices of words ``w [r, n]`` (any integer dtype; module docstring), in this
    thread's scratch buffers (valid until the next call)."""
    r, n = w.shape
    if w.dtype not in (torch.int32, torch.int64) or not w.is_contiguous():
        w = w.to(torch.int64).contiguous()
    w = w.view(-1)
    hi, w4, top, idx = _scratch(w.numel(), w.device)
    m4, m2 = (1 << 4 * b) - 1, ((1 << 2 * b) - 1) * (1 + (1 << 32))
    # int32 words are read in place: every mask below clears the sign-extended bits; results land in int64
    torch.bitwise_and(w, m4 << 4 * b, out=hi).bitwise_left_shift_(32 - 4 * b)  # ((w >> 4b) & M4) << 32
    torch.bitwise_and(w, m4, out=w4).bitwise_or_(hi)  # w2
    torch.bitwise_and(w4, m2 << 2 * b, out=hi).bitwise_left_shift_(16 - 2 * b)  # ((w2 >> 2b) & M2) << 16
    w4.bitwise_and_(m2).bitwise_or_(hi)
    if w.dtype == torch.int32:
        torch.bitwise_right_shift(w, 8 * b, out=top).bitwise_and_(0xFF)
    else:  # int64 words (may carry bits above the word): the top byte does not fit an int32 shift output
        top.copy_((w >> 8 * b).bitwise_and_(0xFF))
    w4.bitwise_or_(torch.index_select(keys, 0, top, out=hi))
    idx.copy_(w4.view(torch.int16))
    return idx.view(r, 4 * n)


def decode_flat(codec, words: torch.Tensor, dtype: torch.dtype = torch.float32, scales: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded rows ``[..., 8 n]`` of words ``[..., n]`` (any integer dtype; the low ``word_bits`` bits are read):
    ``codec.decode(words, dtype)`` flattened, times ``scales.to(dtype)[..., None]`` when ``scales [...]`` is given
    (the product in ``dtype``), written into ``out`` (contiguous, shape ``[..., 8 n]``, any float dtype: a cast)
    or a new tensor of ``dtype``.  Bit-identical to the reference; ``dtype`` must be :func:`supported`."""
    if not supported(dtype):
        raise ValueError(f"box_lut.decode_flat: no pair table for {dtype} (supported: float32, float16, bfloat16)")
    if torch.is_floating_point(words) or words.dtype == torch.bool:
        raise TypeError(f"words must be an integer tensor, got {words.dtype}")
    n = words.shape[-1]
    lead = words.shape[:-1]
    if scales is not None and tuple(scales.shape) != tuple(lead):
        raise ValueError(f"box_lut.decode_flat: scales {tuple(scales.shape)} do not match words {tuple(words.shape)}")
    if out is None:
        out = torch.empty(*lead, 8 * n, dtype=dtype, device=words.device)
    elif tuple(out.shape) != (*lead, 8 * n) or not out.is_contiguous():
        raise ValueError(f"box_lut.decode_flat: out must be contiguous {(*lead, 8 * n)}, got {tuple(out.shape)}")
    w = words.reshape(-1, n)
    o = out.view(-1, 8 * n)
    s = None if scales is None else scales.reshape(-1).to(dtype)
    if (dtype == torch.float32 and out.dtype == torch.float32 and w.dtype == torch.int32 and w.device.type == "cpu"
            and w.stride(-1) == 1 and codec.word_bits <= 32):
        from . import native

        if native.available():  # the same table lookups and products in C (bit-identical, no index tensors)
            native.decode_rows(codec, w, n, o, s)
            return out
    keys, pairs = _tables(codec, dtype, words.device)
    rows = max(1, CHUNK_WORDS // max(1, n))
    direct = out.dtype == dtype
    for r0 in range(0, w.shape[0], rows):
        r1 = min(r0 + rows, w.shape[0])
        idx = _indices(w[r0:r1], codec.b, keys).view(-1)
        if direct:  # gather straight into the output, then scale it in place (v * s == s * v: one rounding)
            torch.index_select(pairs, 0, idx, out=o[r0:r1].view(pairs.dtype).view(-1))
            if s is not None:
                o[r0:r1].mul_(s[r0:r1, None])
            continue
        vals = pairs.index_select(0, idx).view(dtype).view(r1 - r0, 8 * n)
        o[r0:r1].copy_(vals if s is None else vals.mul_(s[r0:r1, None]))
    return out
