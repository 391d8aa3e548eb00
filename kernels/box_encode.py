"""Activation encode for the box code: per-row scale + exact nearest box codeword of every 8-vector, one kernel.

Spec (the pure-PyTorch reference): :meth:`llmquant.quant.activations.RowQuantizer.encode_rows` of
``RowQuantizer("box", codec=codec)``, i.e. :func:`~llmquant.quant.activations.box_row_scale` and
:meth:`llmquant.lattice.box.BoxCodec.encode` (:mod:`llmquant.lattice.box_encode`).  Any lattice box code
(:class:`~llmquant.lattice.box.BoxCodec` with ``gamma = 1`` and no level table): width ``b`` in 1..3, Hamming
(√2E8, 16 β, 16 codewords) or parity (D8, 2 β, 128 codewords) code; the W4A4 kernel (:mod:`.box_w4a4`) reads
``shipped_box_codec(3, "int")`` and ``shipped_box_codec(3, "d8int8")``.

Shapes: ``x [..., K]`` fp16/bf16/fp32 (``K % 8 == 0``) -> ``words int32 [..., K/8]``, ``scales fp32 [...]``
(fp16 values).  Math, per row (every step the reference's fp32 op, so the same bits):

    xf = float32(x);  S = sum_k xf_k^2;  s = fp16(sqrt(S / K)) (1 where sqrt(S / K) = 0), back to fp32
    y = xf / s (IEEE division), cut into 8-vectors
    for every β_j (ascending) and parity p in {1, 0}:  t = y / β_j,
        u_p = clamp(round_half_even((t - o_p) / 2), 0, 2^b - 1),  o_p = p - 2^b + 1/2,
        e_p = (t - (o_p + 2 u_p))^2                                  (the level of parity p nearest t)
    E[j, m] = β_j^2 * sum of e_{h_i,i} over the codeword h = c(m), summed in the reference matmul's order:
        the e_1 terms of the coordinates with h_i = 1 (i ascending), then the e_0 terms of those with h_i = 0
        (``[H, 1-H] @ [e_1; e_0]``, a sequential 16-term dot product with 0/1 weights: checked bit-equal for
        torch's CPU matmul, and by tests/test_kernels_box_encode.py against the reference itself; the CUDA
        reference's cuBLAS order is the same assumption, not yet checked on a GPU)
    (j, m) = the first minimum of E in the order |C| j + m (strict "<" while scanning j, then m, ascending:
        ties go to the smallest |C| j + m, the reference's rule); u_i = u_{h_i} of β_j.

Parity code (``STRUCT``, D8: 2 β, 128 codewords): no enumeration on the hot path.  Per β:

* ``e_1, e_0`` of every coordinate from the two half-integer levels ``r -/+ 1/2`` that bracket t
  (``r = round_half_even(clamp(t, -(2^b - 1), 2^b - 1))``; beyond the box, the two end levels): they are the
  nearest level of each parity, so ``fl(t - L)^2`` is the reference's e (on a rounding tie of u the reference's
  level lies at the same distance 1) (``_both_errors``);
* ``d_i = e_1,i - e_0,i``; ``h0_i`` = its sign bit (the per-coordinate best, ties to parity 0); integer keys
  ``|d_i|`` with the 3 low bits replaced by ``i`` (distinct, ordered like ``|d|`` up to 7 ulps) and the three
  smallest by an integer min/max network: ``a1 <= a2 <= a3`` (the truncated ``|d|``), coordinates ``k1, k2``;
* A = h0 (even weight) or h0 with k1 flipped (odd); B = h0 with k1 and k2 flipped (even) or with k2 flipped (odd).
  In exact arithmetic every even word is h0 with a flip set F (|F| of h0's parity) and costs ``S0 + sum_F |d|``:
  A is the best, and every word other than A costs at least ``a2 -/+ a1`` more (odd / even weight), every word
  other than A and B at least ``a3 -/+ a1`` more;
* A and B summed in the reference's order (the same fp32 sums), ``E = F * β^2``, the reference's pick of the two
  (smaller E, then smaller m); it is the reference's minimum over all 128 words wherever (``ok``)
  ``a_x -/+ a1 > 2^-19 (F_A + a1 + a_x)`` for ``x = 2`` or ``x = 3``: a sequential fp32 sum of 8 non-negative
  terms is within ``7 * 2^-24`` (relative) of its exact value, ``* β^2`` within ``2^-24``, each ``|d_i|`` within
  ``2^-24`` (fp32) and ``7 * 2^-23`` (key truncation) of the exact one, so words whose exact sums differ by more
  than about ``2^-20 F_A`` keep their order through every rounding (every e is 0 or >= 2^-50: no underflow for
  β >= 2^-37; a non-finite sum fails the test).  Across β the strict ``<`` keeps j = 0 on ties.

Rules (``rule=``).  ``"reference"`` (the default of :func:`box_encode_rows`): the words above, bit for bit.
``"nearest"`` (parity codes; what the W4A4 dispatch runs unless ``LLMQUANT_ENCODE_RULE=reference``): per β only the
best even word A (h0, or h0 with the coordinate of the smallest ``|d|`` flipped when h0 is odd), its cost
``F = S0 (+ a1)`` with ``S0`` the coordinate-order fp32 sum of ``min(e_1, e_0)`` (:func:`_parity_beta_nearest`), and
the smaller ``β^2 F`` (ties to j = 0).  In exact arithmetic on the per-coordinate errors A is a minimum over all 128
codewords (every even word is h0 with a flip set of h0's parity and costs ``S0 + sum |d|`` over it), so the word
is a nearest codeword up to the fp32 rounding of the e's, of ``S0`` and of the 7-ulp key truncation; it differs
from the reference's only where two codewords' errors agree to that rounding (exact ties included: bf16 rows with
equal ``|x|``), which the reference settles by its summation order and the nearest rule by the smallest key.  No
runner-up sum, no margin test, no enumeration: 64.9 instructions per element with the int8 limb (sm_90, bf16 x),
against 95.75 for the reference's words (``bench kernels --sass``).  Tests: the chosen codeword's fp64 error is the
fp64 minimum over all 256 codewords within 2^-17 relative, and the words equal the reference's wherever that
minimum is unique by more (tests/test_box_encode_d8.py).

A block with an undecided vector (near-equal ``|d|``: exact ties on the level grid, repeated magnitudes, >= 3 zero
coordinates, or one huge clamped error whose fp32 rounding exceeds the gaps) runs the enumeration of every
(β, codeword) by runtime loops (``_full_search``, the reference's rule as in the Hamming path) for all its vectors.
Undecided (tests/test_box_encode_d8.py's model of the rule, op for op): 0 of 200,000 Gaussian vectors, ~3e-5 of the
8-vectors of bf16 rows with 1% 40x outliers.  That model agreed with :func:`llmquant.lattice.box_encode.nearest` on
all 7.1 million decided vectors of 9.9 million (Gaussian, bf16 / fp16 rows with outliers, the level grid and its
midpoints per β, equal magnitudes, zeros, ±64 outliers, mirrored pairs, ulp-perturbed ties; b = 1, 2, 3).

Divisions.  ``y = x / s`` and (parity) ``t = y / β_j`` are IEEE divisions computed from the reciprocal
``zh = fl(1 / s)`` / ``fl(1 / β_j)`` (once per row / per program).  fp16 / bf16 x and the parity code's β: by one
multiply and one FMA, ``fl(a zh + fl(a zl))`` with ``zl = fl(fl(1 - b zh) zh)`` (``_div_fast``); this is the
correctly rounded quotient for every fp16 / bf16 x over every fp16 scale (checked on every mantissa pair) but
not for every divisor: a parity codec's β are checked on the host over every fp32 mantissa
(:func:`fast_division_exact`, memoized; the shipped ``d8int8`` β pass) and a codec with a failing β is encoded by
the unrolled enumeration instead (``STRUCT = False``).  fp32 x: one multiply and two FMA residual steps
(``_div_by``, Markstein's theorem; checked on every fp16 scale mantissa over 4096 random fp32 mantissas).  The
parity path keeps ``t`` of both β for the winner's levels.

Word layout (:class:`~llmquant.lattice.box.BoxCodec`, ``kernel_layout``): bits ``[b i, b (i+1))`` = ``u_i``,
bits ``[8b, 8b + M)`` = ``m``, bits ``[8b + M, 8b + 8)`` = ``j`` (so the top byte is ``|C| j + m``); ``b = 3``:
32 bits, two's complement int32; ``b < 3``: the value, non-negative.

Ties.  Rounding ``(t - o_p) / 2`` at exactly ``.5`` goes to the even integer (``torch.round``; here
``2 u = fl(fl(t - o_p) + 1.5 * 2^24) - 1.5 * 2^24``: the fp32 grid in ``[2^24, 2^25)`` has spacing 2, so the sum
rounds ``t - o_p`` to a multiple of 2, ties to a multiple of 4, then the clamp to ``[0, 2^(b+1) - 2]``);
equal errors go to the smallest ``|C| j + m``.  fp contraction (mul + add -> FMA) is disabled at launch
(``enable_fp_fusion=False`` on CUDA), so every product and sum is rounded as in PyTorch.

The scale.  ``S`` is summed in float64 (the fp32 squares ``xf_k^2`` exactly as PyTorch forms them) and rounded
once to fp32: the correctly rounded sum.  PyTorch sums in fp32 in its own order (a few ulps off the exact sum),
so the two fp32 sums can differ in the last bits; after ``sqrt`` and the fp16 rounding the scales still agree
unless ``sqrt(S / K)`` lies within those few fp32 ulps of an fp16 rounding midpoint: measured on 3e-5 to 5e-5
of Gaussian rows (random scales; K = 4096, 11008, 14336; fp32 and bf16; 40,000 rows each) against the CPU
reference, by this rule written in torch.  The tests' rows all agree.  Pass ``scales=`` (e.g. the reference's own
``box_row_scale``) for scales that are the reference's by construction: words are then bit-identical always.
The mean: ``S / K`` (the CPU reference divides; the interpreter) or ``S * fl(1/K)`` (CUDA's ``MeanOps``
multiplies by ``float(M) / (M K)``, equal to ``fl(1/K)`` when ``M K`` is exact in fp32).

Design: grid ``(M / BLOCK_R, SPLIT)``, ``BLOCK_R = 1`` on CUDA (:func:`launch_config`); program ``(r, q)`` sums
row ``r``'s squares (the whole row, ``BLOCK_K`` entries per step; ``SPLIT`` > 1 only for few rows, so the
re-reads are of a few KB), then encodes vector blocks ``q, q + SPLIT, ...`` of ``BLOCK_V = 32 num_warps``
8-vectors: every thread owns whole 8-vectors (eight 1-D
tensors, one per coordinate; no cross-lane work), the ``k |C|`` candidate sums fully unrolled (Hamming), or the
structured search above plus one block-wide max (``REDUX``) deciding whether the block runs the enumeration
(parity).  Static SASS (sm_90, ``BLOCK_V = 128``, 4 warps, given scales; counted with fp contraction on, which
differs from the launched build, ``enable_fp_fusion=False``, by about one instruction per vector: ``bench kernels
--sass`` gives 90.25 for bf16 x as launched): ``d8int8`` 721 instructions per thread
and 8-vector on the hot path = 90.125 per element (bf16 x; 89.6 fp16 x; 93.4 fp32 x; 90.25 with computed scales),
the vector-block loop without its cold block (313 instructions, the enumeration loops), 98 registers, 0 spills (the
unrolled enumeration: 389.9 per element); Hamming (``int``): 835 per element, 48 registers
(tests/test_bench_sass.py, ``encode_hot_path``).  The winner's ``u_i`` are read from the bits of
``fl(fl(t - o_h) + 1.5 * 2^24)`` (integer clamp), the parity-1 level as ``r + σ/2`` from r's parity bit
(``_both_errors``), an fp16 / bf16 vector read by one 16-byte load: the same fp32 ops as the reference, fewer
instructions.

W4A4 limbs in the same pass (:func:`box_encode_rows_int8`, memoized per quantizer by
:func:`quantizer_encode_rows_int8`; ``_box_encode_int8_kernel``): with the words, the int8
activation limb planes of the box W4A4 GEMM (:func:`.box_w4a4.box_int8_coords` of the words, from the winner's
``u_i``, ``h_i`` and ratio ``r_j``; one limb: four coordinates per int32 by bytewise integer arithmetic), so the
separate words -> limbs pass (10.56 instructions per element) is not needed: ``d8int8`` 767 instructions per
8-vector on the hot path = 95.875 per element (bf16 x, given scales; 95.5 fp16 x; 95.75 as launched), 101 registers,
0 spills.

A non-finite input gives undefined words (the reference raises); a row whose RMS is below fp16's smallest subnormal
gets scale 0 (the reference raises, via the non-finite ``x / 0``).  CUDA-graph capturable: no host syncs; the only
allocations are the outputs (the β set is cached on the device per codec, and its division check memoized, at the
first call: call once before capturing).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

#: programs to aim for when rows are few (the H200 has 132 SMs)
TARGET_PROGRAMS = 512


@triton.jit
def _bit(m, i: tl.constexpr, PARITY: tl.constexpr):
    """Codeword bit ``h_i`` of messages ``m`` (int32 tensor): Hamming ``h_i = m_i`` (i < 4),
    ``h_{4+i} = m_i ^ parity(m)``; parity code ``h_i = m_i`` (i < 7), ``h_7 = parity(m)``."""
    if PARITY:
        if i < 7:
            h = (m >> i) & 1
        else:
            h = (m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3) ^ (m >> 4) ^ (m >> 5) ^ (m >> 6)) & 1
    else:
        if i < 4:
            h = (m >> i) & 1
        else:
            h = ((m >> (i - 4)) ^ m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3)) & 1
    return h


@triton.jit
def _twice_level_index(t, off, B: tl.constexpr):
    """``2 u``, ``u = clamp(round_half_even((t - off) / 2), 0, 2^b - 1)``, as fp32 (exact small even integers).

    With ``a = fl(t - off)`` (the reference's subtraction): ``fl(a + 1.5 * 2^24) - 1.5 * 2^24`` is ``a`` rounded to
    a multiple of 2, ties to a multiple of 4, i.e. ``2 round_half_even(a / 2)`` (the fp32 grid in ``[2^24, 2^25)``
    has spacing 2), exact for ``|a| < 2^23``; beyond, an even integer of ``a``'s sign and size, which the
    clamp maps to the same end as the reference's round-then-clamp."""
    r = ((t - off) + 25165824.0) - 25165824.0
    return tl.minimum(tl.maximum(r, 0.0), 2.0 * ((1 << B) - 1))


@triton.jit
def _sq_err(t, off, B: tl.constexpr):
    """``(t - (off + 2 u))^2`` with ``2 u = _twice_level_index(t, off)``: the error of the nearest level of one
    parity (``off + 2 u`` is exact)."""
    d = t - (off + _twice_level_index(t, off, B))
    return d * d


@triton.jit
def _ref_sum(e1, e0, flips):
    """The reference's fp32 sum of codeword ``h`` (runtime bits ``flips[i]`` int1 tensors): the e_1 terms where
    ``h_i = 1`` (i ascending), then the e_0 terms where ``h_i = 0``; a term not selected adds +0 (exact, every
    e >= +0)."""
    acc = tl.where(flips[0], e1[0], 0.0)
    for i in tl.static_range(1, 8):
        acc = acc + tl.where(flips[i], e1[i], 0.0)
    for i in tl.static_range(8):
        acc = acc + tl.where(flips[i], 0.0, e0[i])
    return acc


@triton.jit
def _div_by(a, b, rb):
    """``fl(a / b)`` (IEEE, round to nearest) from ``rb = fl(1 / b)``: ``q = fl(a rb)`` (within 1.5 ulp), one FMA
    residual step (faithful), a second one (Markstein's theorem: with ``rb`` correctly rounded and ``q`` faithful,
    ``fl(q + (a - b q) rb)`` is the correctly rounded quotient; ``a - b q`` is exact in an FMA).  Quotients below
    the normal range may differ from the division in the last place: only ``|t| < 2^-26``, where every level
    error is the same (module docstring)."""
    q = a * rb
    r = tl.fma(-q, b, a)
    q = tl.fma(r, rb, q)
    r = tl.fma(-q, b, a)
    return tl.fma(r, rb, q)


@triton.jit
def _div_fast(a, zh, zl):
    """``fl(a / b)`` as ``fl(a zh + fl(a zl))`` (one multiply, one FMA) from ``zh = fl(1 / b)``,
    ``zl = fl(fl(1 - b zh) zh)`` (:func:`_recip_pair`): the correctly rounded quotient for every ``a`` whose quotient
    is normal *when* ``b`` passes :func:`fast_division_exact` (the β of a parity codec; checked on the host over every
    fp32 mantissa) or ``a`` is an fp16 / bf16 value and ``b`` an fp16 value (the row scale; every mantissa pair,
    tests/test_box_encode_d8.py).  Quotients below ``2^-100`` may differ in the last places (module docstring)."""
    return tl.fma(a, zh, a * zl)


@triton.jit
def _recip_pair(b):
    """``(zh, zl)`` of :func:`_div_fast`: ``zh = fl(1 / b)``, ``zl = fl(fl(1 - b zh) zh)`` (the FMA residual is
    exact)."""
    zh = tl.div_rn(1.0, b)
    return zh, tl.fma(-zh, b, 1.0) * zh


@triton.jit
def _both_errors(t, B: tl.constexpr):
    """``(e_1, e_0)``: the squared distance of ``t`` to its nearest level of parity 1 and of parity 0, as the
    reference forms them (``fl(t - L)^2``, ``L`` the same level, or one at the same distance 1 on a rounding tie).

    The levels are the half-integers ``k + 1/2``, ``-2^b <= k < 2^b``, parity ``k mod 2``; with
    ``r = round_half_even(clamp(t, -(2^b - 1), 2^b - 1))`` (``fl(tc + 1.5 * 2^23) - 1.5 * 2^23``) the two levels
    ``r -/+ 1/2`` bracket t (or are the two end levels beyond the box) and are the nearest of each parity; ``r + 1/2``
    has parity ``r mod 2``, read from the last bit of ``w = fl(tc + 1.5 * 2^23)``: the parity-1 level is
    ``r + σ/2``, ``σ = +1`` for odd r, -1 for even r.  ``f = t - r`` is exact for ``|t| < 2^24`` (Sterbenz inside
    the box; beyond it r is an integer multiple of t's ulp <= 1), so ``fl(f -/+ σ/2) = fl(t - L)``, the reference's
    difference; a coordinate with ``|t| >= 2^24`` may get other errors, but its vector fails the margin test of
    :func:`_parity_beta` (its error >= 2^47 dwarfs every ``|d| <= 2 sqrt(F) + 17``) and is enumerated."""
    LIM: tl.constexpr = (1 << B) - 1.0
    w = tl.minimum(tl.maximum(t, -LIM), LIM) + 12582912.0
    f = t - (w - 12582912.0)
    # σ/2 = +1/2 for odd r (bit 0 of w), -1/2 for even r: the bits of -1/2 with the sign bit flipped by r's parity
    half = ((w.to(tl.int32, bitcast=True) << 31) + -1090519040).to(tl.float32, bitcast=True)  # + 0xBF000000 mod 2^32
    d1 = f - half
    d0 = f + half
    return d1 * d1, d0 * d0


@triton.jit
def _word_sum(hw, e1, e0):
    """:func:`_ref_sum` of the codeword with bits ``hw`` (int32 tensor, bit i = h_i)."""
    h = ()
    for i in tl.static_range(8):
        h = h + (((hw >> i) & 1) != 0,)
    return _ref_sum(e1, e0, h)


@triton.jit
def _parity8(w):
    """Parity (0 / 1, int32) of the low 8 bits of ``w`` (the other bits zero): the weight's parity by xor folds."""
    p = w ^ (w >> 4)
    p = p ^ (p >> 2)
    return (p ^ (p >> 1)) & 1


@triton.jit
def _parity_beta(ys, beta, zh, zl, B: tl.constexpr):
    """Structured exact search of the parity code [8,7,2] for one β (module docstring, "Parity code"): the
    reference's first minimum ``(E, m)`` over the 128 codewords wherever ``ok``; also ``t = y / β`` (8 tensors,
    by :func:`_div_fast` from ``(zh, zl)`` = :func:`_recip_pair` of β: β passed :func:`fast_division_exact`)."""
    ts = ()
    e1 = ()
    e0 = ()
    for i in tl.static_range(8):
        t = _div_fast(ys[i], zh, zl)
        ts = ts + (t,)
        p1, p0 = _both_errors(t, B)
        e1 = e1 + (p1,)
        e0 = e0 + (p0,)
    # d_i = e1_i - e0_i (+0 on equality): h0 = the sign bits (the per-coordinate best, ties to parity 0); keys
    # |d_i| with the 3 low bits replaced by i (distinct, ordered like |d| up to 7 ulps): the three smallest
    big = tl.full(ys[0].shape, 0x7FFFFFFF, tl.int32)
    k1 = big
    k2 = big
    k3 = big
    h0w = tl.zeros(ys[0].shape, tl.int32)
    for i in tl.static_range(8):
        db = (e1[i] - e0[i]).to(tl.int32, bitcast=True)
        h0w = h0w | (((db >> 31) & 1) << i)
        key = (db & 0x7FFFFFF8) | i
        n1 = tl.minimum(k1, key)
        x = tl.maximum(k1, key)
        n2 = tl.minimum(k2, x)
        x = tl.maximum(k2, x)
        k3 = tl.minimum(k3, x)
        k1 = n1
        k2 = n2
    a1 = (k1 & 0x7FFFFFF8).to(tl.float32, bitcast=True)
    a2 = (k2 & 0x7FFFFFF8).to(tl.float32, bitcast=True)
    a3 = (k3 & 0x7FFFFFF8).to(tl.float32, bitcast=True)
    par = _parity8(h0w)
    om = -par  # all ones when h0 has odd weight
    b1 = 1 << (k1 & 7)
    hA = h0w ^ (b1 & om)  # the best even word: h0, or h0 with coordinate k1 flipped
    hB = h0w ^ (1 << (k2 & 7)) ^ (b1 & ~om)  # the runner-up: h0 with k1 and k2 flipped, or with k2 flipped
    FA = _word_sum(hA, e1, e0)
    bsq = beta * beta
    EA = FA * bsq
    EB = _word_sum(hB, e1, e0) * bsq
    mA = hA & 127
    mB = hB & 127
    use_b = (EB < EA) | ((EB == EA) & (mB < mA))
    # every other even word costs (exactly) at least a2 -/+ a1 (A strict winner) or a3 -/+ a1 (A or B the winner)
    # more than A, up to the key truncation and fp32 rounding of a; beyond 2^-19 (FA + a1 + a_x) that survives the
    # rounding of both sums and of * β^2
    sgn = tl.where(par != 0, -a1, a1)
    ok = (((a2 + sgn) > (FA + (a1 + a2)) * 1.9073486328125e-06)
          | ((a3 + sgn) > (FA + (a1 + a3)) * 1.9073486328125e-06))
    return tl.where(use_b, EB, EA), tl.where(use_b, mB, mA), ok, ts


@triton.jit
def _parity_beta_nearest(ys, zh, zl, B: tl.constexpr):
    """The ``"nearest"`` rule's search of the parity code [8,7,2] for one β (module docstring, "Rules"): ``(F, m, t)``
    with ``F = S0 + a1`` (odd h0) or ``S0`` (even), ``S0`` the coordinate-order fp32 sum of ``min(e_1, e_0)``, ``a1``
    the smallest ``|e_1 - e_0|`` (its key truncated to 7 ulps), ``m`` the best even word's message (h0 with the
    coordinate of ``a1`` flipped when h0 is odd), ``t = y / β`` (8 tensors, :func:`_div_fast`).  In exact arithmetic
    on the e's that word is a minimum over all 128 codewords: every even word is h0 with a flip set of h0's parity and
    costs ``S0 + sum |d|`` over it."""
    ts = ()
    k1 = tl.full(ys[0].shape, 0x7FFFFFFF, tl.int32)
    h0w = tl.zeros(ys[0].shape, tl.int32)
    s0 = tl.zeros(ys[0].shape, tl.float32)
    for i in tl.static_range(8):
        t = _div_fast(ys[i], zh, zl)
        ts = ts + (t,)
        p1, p0 = _both_errors(t, B)
        db = (p1 - p0).to(tl.int32, bitcast=True)
        h0w = h0w | (((db >> 31) & 1) << i)  # parity 1 strictly better: the sign of e_1 - e_0
        k1 = tl.minimum(k1, (db & 0x7FFFFFF8) | i)
        if i == 0:
            s0 = tl.minimum(p1, p0)
        else:
            s0 = s0 + tl.minimum(p1, p0)
    par = _parity8(h0w)
    h = h0w ^ ((1 << (k1 & 7)) & -par)
    f = s0 + tl.where(par != 0, (k1 & 0x7FFFFFF8).to(tl.float32, bitcast=True), 0.0)
    return f, h & 127, ts


@triton.jit
def _beta_errors(ys, beta, B: tl.constexpr):
    """``(e1, e0)``, 8 tensors each: per coordinate the squared error of ``t = y / β`` (IEEE division) to its nearest
    parity-1 / parity-0 level, the reference's fp32 ops (:func:`_sq_err`)."""
    OFF1: tl.constexpr = 1.5 - (1 << B)
    OFF0: tl.constexpr = 0.5 - (1 << B)
    e1 = ()
    e0 = ()
    for i in tl.static_range(8):
        t = tl.div_rn(ys[i], beta)
        e1 = e1 + (_sq_err(t, OFF1, B),)
        e0 = e0 + (_sq_err(t, OFF0, B),)
    return e1, e0


@triton.jit
def _full_search(ys, betas_ptr, n_betas, n_cw, B: tl.constexpr, PARITY: tl.constexpr, NC: tl.constexpr):
    """``|C| j + m`` of the reference's first minimum over every (β, codeword), by runtime loops (the cold path
    of the parity-code search: blocks with a vector whose structured search is not provably exact)."""
    best = tl.full(ys[0].shape, float("inf"), tl.float32)
    best_jm = tl.zeros(ys[0].shape, tl.int32)
    for j in range(n_betas):
        beta = tl.load(betas_ptr + j)
        bsq = beta * beta
        e1, e0 = _beta_errors(ys, beta, B)
        for m in range(n_cw):
            h = ()
            for i in tl.static_range(8):
                h = h + ((best_jm * 0 + _bit(m, i, PARITY)) != 0,)
            e = _ref_sum(e1, e0, h) * bsq
            better = e < best
            best = tl.where(better, e, best)
            best_jm = tl.where(better, j * NC + m, best_jm)
    return best_jm


@triton.jit
def _box_encode_kernel(x_ptr, betas_ptr, words_ptr, scales_ptr, M, K, NV, stride_xm, n_betas, n_cw,
                       B: tl.constexpr, PARITY: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr,
                       MEAN_MUL: tl.constexpr, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr, STRUCT: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    _encode(x_ptr, betas_ptr, words_ptr, scales_ptr, words_ptr, betas_ptr, M, K, NV, stride_xm, n_betas, n_cw,
            B, PARITY, NB, NC, MEAN_MUL, HAS_SCALE, SPLIT, STRUCT, BLOCK_R, BLOCK_V, BLOCK_K, 0)


@triton.jit
def _box_encode_int8_kernel(x_ptr, betas_ptr, words_ptr, scales_ptr, xq_ptr, rtab_ptr, M, K, NV, stride_xm,
                            n_betas, n_cw, B: tl.constexpr, PARITY: tl.constexpr, NB: tl.constexpr,
                            NC: tl.constexpr, MEAN_MUL: tl.constexpr, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr,
                            STRUCT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
                            BLOCK_K: tl.constexpr, LIMBS: tl.constexpr):
    _encode(x_ptr, betas_ptr, words_ptr, scales_ptr, xq_ptr, rtab_ptr, M, K, NV, stride_xm, n_betas, n_cw,
            B, PARITY, NB, NC, MEAN_MUL, HAS_SCALE, SPLIT, STRUCT, BLOCK_R, BLOCK_V, BLOCK_K, LIMBS)


@triton.jit
def _encode(x_ptr, betas_ptr, words_ptr, scales_ptr, xq_ptr, rtab_ptr, M, K, NV, stride_xm, n_betas, n_cw,
            B: tl.constexpr, PARITY: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr,
            MEAN_MUL: tl.constexpr, HAS_SCALE: tl.constexpr, SPLIT: tl.constexpr, STRUCT: tl.constexpr,
            BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, LIMBS: tl.constexpr):
    """The encode (module docstring); ``LIMBS`` > 0: also the W4A4 kernel's int8 activation limb planes
    (:func:`.box_w4a4.box_int8_coords` of the words: ``t_i = r_j (4 u_i + 2 h_i - 2^(b+1) + 1)``, one plane, or
    ``t >> 5`` and ``t & 31``) into ``xq_ptr`` (int32 view of ``[LIMBS, M, K]`` int8: 4 coordinates per int32,
    little-endian), ``r_j`` from the int32 ratio table ``rtab_ptr``."""
    part = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    xrow = x_ptr + rows.to(tl.int64)[:, None] * stride_xm  # [BLOCK_R, 1]
    if HAS_SCALE:
        s = tl.load(scales_ptr + rows, mask=rmask, other=1.0)
    else:
        # S = sum of the fp32 squares, accumulated in fp64 and rounded once to fp32
        acc = tl.zeros([BLOCK_R, BLOCK_K], tl.float64)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(xrow + offs[None, :], mask=rmask[:, None] & (offs < K)[None, :], other=0.0)
            xv = xv.to(tl.float32)
            acc += (xv * xv).to(tl.float64)
        ssum = tl.sum(acc, axis=1).to(tl.float32)
        kf = K.to(tl.float32)
        if MEAN_MUL:
            mean = ssum * tl.div_rn(1.0, kf)
        else:
            mean = tl.div_rn(ssum, kf)
        s = tl.sqrt_rn(mean)
        s = tl.where(s > 0.0, s, 1.0).to(tl.float16).to(tl.float32)
        tl.store(scales_ptr + rows, s, mask=rmask & (rows * 0 + part == 0))
    s = s[:, None]
    # y = x / s by the FMA divisions from 1 / s (_div_fast, _div_by); an infinite scale (fp16 overflow of the RMS)
    # divides by 1 with reciprocals 0: y = 0 = x / inf
    s_inf = s == float("inf")
    s = tl.where(s_inf, 1.0, s)
    rs, rs_lo = _recip_pair(s)
    rs = tl.where(s_inf, 0.0, rs)
    rs_lo = tl.where(s_inf, 0.0, rs_lo)
    # fp16 / bf16 x: y = x / s by the two-op division (exact for every fp16 / bf16 x and fp16 s), fp32 x by _div_by
    X_FP32: tl.constexpr = x_ptr.dtype.element_ty == tl.float32
    if STRUCT > 0:
        beta_0 = tl.load(betas_ptr)
        beta_1 = tl.load(betas_ptr + 1)
        zh_0, zl_0 = _recip_pair(beta_0)
        zh_1, zl_1 = _recip_pair(beta_1)
    OFF0: tl.constexpr = 0.5 - (1 << B)  # o_0 = 0 - 2^b + 1/2
    n_blocks = tl.cdiv(NV, BLOCK_V)
    for vb in range(part, n_blocks, SPLIT):
        v = vb * BLOCK_V + tl.arange(0, BLOCK_V)
        vmask = rmask[:, None] & (v < NV)[None, :]
        ys = ()
        if X_FP32:
            for i in tl.static_range(8):
                xi = tl.load(xrow + (v * 8 + i)[None, :], mask=vmask, other=0.0)
                ys = ys + (_div_by(xi, s, rs),)
        else:
            # the 8 coordinates of each vector in one 16-byte load (contiguous per thread), split into 8 tensors
            xv = tl.load(xrow[:, :, None] + (v * 8)[None, :, None] + tl.arange(0, 8)[None, None, :],
                         mask=vmask[:, :, None], other=0.0).to(tl.float32)
            e, o = tl.split(tl.reshape(xv, [BLOCK_R, BLOCK_V, 2, 2, 2]))  # coordinate 4 a + 2 b + c: c = 0 / 1
            ee, eo = tl.split(e)
            oe, oo = tl.split(o)
            x0, x4 = tl.split(ee)
            x2, x6 = tl.split(eo)
            x1, x5 = tl.split(oe)
            x3, x7 = tl.split(oo)
            xs8 = (x0, x1, x2, x3, x4, x5, x6, x7)
            for i in tl.static_range(8):
                ys = ys + (_div_fast(xs8[i], rs, rs_lo),)
        best = tl.full([BLOCK_R, BLOCK_V], float("inf"), tl.float32)
        best_jm = tl.zeros([BLOCK_R, BLOCK_V], tl.int32)
        if STRUCT == 2:
            # the "nearest" rule: the best even word per β, the smaller β^2 F (ties to j = 0); no slow path
            f_0, m_0, t_0 = _parity_beta_nearest(ys, zh_0, zl_0, B)
            f_1, m_1, t_1 = _parity_beta_nearest(ys, zh_1, zl_1, B)
            best_jm = tl.where(f_1 * (beta_1 * beta_1) < f_0 * (beta_0 * beta_0), NC + m_1, m_0)
        if STRUCT == 1:
            # parity code, 2 β: the structured search per β, the runtime enumeration for a block only when one of
            # its vectors is not provably decided by it
            e_0, m_0, ok_0, t_0 = _parity_beta(ys, beta_0, zh_0, zl_0, B)
            e_1, m_1, ok_1, t_1 = _parity_beta(ys, beta_1, zh_1, zl_1, B)
            second = e_1 < e_0
            best_jm = tl.where(second, NC + m_1, m_0)
            if tl.max((ok_0 & ok_1).to(tl.int32) ^ 1) != 0:
                best_jm = _full_search(ys, betas_ptr, n_betas, n_cw, B, PARITY, NC)
        for j in tl.static_range(0 if STRUCT > 0 else NB):
            beta = tl.load(betas_ptr + j)
            bsq = beta * beta
            e1, e0 = _beta_errors(ys, beta, B)
            for m in tl.static_range(NC):
                # the codeword h = c(m) as 8 bits (constexpr): Hamming m | (m ^ 15 parity(m)) << 4,
                # parity code m | parity(m) << 7
                if PARITY:
                    HW = m | (((m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3) ^ (m >> 4) ^ (m >> 5) ^ (m >> 6)) & 1) << 7)
                else:
                    HW = m | ((m ^ (15 * ((m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3)) & 1))) << 4)
                # sequential sum of the selected terms: e_1 where h_i = 1, then e_0 where h_i = 0 (i ascending),
                # starting from the first term (the matmul's 0 + e is e: every e >= +0)
                e = e0[0]
                started = False
                for i in tl.static_range(8):
                    if ((HW >> i) & 1) == 1:
                        if started:
                            e = e + e1[i]
                        else:
                            e = e1[i]
                            started = True
                for i in tl.static_range(8):
                    if ((HW >> i) & 1) == 0:
                        if started:
                            e = e + e0[i]
                        else:
                            e = e0[i]
                            started = True
                e = e * bsq
                better = e < best
                best = tl.where(better, e, best)
                best_jm = tl.where(better, j * NC + m, best_jm)
        # the winner's level indices: the same ops on the same t = y / β_j
        jb = (best_jm.to(tl.uint32, bitcast=True) // NC).to(tl.int32, bitcast=True)  # best_jm >= 0
        mb = best_jm & (NC - 1)
        if STRUCT == 0:
            beta_b = tl.load(betas_ptr + jb)
        word = best_jm << (8 * B)
        if LIMBS > 0:
            rj = tl.load(rtab_ptr + jb)
            nrj = rj * (1 - (2 << B))  # -(2^(b+1) - 1) r
            q_lo = tl.zeros([BLOCK_R, BLOCK_V], tl.int32)
            q_hi = tl.zeros([BLOCK_R, BLOCK_V], tl.int32)
            if LIMBS == 2:
                q2_lo = tl.zeros([BLOCK_R, BLOCK_V], tl.int32)
                q2_hi = tl.zeros([BLOCK_R, BLOCK_V], tl.int32)
        for i in tl.static_range(8):
            if STRUCT > 0:
                t = tl.where(jb == 1, t_1[i], t_0[i])
            else:
                t = tl.div_rn(ys[i], beta_b)
            h = _bit(mb, i, PARITY)
            # u = clamp(round_half_even((t - o_h) / 2), 0, 2^b - 1) read from the bits of
            # V = fl(fl(t - o_h) + 1.5 * 2^24) (= 1.5 * 2^24 + 2 u' in [2^24, 2^25): bits 0x4BC00000 + u'), clamped as
            # integers first (V >= 2^25 -> 2^b - 1; V < 2^24 or negative -> 0: the ordered bits of the same value)
            vb = ((t - tl.where(h != 0, OFF0 + 1.0, OFF0)) + 25165824.0).to(tl.int32, bitcast=True)
            u = tl.minimum(tl.maximum(vb, 0x4BC00000), 0x4BC00000 + (1 << B) - 1) - 0x4BC00000
            word = word | (u << (B * i))
            if LIMBS == 1:  # 4 u_i into byte i % 4 (bits 2..4); r (4 u + 2 h) - (2^(b+1) - 1) r after the loop
                if i < 4:
                    q_lo = q_lo + (u << (8 * (i % 4) + 2))
                else:
                    q_hi = q_hi + (u << (8 * (i % 4) + 2))
            elif LIMBS == 2:
                ti = rj * ((u << 2) | (h << 1)) + nrj
                byte = ((ti >> 5) & 255) << (8 * (i % 4))
                byte2 = (ti & 31) << (8 * (i % 4))
                if i < 4:
                    q_lo = q_lo | byte
                    q2_lo = q2_lo | byte2
                else:
                    q_hi = q_hi | byte
                    q2_hi = q2_hi | byte2
        if LIMBS == 1:
            # one limb: T = (2^(b+1) - 1) r <= 127, so r (4 u + 2 h) <= 2 T fits its byte; h_0..h_3 spread to bits 0,
            # 8, 16, 24 by one multiply (the 4 shifted copies of the nibble do not overlap there); then every byte
            # minus (2^(b+1) - 1) r by a borrow-free bytewise subtraction (SWAR: ((a | H) - (c & ~H)) ^ ((a ^ ~c) & H),
            # H = 0x80808080): the int8 t_i, little-endian
            cw = mb | (_bit(mb, 7, PARITY) << 7)  # the codeword's bits h_0..h_7
            if not PARITY:
                cw = cw | (_bit(mb, 4, PARITY) << 4) | (_bit(mb, 5, PARITY) << 5) | (_bit(mb, 6, PARITY) << 6)
            c = (-nrj) * 0x01010101  # (2^(b+1) - 1) r in every byte
            cl = c & 0x7F7F7F7F
            a = rj * (q_lo + ((((cw & 15) * 0x204081) & 0x01010101) << 1))
            q_lo = ((a | -2139062144) - cl) ^ ((a ^ ~c) & -2139062144)  # H = 0x80808080
            a = rj * (q_hi + (((((cw >> 4) & 15) * 0x204081) & 0x01010101) << 1))
            q_hi = ((a | -2139062144) - cl) ^ ((a ^ ~c) & -2139062144)
        tl.store(words_ptr + rows.to(tl.int64)[:, None] * NV + v[None, :], word, mask=vmask)
        if LIMBS > 0:
            qp = xq_ptr + rows.to(tl.int64)[:, None] * (2 * NV) + 2 * v[None, :]
            tl.store(qp, q_lo, mask=vmask)
            tl.store(qp + 1, q_hi, mask=vmask)
            if LIMBS == 2:
                qp2 = qp + M.to(tl.int64) * (2 * NV)
                tl.store(qp2, q2_lo, mask=vmask)
                tl.store(qp2 + 1, q2_hi, mask=vmask)


def supported_reason(codec) -> str | None:
    """Why :func:`box_encode_rows` cannot encode for ``codec`` (a short sentence), or None when it can."""
    if getattr(codec, "kind", None) != "box":
        return f"codec {codec!r} is not a box codec"
    if codec.code not in ("hamming", "parity"):
        return f"box code {codec.code!r} (the kernel implements 'hamming' and 'parity')"
    if not codec.is_lattice:
        return f"box codec {codec!r} is not a lattice box code (gamma=1, no level table)"
    return None


def fast_division_exact(beta: float) -> bool:
    """Whether :func:`_div_fast` by ``β`` (``fl(a zh + fl(a zl))``, ``zh = fl(1/β)``, ``zl = fl(fl(1 - β zh) zh)``)
    is the IEEE quotient ``fl(a / β)`` for every fp32 ``a`` with a normal quotient: checked on all 2^23 mantissas
    ``a`` in [1, 2) (the quotient's bits do not depend on a's exponent), with the FMA emulated exactly in float64
    (``a zh`` is exact in 48 bits; the float64 sum with ``fl(a zl)`` is corrected by its TwoSum error where it lands
    on an fp32 rounding midpoint).  Memoized per β (about a second of numpy on the first call)."""
    return _fast_division_exact(float(torch.tensor(beta, dtype=torch.float32)))


@functools.lru_cache(maxsize=256)
def _fast_division_exact(beta: float) -> bool:
    import numpy as np

    f32, f64 = np.float32, np.float64
    b = f32(beta)
    if not (np.isfinite(b) and b > 0):
        return False
    zh = f32(1.0) / b
    zl = f32(f32(f64(1.0) - f64(zh) * f64(b)) * zh)  # fl(1 - β zh) (exact in float64), times zh in fp32
    step = 1 << 20
    for lo in range(0, 1 << 23, step):
        a = (np.arange(lo, lo + step, dtype=np.uint32) | np.uint32(0x3F800000)).view(f32)
        p = (a * zl).astype(f64)  # fl32(a zl)
        hi = a.astype(f64) * f64(zh)  # exact
        s = hi + p
        bp = s - hi
        err = (hi - (s - bp)) + (p - bp)  # TwoSum: s + err = hi + p exactly
        q = s.astype(f32)
        d = s - q.astype(f64)
        nb = np.nextafter(q, np.where(d > 0, f32(np.inf), f32(-np.inf)).astype(f32))
        mid = (d != 0) & (2 * np.abs(d) == np.abs(nb.astype(f64) - q.astype(f64)))
        q = np.where(mid & (err != 0) & ((err > 0) == (d > 0)), nb, q)  # a midpoint: the exact sum lies beyond it
        if not np.array_equal(q, a / b):
            return False
    return True


def _device_betas(codec, device: torch.device) -> torch.Tensor:
    """The codec's β set, fp32 contiguous on ``device``, cached on the codec (one copy per device, made at the
    first call: no host work per call afterwards)."""
    from .device_cache import device_copy

    return device_copy(codec, "_kernel_encode_betas", codec.betas, device)


def launch_config(m: int, nv: int, device: torch.device) -> dict:
    """Launch parameters for ``m`` rows of ``nv`` 8-vectors: ``num_warps``, ``SPLIT``, ``BLOCK_R``, ``BLOCK_V``,
    ``BLOCK_K`` and the grid.  CUDA: one row per program, one vector per thread; one warp per program and the
    rows split into up to ``nv / 32`` vector blocks while there are few vectors, else 4 warps (split only while
    there are fewer than :data:`TARGET_PROGRAMS` rows).  Interpreter (CPU): up to 64 rows and 256 vectors per
    program (its cost is per operation, not per element)."""
    if device.type != "cuda":
        br, bv = min(64, triton.next_power_of_2(max(m, 1))), min(256, triton.next_power_of_2(nv))
        return {"num_warps": 1, "SPLIT": 1, "BLOCK_R": br, "BLOCK_V": bv, "BLOCK_K": 8 * bv,
                "grid": (triton.cdiv(m, br), 1)}
    nw = 1 if m * nv <= TARGET_PROGRAMS * 128 else 4
    n_blocks = triton.cdiv(nv, 32 * nw)
    split = max(1, min(n_blocks, triton.cdiv(TARGET_PROGRAMS, max(m, 1))))
    return {"num_warps": nw, "SPLIT": split, "BLOCK_R": 1, "BLOCK_V": 32 * nw, "BLOCK_K": 256 * nw,
            "grid": (m, split)}


#: The encode rules (module docstring, "Rules"): ``"reference"`` = ``encode_rows``' words bit for bit,
#: ``"nearest"`` = a nearest codeword up to fp32 rounding, no slow path (parity codes; Hamming codes are enumerated
#: either way, which is the reference's rule).
RULES = ("reference", "nearest")
#: The rule the W4A4 dispatch uses unless ``LLMQUANT_ENCODE_RULE`` names another (:func:`dispatch_rule`).
DEFAULT_DISPATCH_RULE = "nearest"


def dispatch_rule() -> str:
    """The encode rule of the GPU W4A4 path: ``$LLMQUANT_ENCODE_RULE`` (one of :data:`RULES`) or
    :data:`DEFAULT_DISPATCH_RULE`; read at each call (nothing happens at import)."""
    import os

    rule = os.environ.get("LLMQUANT_ENCODE_RULE", "").strip() or DEFAULT_DISPATCH_RULE
    if rule not in RULES:
        raise ValueError(f"LLMQUANT_ENCODE_RULE={rule!r} is not a box encode rule; use one of {', '.join(RULES)}")
    return rule


def box_encode_rows(x: torch.Tensor, codec, scales: torch.Tensor | None = None, *,
                    config: dict | None = None, rule: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """``(words int32 [..., K/8], scales fp32 [...])`` of ``x [..., K]``: ``RowQuantizer("box", codec).encode_rows``
    by one Triton kernel (module docstring).  ``scales`` (``[...]``, fp32 fp16-valued): use these row scales
    instead of computing them (returned as given).  ``x`` on CUDA, or on the CPU under ``TRITON_INTERPRET=1``.
    ``config``: launch parameters replacing :func:`launch_config`'s (tests: ``num_warps``, ``SPLIT``,
    ``BLOCK_R``, ``BLOCK_V``, ``BLOCK_K``, ``grid``, and ``MEAN_MUL``).  ``rule``: ``"reference"`` (the words of
    ``encode_rows`` bit for bit) or ``"nearest"`` (parity codes: a nearest codeword up to fp32 rounding, the same
    words except at near-ties; module docstring, "Rules")."""
    return _encode_rows(x, codec, scales, config, False, rule)[:2]


def box_encode_rows_int8(x: torch.Tensor, codec, scales: torch.Tensor | None = None, *,
                         config: dict | None = None,
                         rule: str = "reference") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`box_encode_rows` plus the W4A4 GEMM's int8 activation limb planes, by the same kernel:
    ``(words [..., K/8], scales [...], planes int8 [L, R, K])`` (``R`` = rows of x, flattened; ``L`` = the
    codec's int8 limbs, :func:`.box_w4a4.codec_constants`), ``planes`` equal to
    :func:`.box_w4a4.box_int8_coords` of the words (pass them to :func:`.box_w4a4.box_w4a4_matmul` as
    ``x_planes``: its separate words -> limbs pass is then skipped).  Needs an integer-ratio β set."""
    return _encode_rows(x, codec, scales, config, True, rule)


def _encode_rows(x: torch.Tensor, codec, scales, config, int8: bool, rule: str):
    if rule not in RULES:
        raise ValueError(f"box_encode_rows: rule {rule!r} is not one of {', '.join(RULES)}")
    why = supported_reason(codec)
    if why is not None:
        raise ValueError(f"box_encode_rows: {why}")
    if x.dim() == 0 or x.shape[-1] % 8:
        raise ValueError(f"box_encode_rows: x must be [..., K] with K % 8 == 0, got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"box_encode_rows: x must be fp16, bf16 or fp32, got {x.dtype}")
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, nv = x2.shape[0], k // 8
    words = torch.empty(m, nv, dtype=torch.int32, device=x.device)
    if int8:
        from .box_w4a4 import codec_constants

        kx = codec_constants(codec, x.device)
        planes = torch.empty(kx["limbs"], m, k, dtype=torch.int8, device=x.device)
    if scales is None:
        out_scales = torch.empty(m, dtype=torch.float32, device=x.device)
    else:
        out_scales = scales.reshape(-1)
        if out_scales.numel() != m or out_scales.dtype != torch.float32 or out_scales.device != x.device:
            raise ValueError(f"box_encode_rows: scales must be fp32 [{m}] on {x.device}, got "
                             f"{out_scales.dtype} {tuple(scales.shape)} on {scales.device}")
        if not out_scales.is_contiguous():
            raise ValueError("box_encode_rows: scales must be contiguous")
    if m and nv:
        # the parity code's structured search divides by β with _div_fast: for the reference's words only where that
        # is exact (else the unrolled enumeration of every (β, codeword), IEEE divisions); the nearest rule needs no
        # exact quotient (its t is its own)
        if codec.code != "parity":
            structured = 0
        elif rule == "nearest":
            structured = 2
        else:
            structured = int(all(fast_division_exact(v) for v in codec.betas.tolist()))
        cfg = {"MEAN_MUL": x.device.type == "cuda", **launch_config(m, nv, x.device), **(config or {})}
        grid = cfg.pop("grid")
        if x.device.type == "cuda":
            cfg["enable_fp_fusion"] = False
        const = dict(B=codec.b, PARITY=codec.code == "parity", NB=codec.betas.numel(), NC=1 << codec.m_bits,
                     STRUCT=structured, HAS_SCALE=scales is not None, **cfg)
        tail = (m, k, nv, x2.stride(0), codec.betas.numel(), 1 << codec.m_bits)
        if int8:
            _box_encode_int8_kernel[grid](x2, _device_betas(codec, x.device), words, out_scales,
                                          planes.view(torch.int32), kx["rtab"], *tail, LIMBS=kx["limbs"], **const)
        else:
            _box_encode_kernel[grid](x2, _device_betas(codec, x.device), words, out_scales, *tail, **const)
    out = (words.reshape(*lead, nv), out_scales.reshape(lead))
    return out + (planes,) if int8 else out


def quantizer_encode_rows(act, x: torch.Tensor, *, rule: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """``act.encode_rows(x)`` of a box :class:`~llmquant.quant.activations.RowQuantizer` by the kernel, memoized in
    the quantizer's own encode memo (``act._enc_memo``: same input object and version -> the cached pair), so
    linears sharing one input (q/k/v, gate/up) encode it once, whichever of the kernel and the reference ran
    first.

    The per-row scales are the reference's own (:func:`~llmquant.quant.activations.box_row_scale`, a few torch
    kernels on x's device) and passed to the kernel: its fp64 sum of squares differs from torch's fp32 sum in the
    last bits on a few rows in 1e5 (module docstring), and a scale one fp16 step off moves that row's words, so
    the words would not be bit-identical to ``encode_rows`` without this.  ``rule``: as :func:`box_encode_rows`
    (``"nearest"``: the same words up to fp32 near-ties, so a memo entry from the reference is as good an encode)."""
    from llmquant.quant.activations import box_row_scale

    memo = act._enc_memo
    hit = memo.get(x)
    if hit is not None:
        return hit
    scales = box_row_scale(x.to(torch.float32)).squeeze(-1)
    return memo.put(x, box_encode_rows(x, act.codec, scales=scales, rule=rule))


def quantizer_encode_rows_int8(act, x: torch.Tensor, *,
                               rule: str = "reference") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`quantizer_encode_rows` plus the W4A4 int8 activation limb planes ``[L, R, K]`` (``R`` rows of x,
    flattened) from the same kernel (:func:`box_encode_rows_int8`): the W4A4 dispatch passes them to
    :func:`.box_w4a4.box_w4a4_matmul` as ``x_planes``.  Memoized like the words: ``(words, scales)`` in the
    quantizer's ``_enc_memo``, the planes in a second memo of the same kind (``_enc_int8_memo``) tied to those words
    (a hit needs both, with the same words object: a cleared or replaced ``_enc_memo`` entry re-encodes)."""
    from llmquant.quant.activations import _InputMemo, box_row_scale

    planes_memo = act.__dict__.setdefault("_enc_int8_memo", _InputMemo())
    hit, phit = act._enc_memo.get(x), planes_memo.get(x)
    if hit is not None and phit is not None and phit[0] is hit[0]:
        return hit[0], hit[1], phit[1]
    scales = box_row_scale(x.to(torch.float32)).squeeze(-1)
    words, scales, planes = box_encode_rows_int8(x, act.codec, scales=scales, rule=rule)
    act._enc_memo.put(x, (words, scales))
    planes_memo.put(x, (words, planes))
    return words, scales, planes
