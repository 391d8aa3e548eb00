"""Small-M (2..16 rows) variant of the box W4A16 GEMV (:mod:`.box_w4a16`): each weight word is decoded **once per
program** and applied to ``M_BLOCK`` activation rows, instead of once per row.

Same spec, bit layout and arithmetic as :func:`.box_w4a16.box_w4a16_matmul` (see its module docstring); only the
work split differs.  Grid ``(cdiv(N, BLOCK_N), SPLIT_K, cdiv(M, M_BLOCK))``; a program owns the word tile
``[BLOCK_N, BLOCK_G]`` of each K step and the rows ``rows = M_BLOCK pid_m + [0, M_BLOCK)``, and accumulates
``acc [M_BLOCK, BLOCK_N, BLOCK_G]`` (one fp32 partial per row and word, as the one-row kernel's ``[BLOCK_N,
BLOCK_G]``).  Per K step:

* x: for each row, the same 16-byte 8-block load and half2 / fp32 conversion as the one-row kernel (masked rows
  ``>= M`` read 0 and are not stored).
* Lattice path: on CUDA the word decode is one PTX block with five outputs, :data:`_DECODE_PTX` (the lane
  registers after the offset, ``v_p = ((ℓ_p − 7.5)/8, (ℓ_{p+4} − 7.5)/8)`` as half2, and ``β_j``), then per row
  :data:`_ROW_PTX` (4 packed fp16 MACs, the lane sum, the conversion and ``acc += β · partial``): together exactly
  the instructions of the one-row :data:`.box_w4a16._WORD_PTX`, in the same order, so every row's result is
  **bit-identical** to the one-row kernel's (the tests run both PTX blocks in the emulator against ``_WORD_PTX``).
  Under the interpreter the same Triton ops as the one-row kernel's interpreter path.
* Level-table path: the index decode and the 8 level loads + β once per word (:data:`_TABLE_DECODE_PTX`, nine
  outputs; in Triton under the interpreter), then per row ``d = λ_0 x_0``, seven FMAs, ``acc = fma(β, d, acc)``
  (the interpreter: ``acc += β d``, as the one-row kernel's interpreter path).  A level table per β
  (``PER_BETA``: the flattened 16 x 16 table, 1024-byte aligned, ``levels[16 j + ℓ_i]``): the same with
  :data:`_TABLE_BETA_DECODE_PTX` (one more LOP3 per word for row ``j``'s address; the loads of a warp may touch up
  to 16 64-byte blocks of the table instead of one, see :mod:`.box_w4a16`).
* Epilogue as the one-row kernel (:func:`.box_w4a16._epilogue`): ``sum`` over the word axis, ``DECODE_SCALE``
  (lattice), row scale, then bias and the cast (``SPLIT_K = 1``) or fp32 partials ``[SPLIT_K, M, N]`` (reduced on the
  host, or in the kernel with ``FUSED_REDUCE``).

Cost (sm_90, ``kernels/sass.py``, fp16 x, 4 warps, 0 spills, 0 shuffles): a word is decoded once (≈ 20 instructions)
and each row costs ≈ 7 more (HMUL2 + 3 HFMA2 + HADD + conversion + FFMA) plus its share of the x broadcast
(shared-memory layout conversions).  Instructions per weight **per row**: 2.89 (``M_BLOCK`` 2, ``BLOCK_N`` 256,
``BLOCK_G`` 4, 96 registers), 1.96 (4, 256, 4; 126), **1.54** (8, 128, 4; 128), against 3.94 for the one-row
kernel; level-table path 2.27 per row at ``M_BLOCK`` 8 against 6.36 (per-β tables: 2.29 against 6.92; 154
registers, 0 spills).  **Not timed on a GPU.**
"""

from __future__ import annotations

import triton
import triton.language as tl

from .box_w4a16 import (
    _DECODE_SCALE,
    _MAC_REGS,
    _TABLE_BETA_REGS,
    _TABLE_REGS,
    _WORD_REGS,
    _epilogue,
    _f32_from_words,
    _load_word_tile,
    _pair_dot,
    _pairs_from_f32,
    _pairs_from_words,
    _table_index_lines,
    _table_level_lines,
    _table_levels,
    _word_decode_lines,
    _word_lanes,
    _word_mac_lines,
)

