"""Decode the packed box-code KV cache on the GPU: words + fp16 row scales -> rows in the model dtype, one kernel.

Spec (the pure-PyTorch reference): :func:`llmquant.lattice.box_lut.decode_flat` ``(codec, words, torch.float32,
scales=scales, out=out)`` on the unpacked words, as :meth:`llmquant.quant.kv_cache.PackedRows._decoded_box` calls
it; any :class:`~llmquant.lattice.box.BoxCodec` (width ``b`` in 1..3, Hamming or parity code, γ = 1, companded γ or
a level table).  The output is bit-identical to it (tests/test_kernels_box_kv.py, ``torch.equal`` of the bits).

Shapes: ``words int32 [..., S]`` (the row's packed stream, ``S = codec.packed_int32_per_row(D / 8)``; the leading
dims may be a strided slice such as the cache's ``[B, H, start:end]``), ``scales fp16 [...]``, ``out [..., D]``
contiguous fp32 / fp16 / bf16.

Bit layout (:mod:`llmquant.lattice.box`): word ``v`` of a row (``W = 8b + 8`` bits) holds ``u_i`` in bits
``[b i, b i + b)``, the message ``m`` in bits ``[8b, 8b + M)`` and the β index ``j`` in bits ``[8b + M, 8b + 8)``
(``M`` = 4 Hamming / 7 parity, ``K = 8 - M``).  ``b = 3``: word ``v`` is int32 ``v`` of the row (fast path, one
32-bit load per word).  ``b < 3``: the row is a little-endian bit stream, so word ``v`` is bytes
``[(b+1) v, (b+1)(v+1))`` of the row, little-endian (``W`` is a whole number of bytes): ``b + 1`` byte loads.

Math, per row ``r`` and word ``v`` (coordinate ``i = 0..7``, output column ``8 v + i``):

    h = c(m)  (Hamming: h_i = m_(i mod 4) ^ (i >= 4 ? parity(m) : 0); parity code: h_i = m_i (i < 7), h_7 = parity(m))
    ℓ_i = 2 u_i + h_i;   T[j 2^(b+1) + ℓ] = fl32(β_j λ[ℓ])   (the per-coordinate table, 2^K 2^(b+1) fp32)
    out[r, 8 v + i] = cast_out(fl32(T[j 2^(b+1) + ℓ_i] * fp32(scales[r])))

Lattice codes (γ = 1, no level table: the shipped ``int``, ``d8int8``, ``lattice`` settings; ``LATTICE``) skip the
per-value table read: ``λ[ℓ] = ℓ - 2^b + 1/2``, so ``β_j λ[ℓ] = (β_j / 2) (2ℓ - 2^(b+1) + 1)`` as real numbers (``β_j / 2``
is exact in fp32), and one fp32 multiply rounds both the same way; the odd integer is made exactly from its bits
(``fl(bits(0x4B400000 | 2ℓ) - (1.5 2^23 + 2^(b+1) - 1))``) and ``β_j / 2`` is one load per word.  Otherwise (``table``
variant, companded γ) the value is ``T[j 2^(b+1) + ℓ]``, one L1 load per value.  ``T`` holds exactly the values of
box_lut's pair table (``betas.to(fp32)[j] * levels.to(fp32)[ℓ]``, one fp32 rounding, the same torch op), the product
with the scale is one fp32 multiply (nothing to contract; fp fusion is off at launch anyway, as in :mod:`.box_encode`),
and the cast to fp16 / bf16 rounds to nearest even as torch's ``copy_`` (CUDA: ``cvt.rn``; the interpreter, whose
fp32 -> bf16 cast truncates: the same rounding in integer ops, ``BF16_BITS``).  So every output bit equals the
reference's (also the sign of zero for zero scales, and fp16 overflow to inf).

Design: the words are viewed as ``[O, T, S]`` (``O`` = B H; a view for the cache's live slice, read in place with two
row strides); grid ``(cdiv(T, BLOCK_R), O, cdiv(NV, BLOCK_V))``; a program decodes a ``[BLOCK_R, BLOCK_V]`` tile of
words, one word per thread-element: its 8 coordinates as 8 planes (:func:`_coord`), interleaved
(:func:`.box_w4a16._interleave8`) so a thread's 8 values of a word are one 16-byte store (fp16 / bf16; fp32: two
stores of 4, :func:`_interleave4`).  The word stride is a runtime argument (``stride_wv``, not specialized) so the word
load keeps that one-word-per-thread layout: with 16-byte word loads (and with one 32-byte fp32 tile) Triton moved the
decoded tile through shared memory before the store.  Static SASS (sm_90, ``BLOCK_R`` 32, ``BLOCK_V`` 16, 4 warps,
whole kernel, per decoded value, :func:`llmquant.kernels.sass.static_cost`; tests/test_kernels_box_kv.py compiles
two of these): b = 3 lattice path 14.75 instructions (fp16 / bf16 out, 38 registers; 14.16 fp32 out; 14.56 parity
code), level-table path 15.56 (fp16 / bf16, 48 registers; 16.22 fp32), b = 2 15.63, b = 1 15.0; 0 spills, no shared
memory.  **Predicted** (not timed: no
GPU in this session): ~33e12 thread-instructions/s on an H200 give ~2.3e12 values/s at 14.75, about its HBM rate for
fp16 output (2.5 bytes per value at 4.8 TB/s: ~1.9e12), so the decode should run near memory speed.

The table (``β / 2`` or ``T``) is built once per codec and device (cached on the codec, as :mod:`.device_cache` does
for the other launchers): no host work, no host sync and no host-to-device copy per call, so the launch is
CUDA-graph capturable after a first call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .box_w4a16 import _interleave8

#: largest vector block per program (head_dim 256 = 32 words); longer rows use several programs per row
MAX_BLOCK_V = 32
#: output elements per program to aim for (CUDA, 4 warps: 32 per thread)
TILE_ELEMS = 4096
#: CUDA's limit on grid axes 1 and 2
MAX_GRID_YZ = 65535
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _coord(w, hw, jt, s, tab_ptr, i: tl.constexpr, B: tl.constexpr, LATTICE: tl.constexpr, BF16_BITS: tl.constexpr,
           ty: tl.constexpr):
    """Coordinate ``i`` of the words ``w`` (codeword bits ``hw``; ``jt`` = β_j / 2 (``LATTICE``) or the table row
    offset ``j 2^(b+1)``), times the row scales ``s``, in the output dtype ``ty``."""
    u = (w >> (B * i)) & ((1 << B) - 1)
    h = (hw >> i) & 1
    if LATTICE:  # λ[ℓ] = ℓ - 2^b + 1/2: (β_j / 2) * (2ℓ - 2^(b+1) + 1) is β_j λ[ℓ] exactly, rounded once
        odd = ((u << 2) | (h << 1) | 0x4B400000).to(tl.float32, bitcast=True) - (12582912.0 + ((2 << B) - 1))
        val = jt * odd
    else:
        val = tl.load(tab_ptr + (jt | (u << 1) | h))
    y = val * s
    if BF16_BITS:  # fp32 -> bf16, round to nearest even, in integer ops (finite values)
        bits = y.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
    return y.to(ty)


@triton.jit(do_not_specialize=["stride_wv"])
def _box_kv_decode_kernel(words_ptr, scales_ptr, tab_ptr, out_ptr, T, NV, stride_wo, stride_wt, stride_wv, stride_so,
                          stride_st,
                          B: tl.constexpr, M_BITS: tl.constexpr, PARITY: tl.constexpr, LATTICE: tl.constexpr,
                          BF16_BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    o = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    v = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    tmask = t < T
    wmask = tmask[:, None] & (v[None, :] < NV)
    row_w = (o * stride_wo + t * stride_wt)[:, None]
    if B == 3:  # one int32 per word
        w = tl.load(words_ptr + row_w + v[None, :] * stride_wv, mask=wmask, other=0)
    else:  # bytes [(B+1) v, (B+1)(v+1)) of the row's byte stream, little-endian
        p = words_ptr + row_w + v[None, :] * ((B + 1) * stride_wv)
        w = tl.load(p, mask=wmask, other=0).to(tl.int32)
        w = w | (tl.load(p + 1, mask=wmask, other=0).to(tl.int32) << 8)
        if B == 2:
            w = w | (tl.load(p + 2, mask=wmask, other=0).to(tl.int32) << 16)
    top = (w >> (8 * B)) & 0xFF  # the arithmetic shift's sign bits are masked off
    m = top & ((1 << M_BITS) - 1)
    par = m ^ (m >> 4)
    par = par ^ (par >> 2)
    par = (par ^ (par >> 1)) & 1
    if PARITY:  # h_0..6 = m, h_7 = parity(m)
        hw = m | (par << 7)
    else:  # Hamming: h_0..3 = m, h_(4+i) = m_i ^ parity(m)
        hw = m | ((m ^ (par * 15)) << 4)
    j = top >> M_BITS
    if LATTICE:
        jt = tl.load(tab_ptr + j)  # β_j / 2
    else:
        jt = j << (B + 1)
    s = tl.load(scales_ptr + o * stride_so + t * stride_st, mask=tmask, other=0.0).to(tl.float32)[:, None]
    ty = out_ptr.dtype.element_ty
    y0 = _coord(w, hw, jt, s, tab_ptr, 0, B, LATTICE, BF16_BITS, ty)
    y1 = _coord(w, hw, jt, s, tab_ptr, 1, B, LATTICE, BF16_BITS, ty)
    y2 = _coord(w, hw, jt, s, tab_ptr, 2, B, LATTICE, BF16_BITS, ty)
    y3 = _coord(w, hw, jt, s, tab_ptr, 3, B, LATTICE, BF16_BITS, ty)
    y4 = _coord(w, hw, jt, s, tab_ptr, 4, B, LATTICE, BF16_BITS, ty)
    y5 = _coord(w, hw, jt, s, tab_ptr, 5, B, LATTICE, BF16_BITS, ty)
    y6 = _coord(w, hw, jt, s, tab_ptr, 6, B, LATTICE, BF16_BITS, ty)
    y7 = _coord(w, hw, jt, s, tab_ptr, 7, B, LATTICE, BF16_BITS, ty)
    row_o = ((o * T + t.to(tl.int64)) * (NV * 8))[:, None]
    if ty == tl.float32:  # a word's 32 bytes as two 16-byte stores (one 32-byte tile would go through shared memory)
        c = tl.arange(0, BLOCK_V * 4)
        vc = tl.program_id(2) * BLOCK_V + c // 4
        col = (vc * 8 + c % 4)[None, :]
        cmask = tmask[:, None] & (vc[None, :] < NV)
        tl.store(out_ptr + row_o + col, _interleave4(y0, y1, y2, y3), mask=cmask)
        tl.store(out_ptr + row_o + col + 4, _interleave4(y4, y5, y6, y7), mask=cmask)
    else:  # a word's 8 values as one 16-byte store
        k = tl.program_id(2) * (BLOCK_V * 8) + tl.arange(0, BLOCK_V * 8)
        tl.store(out_ptr + row_o + k[None, :], _interleave8(y0, y1, y2, y3, y4, y5, y6, y7),
                 mask=tmask[:, None] & (k[None, :] < NV * 8))


@triton.jit
def _interleave4(v0, v1, v2, v3):
    """``[BR, BV]`` x 4 -> ``[BR, BV * 4]`` with element ``(r, 4 v + i) = v_i[r, v]`` (as ``_interleave8``)."""
    t = tl.join(tl.join(v0, v2), tl.join(v1, v3))  # [BR, BV, c, a] = v_(2c + a)
    return tl.reshape(t, (t.shape[0], t.shape[1] * 4))


def _device_table(codec, device: torch.device) -> torch.Tensor:
    """The kernel's table on ``device`` (module docstring), fp32: ``β / 2 [2^K]`` for a lattice codec, else
    ``T [2^K 2^(b+1)]`` = ``betas.to(fp32)[j] * levels.to(fp32)[ℓ]`` at ``j 2^(b+1) + ℓ`` (the products of box_lut's
    pair table); built on the host and copied once per codec and device (cached on the codec,
    :func:`.device_cache.device_copy`)."""
    from .device_cache import device_copy

    hit = codec.__dict__.get("_kernel_kv_table", {}).get(str(device))
    if hit is not None:
        return hit
    lv, beta = codec.levels.to(torch.float32), codec.betas.to(torch.float32)
    # per-β level tables: row j of levels is β_j's own table (the same j 2^(b+1) + ℓ layout)
    tab = beta / 2 if codec.is_lattice else (beta[:, None] * (lv if lv.dim() == 2 else lv[None, :])).reshape(-1)
    return device_copy(codec, "_kernel_kv_table", tab, device)


def supported_reason(codec, words: torch.Tensor, out: torch.Tensor) -> str | None:
    """Why :func:`box_kv_decode` cannot decode this (a short sentence), or None when it can."""
    if getattr(codec, "kind", None) != "box":
        return f"codec {codec!r} is not a box codec"
    if codec.code not in ("hamming", "parity"):
        return f"box code {codec.code!r} (the kernel implements 'hamming' and 'parity')"
    if words.dtype != torch.int32:
        return f"words dtype {words.dtype} (packed int32 streams expected)"
    if out.dtype not in _OUT_DTYPES:
        return f"output dtype {out.dtype} (fp32, fp16 or bf16)"
    return None


def launch_config(t: int, nv: int, device: torch.device) -> dict:
    """``BLOCK_R``, ``BLOCK_V`` and ``num_warps`` for groups of ``t`` rows of ``nv`` words (grid
    ``(cdiv(t, BLOCK_R), groups, cdiv(nv, BLOCK_V))``): ``BLOCK_V`` = the row's words rounded up to a power of 2 (at most
    :data:`MAX_BLOCK_V`), ``BLOCK_R`` rows so a program writes about :data:`TILE_ELEMS` values (CUDA, 4 warps) or
    up to 16384 (the interpreter, whose cost is per operation)."""
    bv = min(MAX_BLOCK_V, triton.next_power_of_2(max(nv, 1)))
    elems = TILE_ELEMS if device.type == "cuda" else 16384
    br = max(1, min(elems // (8 * bv), triton.next_power_of_2(max(t, 1))))
    return {"BLOCK_R": br, "BLOCK_V": bv, "num_warps": 4 if device.type == "cuda" else 1}


def box_kv_decode(codec, words: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *,
                  config: dict | None = None) -> torch.Tensor:
    """Write ``decode_flat(codec, unpack(words), float32, scales=scales)`` into ``out`` and return it (module
    docstring).  ``words int32 [..., S]`` packed streams (last dim contiguous; the leading dims may be strided),
    ``scales fp16 [...]``, ``out [..., D]`` contiguous fp32/fp16/bf16 with ``S = codec.packed_int32_per_row(D / 8)``;
    all on one CUDA device (or the CPU under ``TRITON_INTERPRET=1``).  ``config``: launch parameters replacing
    :func:`launch_config`'s (tests)."""
    why = supported_reason(codec, words, out)
    if why is not None:
        raise ValueError(f"box_kv_decode: {why}")
    lead = tuple(words.shape[:-1])
    if words.dim() < 2 or out.shape[-1] % 8 or tuple(out.shape) != (*lead, out.shape[-1]) or not out.is_contiguous():
        raise ValueError(f"box_kv_decode: need words [..., S] and a contiguous out [..., D] (D % 8 == 0) with the "
                         f"same leading dims, got words {tuple(words.shape)}, out {tuple(out.shape)}")
    nv = out.shape[-1] // 8
    if words.shape[-1] != codec.packed_int32_per_row(nv):
        raise ValueError(f"box_kv_decode: rows of {out.shape[-1]} entries need {codec.packed_int32_per_row(nv)} "
                         f"int32 per row for b={codec.b}, words have {words.shape[-1]}")
    if tuple(scales.shape) != lead or scales.dtype != torch.float16:
        raise ValueError(f"box_kv_decode: scales must be fp16 {lead}, got {scales.dtype} {tuple(scales.shape)}")
    if not (words.device == scales.device == out.device):
        raise ValueError(f"box_kv_decode: words, scales and out must share a device, got {words.device}, "
                         f"{scales.device}, {out.device}")
    t = lead[-1]
    if out.numel() == 0:
        return out
    if words.stride(-1) != 1:
        words = words.contiguous()
    w3 = words.reshape(-1, t, words.shape[-1])  # a view for the cache's [B, H, start:end] slice
    s2 = scales.reshape(-1, t)
    if w3.shape[0] > MAX_GRID_YZ:  # grid axis 1 holds the groups: one group of all rows instead
        w3, s2, t = words.reshape(1, -1, words.shape[-1]), scales.reshape(1, -1), out.numel() // out.shape[-1]
    if codec.b < 3:  # the byte stream (strides in bytes)
        w3 = w3.view(torch.uint8)
    cfg = {**launch_config(t, nv, out.device), **(config or {})}
    grid = (triton.cdiv(t, cfg["BLOCK_R"]), w3.shape[0], triton.cdiv(nv, cfg["BLOCK_V"]))
    if out.device.type == "cuda":
        cfg["enable_fp_fusion"] = False
    _box_kv_decode_kernel[grid](w3, s2, _device_table(codec, out.device), out, t, nv, w3.stride(0), w3.stride(1),
                                w3.stride(2), s2.stride(0), s2.stride(1), B=codec.b, M_BITS=codec.m_bits,
                                PARITY=codec.code == "parity", LATTICE=codec.is_lattice,
                                BF16_BITS=out.dtype == torch.bfloat16 and out.device.type != "cuda", **cfg)
    return out
