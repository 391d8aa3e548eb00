"""W4A4 GEMM on the **box** codes (√2E8 / D8): both operands as integer lattice coordinates, int8 ``tl.dot`` per limb pair.

Spec (the truth is :mod:`llmquant.lattice.box`; reference: :func:`box_w4a4_reference`)
-------------------------------------------------------------------------------------

Both operands are box-coded lattice codes (``BoxCodec(code="hamming" | "parity", gamma=1)``, no level table) with an
**integer-ratio** β set ``β_j = c r_j`` (:func:`llmquant.lattice.box.integer_beta_ratios`; the shipped ``int`` /
``int8`` variants).  A word of width ``b`` (bits of the uint32; ``W = 8b + 8``; ``M`` message bits, ``8 - M`` β bits)::

    bits [b i, b i + b)   u_i              (i = 0..7)
    bits [8b, 8b + M)     m                hamming (M = 4, √2E8): h_i = m_i, h_{4+i} = m_i ^ popcount(m) & 1
                                           parity  (M = 7, D8):   h_i = m_i (i < 7), h_7 = popcount(m) & 1
    bits [8b + M, 8b + 8) j                (β index: 16 β / 2 β)

decodes to ``β_j (ℓ_i - 2^b + ½)`` with ``ℓ_i = 2 u_i + h_i``, i.e. ``(c / 2) t_i`` with the integer coordinate

    t_i = r_j (4 u_i + 2 h_i - 2^(b+1) + 1),        |t_i| <= T = r_max (2^(b+1) - 1).

With activations ``x_hat[m, :] = xs[m] (c_x / 2) t^x[m, :]`` (one fp16 row scale per token, words ``[M, K/8]``
from the reference encoder :meth:`llmquant.quant.activations.RowQuantizer.encode_rows`) and weights
``W[n, :] = ws[n] (c_w / 2) t^w[n, :]`` (``LatticeLinear`` box buffers: ``words`` int32 ``[N, K/8]`` (b = 3: one
int32 per word), ``row_scale`` fp16 ``[N]``)::

    I[m, n] = Σ_k t^x[m, k] t^w[n, k]                                   (exact integer)
    y[m, n] = fl(fl(fl(fl32(I[m, n]) · xs[m]) · ws[n]) · α) (+ bias[n]),   α = fl32(c_x c_w / 4)

``y`` equals ``x_hat @ W^T`` up to fp32 rounding (``β_j`` is stored as ``fl32(c r_j)``).

Integer part.  int8 needs ``|t| <= 127``: true for the ``int8`` variant at b <= 2 (b = 2: ``18 · 7 = 126``), never
for 16 β ratios at b = 3 (``r_max · 15 <= 127`` allows only 8 distinct ratios; the shipped b = 3 ``int`` set has
``r <= 24``, ``|t| <= 360``).  An operand with ``T > 127`` is split into two int8 **limbs** ``t = 32 t_hi + t_lo``,
``t_lo = t & 31 ∈ [0, 32)``, ``t_hi = t >> 5`` (arithmetic; ``|t_hi| <= 12`` for T = 360).  Limb pairs go to three
int32 accumulators by weight ``32^e`` (``A_2``: hi·hi, ``A_1``: hi·lo + lo·hi, ``A_0``: lo·lo; a one-limb operand
counts as "lo") and ``I = 1024 A_2 + 32 A_1 + A_0`` is formed in int64 in the epilogue.  MMAs per tile:
``L_x L_w`` (1 for int8-fitting sets on both sides, 4 for b = 3 ``int`` on both).  Each accumulator is bounded
by ``K · 2 · 31 · 127 < 2^31`` for ``K < 272,000``.

Kernels
-------

* :func:`box_int8_coords` (``_box_int8_kernel``): words ``[R, K/8]`` (any b, one int32 per word) -> int8 limb planes
  ``[L, R, K]`` (plane 0 = hi when L = 2).  Activations go through it **once per token row** (after the
  encoder); the GEMM then reads int8 activation tiles with no decode.
* ``_box_w4a4_kernel``: grid ``(cdiv(M, BLOCK_M) · cdiv(N, BLOCK_N),)``; per K tile it loads the int8 activation
  limbs ``[BLOCK_M, BLOCK_K]`` and the weight words ``[BLOCK_N, BLOCK_K/8]``, decodes the words to ``t^w``
  (shifts, masks, a 16-entry ratio table; no shuffles of the word's coordinates across rows), splits limbs, and
  runs ``L_x L_w`` int8 ``tl.dot`` with int32 accumulation.  Scales, ``α``, bias and the cast in the epilogue.
  Each weight word is decoded once per ``BLOCK_M`` rows: ``BLOCK_M = 16`` for ``M <= 16`` (decode), 64 up to
  M = 128.  Above (prefill) the weight is decoded **once per call** by :func:`box_int8_coords` into int8 limb planes
  ``[L_w, N, K]`` and the kernel reads them (``W_PLANES``): the K loop is loads + MMAs only.
  No host sync; the ratio tables, ``α`` and limb counts are computed once per
  (codec, device) and cached (:func:`codec_constants`).
"""