# decode of one word: $0..$3 = v_p (half2 bits, (l - 7.5)/8 in both lanes), $4 = beta_j (f32 bits), for the word $5
# and the address $6 of betas (u64, 64-byte aligned: the low word cannot carry).  The lines of _WORD_PTX up to the
# four HADD2s.
_DECODE_PTX = "\n".join(
    ["", "{"] + _WORD_REGS + _word_decode_lines("$5", "ld.global.nc.u32 $4", ("$0", "$1", "$2", "$3")) + ["}", ""])

# one row of one word: $0 (f32 bits) = $10 + $9 * (fp16 sum of the 8 products), v_p = $1..$4, x pairs $5..$8 (half2
# (x_p, x_{p+4})), beta $9 (f32 bits), accumulator $10: the lines of _WORD_PTX after the HADD2s.
_ROW_PTX = "\n".join(
    ["", "{"] + _MAC_REGS + ["mov.b32 beta, $9;"]
    + _word_mac_lines(("$1", "$2", "$3", "$4"), ("$5", "$6", "$7", "$8"), "$10", "$0") + ["}", ""])


def _table_decode_ptx(per_beta: bool = False) -> str:
    """PTX of one word's table decode: ``$0..$7`` = ``levels[l_i]`` (f32 bits), ``$8`` = ``betas[j]``, for the word
    ``$9`` and the 64-byte aligned addresses of the level table ``$10``, the codeword-bit table ``$11`` and betas
    ``$12`` (the index decode and loads of :func:`.box_w4a16._table_word_ptx`, without the MACs).  ``per_beta``:
    ``$10`` is the 16 x 16 per-β table (1024-byte aligned), ``$i = levels[j, l_i]``."""
    lines = ["{"] + (_TABLE_BETA_REGS if per_beta else _TABLE_REGS) + _table_index_lines(
        "$9", "ld.global.nc.u32 $8", per_beta)
    for i in range(8):
        lines += _table_level_lines(i, f"${i}", "u32", per_beta)
    lines.append("}")
    return "\n".join(lines) + "\n"


_TABLE_DECODE_PTX = _table_decode_ptx()
_TABLE_BETA_DECODE_PTX = _table_decode_ptx(per_beta=True)
_DECODE_ASM = tl.constexpr(_DECODE_PTX)
_ROW_ASM = tl.constexpr(_ROW_PTX)
_TABLE_DECODE_ASM = tl.constexpr(_TABLE_DECODE_PTX)
_TABLE_BETA_DECODE_ASM = tl.constexpr(_TABLE_BETA_DECODE_PTX)


@triton.jit
def _x_rows_words(x_ptr, rows, stride_xm, offs_g, x_ok):
    """``_x_int32_words`` for ``[M_BLOCK]`` rows: four ``[M_BLOCK, BLOCK_G]`` int32 words ``q_k = (x_2k, x_2k+1)``
    (one 16-byte load per row and 8-block; ``x_ok [M_BLOCK, BLOCK_G]`` masks rows >= M and blocks >= KW to 0)."""
    xb = (x_ptr + rows.to(tl.int64)[:, None, None] * stride_xm + offs_g[None, :, None] * 4
          + tl.arange(0, 4)[None, None, :])
    q = tl.load(xb, mask=x_ok[:, :, None], other=0)
    qa, qb = tl.split(tl.reshape(q, (q.shape[0], q.shape[1], 2, 2)))
    q0, q2 = tl.split(qa)
    q1, q3 = tl.split(qb)
    return q0, q1, q2, q3


@triton.jit
def _x_rows_f32_raw(x_ptr, rows, stride_xm, offs_g, x_ok):
    """Eight ``[M_BLOCK, BLOCK_G]`` loads of x (X_MODE 2: any float dtype, as stored)."""
    xb = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + offs_g[None, :] * 8
    return (tl.load(xb + 0, mask=x_ok, other=0.0), tl.load(xb + 1, mask=x_ok, other=0.0),
            tl.load(xb + 2, mask=x_ok, other=0.0), tl.load(xb + 3, mask=x_ok, other=0.0),
            tl.load(xb + 4, mask=x_ok, other=0.0), tl.load(xb + 5, mask=x_ok, other=0.0),
            tl.load(xb + 6, mask=x_ok, other=0.0), tl.load(xb + 7, mask=x_ok, other=0.0))


