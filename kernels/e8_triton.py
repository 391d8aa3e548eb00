"""Triton device functions for the E8 lattice, shared by the kernels in this package.

Imported only by kernel modules, which are imported lazily once :mod:`llmquant.kernels.availability`
says Triton can run (``import triton`` at the top of this file is therefore never hit at package import).

Every function works on a 2-D tile ``[R, 8]``: one row per 8-vector, the lattice dimension last.

The rules are those of :mod:`llmquant.lattice.closest_point` (the spec), reproduced exactly:

* ``f(x) = floor(x + 1/2)`` per coordinate (ties go up);
* D8: if Σf(x) is odd, move the coordinate with the largest ``|x_i - f(x_i)|`` (first such index)
  one step towards ``x_i`` (``+1`` when the difference is ``>= 0``);
* E8 = D8 ∪ (D8 + ½·1): the nearer of ``a = D8(x)`` and ``b = D8(x - ½) + ½``; on an exact tie the
  candidate with the smaller first coordinate.

Two flavours:

* **exact** (``*_exact``): the target is ``num / den`` with integer-valued ``num`` and integer ``den``
  (as :func:`llmquant.lattice.closest_point.coarse_closest_int`); every quantity is an integer held in
  fp32 (exact below 2^24; the kernels stay below 2^12), so rounding, argmax and distance ties are
  decided exactly, independently of division or summation order.  Used by the Voronoi decode, whose
  outputs are bit-identical to ``VoronoiCodec.decode``.
* **float** (``closest_e8_float_doubled``): real inputs (activation encode), the same float operations
  as ``closest_point(x, "E8")``; only inputs within an ulp of a Voronoi face can resolve differently
  (different summation order of the 8 squared distances).

Results are returned in **doubled coordinates** ``P = 2p`` (integers; even for the D8 coset, odd for
D8 + ½), which is also what the int8 W4A4 path multiplies.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def floor_div_exact(m, den):
    """``floor(m / den)`` for integer-valued fp32 ``m`` and a positive integer ``den``, exactly.

    The quotient from a reciprocal multiply can be off by one (GPU division is approximate); the
    remainder is corrected into ``[0, den)``.
    """
    f = tl.floor(m * (1.0 / den))
    rem = m - f * den
    f = tl.where(rem < 0, f - 1.0, f)
    rem = tl.where(rem < 0, rem + den, rem)
    f = tl.where(rem >= den, f + 1.0, f)
    return f


@triton.jit
def _is_odd(v):
    return (v - 2.0 * tl.floor(v * 0.5)) != 0.0


@triton.jit
def _parity_fix(r, delta):
    """D8 rule: if Σr is odd, step the first coordinate of largest ``|delta|`` towards the target."""
    odd = _is_odd(tl.sum(r, axis=1))
    idx = tl.argmax(tl.abs(delta), axis=1, tie_break_left=True)
    j = tl.arange(0, 8)
    flip = (j[None, :] == idx[:, None]) & odd[:, None]
    step = tl.where(delta >= 0, 1.0, -1.0)
    return tl.where(flip, r + step, r)


@triton.jit
def closest_d8_exact(num, den):
    """Closest D8 point ``r`` to ``num / den`` (``num`` [R, 8] integer-valued fp32, ``den`` > 0 integer).

    ``r = floor((2 num + den) / (2 den))`` then the parity fix on the residual numerator ``num - den r``.
    """
    r = floor_div_exact(2.0 * num + den, 2.0 * den)
    return _parity_fix(r, num - den * r)


@triton.jit
def coarse_e8_doubled(y2, q):
    """``2λ`` with ``qλ`` the point of ``qE8`` nearest to ``y = y2 / 2`` (``y2`` [R, 8] integers), exactly.

    Target ``y / q = y2 / (2q)``; candidates ``a = D8(y2 / 2q)`` and ``b + ½``, ``b = D8((y2 - q) / 2q)``;
    squared distances compared as integer sums of the residual numerators.
    """
    m = 2.0 * q
    a = closest_d8_exact(y2, m)
    b = closest_d8_exact(y2 - q, m)
    ea = y2 - m * a
    eb = y2 - q - m * b
    da = tl.sum(ea * ea, axis=1)
    db = tl.sum(eb * eb, axis=1)
    a2 = 2.0 * a
    b2 = 2.0 * b + 1.0
    j = tl.arange(0, 8)
    a0 = tl.sum(tl.where(j[None, :] == 0, a2, 0.0), axis=1)
    b0 = tl.sum(tl.where(j[None, :] == 0, b2, 0.0), axis=1)
    take_a = (da < db) | ((da == db) & (a0 < b0))
    return tl.where(take_a[:, None], a2, b2)


@triton.jit
def closest_d8_float(x):
    r = tl.floor(x + 0.5)
    return _parity_fix(r, x - r)


@triton.jit
def closest_e8_float_doubled(x):
    """Closest E8 point to real ``x`` [R, 8] (fp32), in doubled coordinates (integer-valued fp32)."""
    a = closest_d8_float(x)
    b = closest_d8_float(x - 0.5) + 0.5
    da = tl.sum((x - a) * (x - a), axis=1)
    db = tl.sum((x - b) * (x - b), axis=1)
    j = tl.arange(0, 8)
    a0 = tl.sum(tl.where(j[None, :] == 0, a, 0.0), axis=1)
    b0 = tl.sum(tl.where(j[None, :] == 0, b, 0.0), axis=1)
    take_a = (da < db) | ((da == db) & (a0 < b0))
    return tl.where(take_a[:, None], 2.0 * a, 2.0 * b)


@triton.jit
def times_matrix8(c, g_ptr):
    """``c @ G`` for ``c`` [R, 8] and the row-major 8x8 fp32 matrix at ``g_ptr`` (rows = basis vectors).

    Broadcast-multiply-reduce: 64 FMAs per 8-vector in registers (``tl.dot`` needs inner dims >= 16).
    """
    i = tl.arange(0, 8)
    g = tl.load(g_ptr + i[:, None] * 8 + i[None, :])
    return tl.sum(c[:, :, None] * g[None, :, :], axis=1)


@triton.jit
def decode_words_doubled(words, g2_ptr, q):
    """Packed int32 words [R] -> doubled Voronoi representatives [R, 8] (fp32 integers).

    Code ``i`` of a word is bits ``[4i, 4i+4)`` (``pack_codes``).  ``y2 = c @ 2G`` is an integer vector
    built as 8 rank-1 updates ``y2 += c_i ⊗ (2G)_i`` straight from the nibbles (no [R, 8, 8] temporary,
    which would spill registers on a GPU for R = BLOCK_N * BLOCK_K / 8 = 1024); the coarse step is exact
    (:func:`coarse_e8_doubled`), so the result equals ``2 * VoronoiCodec("E8", q).decode(c)`` bit for bit.
    """
    j = tl.arange(0, 8)
    y2 = tl.zeros((words.shape[0], 8), tl.float32)
    for i in tl.static_range(8):
        ci = ((words >> (4 * i)) & 15).to(tl.float32)
        gi = tl.load(g2_ptr + i * 8 + j)
        y2 += ci[:, None] * gi[None, :]
    return y2 - q * coarse_e8_doubled(y2, q)