from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl

#: limb base: t = 32 t_hi + t_lo
LIMB_SHIFT = 5
#: the largest |t| one int8 limb holds
INT8_MAX = 127
#: constexpr ``CODE`` of the kernels: 0 = Hamming (√2E8, 4 message bits, 16 β), 1 = parity (D8, 7 bits, 2 β)
CODE_IDS = {"hamming": 0, "parity": 1}


def _check_codec(codec) -> tuple[float, list[int]]:
    """``(c, r)`` of a box codec the kernel can read, or ValueError naming what is wrong."""
    from llmquant.lattice.box import integer_beta_ratios

    if getattr(codec, "kind", None) != "box":
        raise ValueError(f"box W4A4: expected a BoxCodec, got {type(codec).__name__}")
    if codec.code not in CODE_IDS or codec.gamma != 1.0 or codec.level_table is not None:
        raise ValueError(f"box W4A4: needs a lattice box code (hamming or parity, gamma=1, no level table), got {codec!r}")
    ratios = integer_beta_ratios(codec.betas)
    if ratios is None:
        raise ValueError(f"box W4A4: the β set of {codec!r} has no integer ratios; use box_variant 'int' or 'int8'")
    return ratios


def max_coordinate(b: int, ratios: list[int]) -> int:
    """``T = r_max (2^(b+1) - 1)``: the largest ``|t|``."""
    return max(ratios) * ((2 << b) - 1)


def limbs(b: int, ratios: list[int]) -> int:
    """int8 limbs per coordinate: 1 when ``T <= 127``, else 2 (``t = 32 t_hi + t_lo``)."""
    t = max_coordinate(b, ratios)
    if t > 32 * (INT8_MAX + 1) - 1:
        raise ValueError(f"box W4A4: |t| up to {t} does not fit two int8 limbs")
    return 1 if t <= INT8_MAX else 2


@functools.lru_cache(maxsize=64)
def _constants(key: tuple, device: str) -> dict:
    b, code, betas = key
    from llmquant.lattice.box import integer_beta_ratios

    c, r = integer_beta_ratios(torch.tensor(betas, dtype=torch.float32))
    return {"b": b, "code": code, "code_id": CODE_IDS[code], "c": c, "ratios": r, "limbs": limbs(b, r),
            "rtab": torch.tensor(r, dtype=torch.int32, device=device)}


def codec_constants(codec, device) -> dict:
    """``{"b", "code", "code_id", "c", "ratios", "limbs", "rtab"}`` of a box codec on ``device`` (``rtab``: int32
    ``[2^K]`` ratios), computed once per (code, β set, device) and remembered on the codec object (per device and
    β-tensor version), so a call does no host work beyond a dict lookup."""
    memo = codec.__dict__.setdefault("_box_w4a4_constants", {})
    key = (str(torch.device(device)), codec.betas._version)
    if key not in memo:
        _check_codec(codec)
        spec = (int(codec.b), codec.code, tuple(float(v) for v in codec.betas.tolist()))
        memo[key] = _constants(spec, key[0])
    return memo[key]