@triton.jit
def _x_rows_pairs(x_ptr, rows, stride_xm, offs_g, x_ok, X_MODE: tl.constexpr, USE_ASM: tl.constexpr):
    """The half2 pairs ``(x_p, x_{p+4})`` ``[M_BLOCK, BLOCK_G]`` of the rows (as the one-row ``_x_pairs``)."""
    if X_MODE == 2:
        x0, x1, x2, x3, x4, x5, x6, x7 = _x_rows_f32_raw(x_ptr, rows, stride_xm, offs_g, x_ok)
        p0, p1, p2, p3 = _pairs_from_f32(x0, x1, x2, x3, x4, x5, x6, x7)
    else:
        q0, q1, q2, q3 = _x_rows_words(x_ptr, rows, stride_xm, offs_g, x_ok)
        p0, p1, p2, p3 = _pairs_from_words(q0, q1, q2, q3, X_MODE, USE_ASM)
    return p0, p1, p2, p3


@triton.jit
def _x_rows_f32(x_ptr, rows, stride_xm, offs_g, x_ok, X_MODE: tl.constexpr):
    """The eight fp32 activations ``[M_BLOCK, BLOCK_G]`` of the rows (as the one-row ``_x_f32``: exact)."""
    if X_MODE == 2:
        x0, x1, x2, x3, x4, x5, x6, x7 = _x_rows_f32_raw(x_ptr, rows, stride_xm, offs_g, x_ok)
        x0, x1, x2, x3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        x4, x5, x6, x7 = x4.to(tl.float32), x5.to(tl.float32), x6.to(tl.float32), x7.to(tl.float32)
    else:
        q0, q1, q2, q3 = _x_rows_words(x_ptr, rows, stride_xm, offs_g, x_ok)
        x0, x1, x2, x3, x4, x5, x6, x7 = _f32_from_words(q0, q1, q2, q3, X_MODE)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _i2f(v):
    return v.to(tl.float32, bitcast=True)


@triton.jit
def _box_w4a16_rows_kernel(
    x_ptr, w_ptr, scale_ptr, betas_ptr, levels_ptr, htab_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr,
    M, N, KW, stride_xm, stride_om, KW_PER_SPLIT,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, USE_ASM: tl.constexpr, X_MODE: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    TABLE: tl.constexpr, M_BLOCK: tl.constexpr, FUSED_REDUCE: tl.constexpr = False, PER_BETA: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.program_id(2) * M_BLOCK + tl.arange(0, M_BLOCK)
    r_ok = rows < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * KW
    acc = tl.zeros((M_BLOCK, BLOCK_N, BLOCK_G), dtype=tl.float32)
    g_begin = pid_k * KW_PER_SPLIT
    for g0 in range(g_begin, g_begin + KW_PER_SPLIT, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        g_ok = offs_g < KW
        words = _load_word_tile(w_rows, offs_g, n_ok, g_ok, EVEN_N, EVEN_G)
        x_ok = r_ok[:, None] & g_ok[None, :]
        if TABLE:
            x0, x1, x2, x3, x4, x5, x6, x7 = _x_rows_f32(x_ptr, rows, stride_xm, offs_g, x_ok, X_MODE)
            if USE_ASM:
                b64 = tl.zeros(words.shape, tl.int64)
                l0, l1, l2, l3, l4, l5, l6, l7, beta = tl.inline_asm_elementwise(
                    _TABLE_BETA_DECODE_ASM if PER_BETA else _TABLE_DECODE_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,=r,r,l,l,l",
                    [words, b64 + levels_ptr.to(tl.int64), b64 + htab_ptr.to(tl.int64), b64 + betas_ptr.to(tl.int64)],
                    dtype=(tl.int32,) * 9, is_pure=True, pack=1)
                l0, l1, l2, l3, l4, l5, l6, l7 = _i2f(l0), _i2f(l1), _i2f(l2), _i2f(l3), _i2f(l4), _i2f(l5), \
                    _i2f(l6), _i2f(l7)
                beta = _i2f(beta)
            else:
                i0, i1, i2, i3, i4, i5, i6, i7 = _table_levels(words, htab_ptr, PER_BETA)
                l0, l1, l2, l3 = (tl.load(levels_ptr + i0), tl.load(levels_ptr + i1), tl.load(levels_ptr + i2),
                                  tl.load(levels_ptr + i3))
                l4, l5, l6, l7 = (tl.load(levels_ptr + i4), tl.load(levels_ptr + i5), tl.load(levels_ptr + i6),
                                  tl.load(levels_ptr + i7))
                beta = tl.load(betas_ptr + ((words >> 28) & 15))
            d = l0[None, :, :] * x0[:, None, :]
            d = tl.fma(l1[None, :, :], x1[:, None, :], d)
            d = tl.fma(l2[None, :, :], x2[:, None, :], d)
            d = tl.fma(l3[None, :, :], x3[:, None, :], d)
            d = tl.fma(l4[None, :, :], x4[:, None, :], d)
            d = tl.fma(l5[None, :, :], x5[:, None, :], d)
            d = tl.fma(l6[None, :, :], x6[:, None, :], d)
            d = tl.fma(l7[None, :, :], x7[:, None, :], d)
            if USE_ASM:
                acc = tl.fma(beta[None, :, :], d, acc)  # the one-row PTX's fma.rn.f32
            else:
                acc += beta[None, :, :] * d  # the one-row interpreter path's expression
        elif USE_ASM:
            p0, p1, p2, p3 = _x_rows_pairs(x_ptr, rows, stride_xm, offs_g, x_ok, X_MODE, USE_ASM)
            v0, v1, v2, v3, beta = tl.inline_asm_elementwise(
                _DECODE_ASM, "=r,=r,=r,=r,=r,r,l",
                [words, tl.zeros(words.shape, tl.int64) + betas_ptr.to(tl.int64)],
                dtype=(tl.int32,) * 5, is_pure=True, pack=1)
            acc = tl.inline_asm_elementwise(
                _ROW_ASM, "=r,r,r,r,r,r,r,r,r,r,r",
                [tl.broadcast_to(v0[None, :, :], acc.shape), tl.broadcast_to(v1[None, :, :], acc.shape),
                 tl.broadcast_to(v2[None, :, :], acc.shape), tl.broadcast_to(v3[None, :, :], acc.shape),
                 tl.broadcast_to(p0[:, None, :], acc.shape), tl.broadcast_to(p1[:, None, :], acc.shape),
                 tl.broadcast_to(p2[:, None, :], acc.shape), tl.broadcast_to(p3[:, None, :], acc.shape),
                 tl.broadcast_to(beta[None, :, :], acc.shape), acc.to(tl.int32, bitcast=True)],
                dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
        else:
            # interpreter: the one-row kernel's interpreter path, rows broadcast
            p0, p1, p2, p3 = _x_rows_pairs(x_ptr, rows, stride_xm, offs_g, x_ok, X_MODE, USE_ASM)
            beta = tl.load(betas_ptr + ((words >> 28) & 15))
            r0, r1, r2, r3 = _word_lanes(words)
            part = (_pair_dot(r0[None, :, :], p0[:, None, :]) + _pair_dot(r1[None, :, :], p1[:, None, :])
                    + _pair_dot(r2[None, :, :], p2[:, None, :]) + _pair_dot(r3[None, :, :], p3[:, None, :]))
            acc += beta[None, :, :] * part

    if TABLE:
        y = tl.sum(acc, axis=2)
    else:
        y = tl.sum(acc, axis=2) * _DECODE_SCALE
    y = y * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    _epilogue(y, r_ok[:, None] & n_ok[None, :], rows[:, None], offs_n[None, :], n_ok[None, :], pid_k,
              tl.program_id(2) * tl.num_programs(0) + pid_n, M, N, stride_om, bias_ptr, out_ptr, part_ptr, cnt_ptr,
              HAS_BIAS, SPLIT_K, FUSED_REDUCE)