def alpha(cx: float, cw: float) -> float:
    """``α = fl32(c_x c_w / 4)`` as a Python float (the value the kernel receives)."""
    return struct.unpack("f", struct.pack("f", cx * cw / 4.0))[0]


# ---------------------------------------------------------------------------------------------------------------
# pure-PyTorch reference


def int_coords_reference(words: torch.Tensor, b: int, ratios, code: str = "hamming") -> torch.Tensor:
    """Integer coordinates ``t [R, 8 G]`` (int64) of words ``[R, G]`` (one int32 per word)."""
    from llmquant.lattice.box import CODES, codewords

    n_m, n_j = CODES[code]
    w = words.to(torch.int64) & ((1 << (8 * b + 8)) - 1)
    u = (w[..., None] >> (b * torch.arange(8, device=w.device))) & ((1 << b) - 1)
    m = (w >> (8 * b)) & ((1 << n_m) - 1)
    j = (w >> (8 * b + n_m)) & ((1 << n_j) - 1)
    h = codewords(code).to(w.device)[m]
    r = torch.as_tensor(ratios, dtype=torch.int64, device=w.device)[j]
    t = r[..., None] * (4 * u + 2 * h - ((2 << b) - 1))
    return t.reshape(*words.shape[:-1], -1)


def split_limbs_reference(t: torch.Tensor, n_limbs: int) -> torch.Tensor:
    """int8 limb planes ``[L, ...]`` of integer coordinates (L = 1: ``t``; L = 2: ``(t >> 5, t & 31)``)."""
    if n_limbs == 1:
        return t.to(torch.int8)[None]
    return torch.stack([(t >> LIMB_SHIFT).to(torch.int8), (t & ((1 << LIMB_SHIFT) - 1)).to(torch.int8)])


def box_w4a4_integer_reference(x_words, x_b, x_ratios, w_words, w_b, w_ratios, x_code: str = "hamming",
                               w_code: str = "hamming") -> torch.Tensor:
    """``I [M, N]`` int64 (exact; float64 matmul of integers below 2^53, so it also runs on CUDA)."""
    tx = int_coords_reference(x_words, x_b, x_ratios, x_code).double()
    tw = int_coords_reference(w_words, w_b, w_ratios, w_code).double()
    return (tx @ tw.T).to(torch.int64)


def box_w4a4_reference(x_words, xs, x_codec, w_words, ws, w_codec, bias=None, out_dtype=torch.float32,
                       raw: bool = False) -> torch.Tensor:
    """The module-doc formula in PyTorch: ``y [M, N]`` (or ``I`` int64 with ``raw``)."""
    cx, rx = _check_codec(x_codec)
    cw, rw = _check_codec(w_codec)
    i = box_w4a4_integer_reference(x_words, x_codec.b, rx, w_words, w_codec.b, rw, x_codec.code, w_codec.code)
    if raw:
        return i
    y = i.to(torch.float32) * xs.to(torch.float32)[:, None]
    y = y * ws.to(torch.float32)[None, :]
    y = y * alpha(cx, cw)
    if bias is not None:
        y = y + bias.to(torch.float32)[None, :]
    return y.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Triton


@triton.jit
def _coord(w, cw, r, nr, I: tl.constexpr, B: tl.constexpr):
    """``t_I = r (4 u_I + 2 h_I) + nr`` (``nr = -(2^(B+1) - 1) r``) of words ``w`` with codewords ``cw`` (bits
    h_0..h_7): ``4 u_I`` and ``2 h_I`` are shifted into disjoint bits [2, 2 + B) and 1 and OR-ed."""
    if B * I >= 2:
        a = w >> (B * I - 2)
    else:
        a = w << (2 - B * I)
    if I >= 1:
        h2 = cw >> (I - 1)
    else:
        h2 = cw << 1
    return r * ((a & (((1 << B) - 1) << 2)) | (h2 & 2)) + nr


@triton.jit
def _word_coords(words, rtab_ptr, B: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr, CODE: tl.constexpr = 0):
    """Integer coordinates ``t`` int32 ``[ROWS, 8 G]`` of words int32 ``[ROWS, G]`` (module doc).  Per word: the
    message, its parity, the codeword bits and the ratio once; per coordinate two shifts, one LOP3, one IMAD;
    the 8 coordinates are joined along a new in-thread axis and flattened in order.  ``CODE``: :data:`CODE_IDS`."""
    if CODE == 0:  # Hamming: 4 message bits, h_{4+i} = m_i ^ parity(m), 4-bit β index
        m = (words >> (8 * B)) & 15
        p = (m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3)) & 1
        cw = m | ((m ^ (p * 15)) << 4)  # the 8 codeword bits h_0..h_7
        r = tl.load(rtab_ptr + ((words >> (8 * B + 4)) & 15))
    else:  # parity (D8): 7 message bits, h_7 = parity(m), 1-bit β index
        m = (words >> (8 * B)) & 127
        p = m ^ (m >> 4)
        p = p ^ (p >> 2)
        p = (p ^ (p >> 1)) & 1
        cw = m | (p << 7)
        r = tl.load(rtab_ptr + ((words >> (8 * B + 7)) & 1))
    nr = r * (1 - (2 << B))
    t0 = _coord(words, cw, r, nr, 0, B)
    t1 = _coord(words, cw, r, nr, 1, B)
    t2 = _coord(words, cw, r, nr, 2, B)
    t3 = _coord(words, cw, r, nr, 3, B)
    t4 = _coord(words, cw, r, nr, 4, B)
    t5 = _coord(words, cw, r, nr, 5, B)
    t6 = _coord(words, cw, r, nr, 6, B)
    t7 = _coord(words, cw, r, nr, 7, B)
    # T[..., k, s, q] = t_{4q + 2s + k}: permute to (q, s, k) so the flat order is t_0 .. t_7
    t = tl.join(tl.join(tl.join(t0, t1), tl.join(t2, t3)), tl.join(tl.join(t4, t5), tl.join(t6, t7)))
    return tl.reshape(tl.permute(t, (0, 1, 4, 3, 2)), (ROWS, 8 * G))


@triton.jit
def _box_int8_kernel(w_ptr, rtab_ptr, out_ptr, R, G, plane,
                     B: tl.constexpr, LIMBS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
                     CODE: tl.constexpr = 0):
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = (offs_r[:, None] < R) & (offs_g[None, :] < G)
    words = tl.load(w_ptr + offs_r[:, None] * G + offs_g[None, :], mask=mask, other=0)
    t = _word_coords(words, rtab_ptr, B, BLOCK_R, BLOCK_G, CODE)
    offs_k = pid_g * (8 * BLOCK_G) + tl.arange(0, 8 * BLOCK_G)
    omask = (offs_r[:, None] < R) & (offs_k[None, :] < 8 * G)
    dst = out_ptr + offs_r[:, None] * (8 * G) + offs_k[None, :]
    if LIMBS == 1:
        tl.store(dst, t.to(tl.int8), mask=omask)
    else:
        tl.store(dst, (t >> 5).to(tl.int8), mask=omask)
        tl.store(dst + plane, (t & 31).to(tl.int8), mask=omask)


@triton.jit
def _box_w4a4_kernel(xq_ptr, xs_ptr, w_ptr, ws_ptr, rtab_ptr, bias_ptr, out_ptr, M, N, K, x_plane, w_plane, alpha,
                     stride_om, HAS_BIAS: tl.constexpr, RAW: tl.constexpr, BW: tl.constexpr, LX: tl.constexpr,
                     LW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     CODE_W: tl.constexpr = 0, W_PLANES: tl.constexpr = False):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    BLOCK_G: tl.constexpr = BLOCK_K // 8
    G = K // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xmask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        xp = xq_ptr + offs_m[:, None] * K + offs_k[None, :]
        if W_PLANES:  # weights pre-decoded to int8 limb planes [LW, N, K] (plane 0 = hi when LW = 2)
            wp = w_ptr + offs_n[None, :] * K + offs_k[:, None]
            wpmask = (offs_n[None, :] < N) & (offs_k[:, None] < K)
            if LW == 1:
                wlo = tl.load(wp, mask=wpmask, other=0)
            else:
                whi = tl.load(wp, mask=wpmask, other=0)
                wlo = tl.load(wp + w_plane, mask=wpmask, other=0)
        else:
            offs_g = k0 // 8 + tl.arange(0, BLOCK_G)
            wmask = (offs_n[:, None] < N) & (offs_g[None, :] < G)
            words = tl.load(w_ptr + offs_n[:, None] * G + offs_g[None, :], mask=wmask, other=0)
            tw = _word_coords(words, rtab_ptr, BW, BLOCK_N, BLOCK_G, CODE_W)
            if LW == 1:
                wlo = tl.trans(tw.to(tl.int8))
            else:
                wlo = tl.trans((tw & 31).to(tl.int8))
                whi = tl.trans((tw >> 5).to(tl.int8))
        if LX == 1:
            xlo = tl.load(xp, mask=xmask, other=0)
            acc0 = tl.dot(xlo, wlo, acc0, out_dtype=tl.int32)
            if LW == 2:
                acc1 = tl.dot(xlo, whi, acc1, out_dtype=tl.int32)
        else:
            xhi = tl.load(xp, mask=xmask, other=0)
            xlo = tl.load(xp + x_plane, mask=xmask, other=0)
            acc0 = tl.dot(xlo, wlo, acc0, out_dtype=tl.int32)
            acc1 = tl.dot(xhi, wlo, acc1, out_dtype=tl.int32)
            if LW == 2:
                acc1 = tl.dot(xlo, whi, acc1, out_dtype=tl.int32)
                acc2 = tl.dot(xhi, whi, acc2, out_dtype=tl.int32)
    tot = acc2.to(tl.int64) * 1024 + acc1.to(tl.int64) * 32 + acc0.to(tl.int64)
    omask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    optr = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if RAW:
        tl.store(optr, tot, mask=omask)
    else:
        xs = tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0).to(tl.float32)
        ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        y = tot.to(tl.float32) * xs[:, None]
        y = y * ws[None, :]
        y = y * alpha
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=omask)


def box_int8_coords(words: torch.Tensor, b: int, rtab: torch.Tensor, n_limbs: int, code_id: int = 0) -> torch.Tensor:
    """int8 limb planes ``[L, R, 8 G]`` of words ``[R, G]`` (one int32 per word) by ``_box_int8_kernel``;
    equals :func:`split_limbs_reference` of :func:`int_coords_reference`."""
    if words.dim() != 2 or words.dtype != torch.int32:
        raise ValueError(f"box_int8_coords: expected int32 words [R, G], got {words.dtype} {tuple(words.shape)}")
    r, g = words.shape
    out = torch.empty((n_limbs, r, 8 * g), dtype=torch.int8, device=words.device)
    block_r, block_g = 32, 16
    grid = (triton.cdiv(r, block_r), triton.cdiv(g, block_g))
    _box_int8_kernel[grid](words.contiguous(), rtab, out, r, g, r * 8 * g, B=int(b), LIMBS=int(n_limbs),
                           BLOCK_R=block_r, BLOCK_G=block_g, CODE=int(code_id))
    return out


#: tiles: decode (M <= 16) and medium (M <= 128) decode the weight words in the tile loop; prefill (M > 128) first
#: decodes the weight once per call into int8 limb planes (``W_PLANES``: :func:`box_int8_coords`, N K L bytes of
#: scratch) and runs a pure int8 GEMM.  BLOCK_N = 64 when more than one limb per weight (2-3 int32 accumulators;
#: 128 spills there).  Choices from the sm_90 SASS (kernels/sass.py), not timed.
CONFIGS = {"decode": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4},
           "medium": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4},
           "prefill": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "W_PLANES": True},
           "prefill_limbs": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 8, "W_PLANES": True}}
#: small tiles for the CPU interpreter (tests)
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4}


def choose_config(m: int, device: torch.device, w_limbs: int = 1) -> dict:
    """The tile for ``M`` rows and ``w_limbs`` int8 limbs per weight (shapes, so no sync): see :data:`CONFIGS`."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    if m <= 16:
        return CONFIGS["decode"]
    if m <= 128:
        return CONFIGS["medium"]
    return CONFIGS["prefill" if w_limbs == 1 else "prefill_limbs"]


def box_w4a4_matmul(x_words: torch.Tensor, xs: torch.Tensor, x_codec, w_words: torch.Tensor, ws: torch.Tensor,
                    w_codec, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                    raw: bool = False, config: dict | None = None,
                    x_planes: torch.Tensor | None = None) -> torch.Tensor:
    """``y [M, N]`` (module doc) from activation words ``[M, K/8]`` + scales ``[M]`` and weight words ``[N, K/8]``
    (b = 3 layout: one int32 per word) + row scales ``[N]``; ``raw``: the integer ``I`` (int64) instead.
    ``x_planes``: the activations' int8 limb planes ``[L_x, M, K]`` when already made (by the encode,
    :func:`.box_encode.box_encode_rows_int8`): the words -> limbs pass (:func:`box_int8_coords`) is skipped."""
    if x_words.dim() != 2 or w_words.dim() != 2 or x_words.shape[1] != w_words.shape[1]:
        raise ValueError(f"box W4A4: activation words [M, K/8] and weight words [N, K/8] must share K/8, got "
                         f"{tuple(x_words.shape)} and {tuple(w_words.shape)}")
    if w_words.dtype != torch.int32 or x_words.dtype != torch.int32:
        raise ValueError(f"box W4A4: words must be int32, got {x_words.dtype} / {w_words.dtype}")
    m, g = x_words.shape
    n = w_words.shape[0]
    if xs.numel() != m or ws.numel() != n:
        raise ValueError(f"box W4A4: need xs [{m}] and ws [{n}], got {tuple(xs.shape)} / {tuple(ws.shape)}")
    dev = x_words.device
    kx = codec_constants(x_codec, dev)
    kw = codec_constants(w_codec, dev)
    if x_planes is None:
        xq = box_int8_coords(x_words, kx["b"], kx["rtab"], kx["limbs"], kx["code_id"])
    else:
        if (x_planes.dtype != torch.int8 or tuple(x_planes.shape) != (kx["limbs"], m, 8 * g)
                or not x_planes.is_contiguous() or x_planes.device != dev):
            raise ValueError(f"box W4A4: x_planes must be contiguous int8 [{kx['limbs']}, {m}, {8 * g}] on {dev}, got "
                             f"{x_planes.dtype} {tuple(x_planes.shape)} on {x_planes.device}")
        xq = x_planes
    cfg = dict(config or choose_config(m, dev, kw["limbs"]))
    out = torch.empty((m, n), device=dev, dtype=torch.int64 if raw else out_dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    planes = cfg.get("W_PLANES", False)
    w_op = box_int8_coords(w_words, kw["b"], kw["rtab"], kw["limbs"], kw["code_id"]) if planes else w_words.contiguous()
    _box_w4a4_kernel[grid](
        xq, xs.contiguous(), w_op, ws.contiguous(), kw["rtab"],
        bias if bias is not None else ws, out, m, n, 8 * g, m * 8 * g, n * 8 * g, alpha(kx["c"], kw["c"]),
        out.stride(0),
        HAS_BIAS=bias is not None, RAW=raw, BW=kw["b"], LX=kx["limbs"], LW=kw["limbs"],
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], CODE_W=kw["code_id"],
        W_PLANES=planes, num_warps=cfg.get("num_warps", 4),
    )
    return out
