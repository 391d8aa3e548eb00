"""W4A4 GEMM on the √2E8 **box** code: both operands as integer lattice coordinates, one int8 ``tl.dot`` per limb pair.

Spec (the truth is :mod:`llmquant.lattice.box`; reference: :func:`box_w4a4_reference`)
-------------------------------------------------------------------------------------

Both operands are box-coded (``BoxCodec(code="hamming", gamma=1)``, no level table) with an **integer-ratio**
β set ``β_j = c r_j`` (:func:`llmquant.lattice.box.integer_beta_ratios`; the shipped ``int`` / ``int8`` variants).
A word of width ``b`` (bits of the uint32; ``W = 8b + 8``)::

    bits [b i, b i + b)   u_i              (i = 0..7)
    bits [8b, 8b + 4)     m                (Hamming message; h_i = m_i, h_{4+i} = m_i ^ popcount(m) & 1)
    bits [8b + 4, 8b + 8) j                (β index)

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
  M = 128, 128 above (prefill).  No host sync; the ratio tables, ``α`` and limb counts are computed once per
  (codec, device) and cached (:func:`codec_constants`).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

#: limb base: t = 32 t_hi + t_lo
LIMB_SHIFT = 5
#: the largest |t| one int8 limb holds
INT8_MAX = 127


def _check_codec(codec) -> tuple[float, list[int]]:
    """``(c, r)`` of a box codec the kernel can read, or ValueError naming what is wrong."""
    from llmquant.lattice.box import integer_beta_ratios

    if getattr(codec, "kind", None) != "box":
        raise ValueError(f"box W4A4: expected a BoxCodec, got {type(codec).__name__}")
    if codec.code != "hamming" or codec.gamma != 1.0 or codec.level_table is not None:
        raise ValueError(f"box W4A4: needs the Hamming lattice code (gamma=1, no level table), got {codec!r}")
    ratios = integer_beta_ratios(codec.betas)
    if ratios is None:
        raise ValueError(f"box W4A4: the β set of {codec!r} has no integer ratios; use box_variant 'int' or 'int8'")
    return ratios


def kernel_reason(codec) -> str | None:
    """Why ``codec`` cannot be an operand of this kernel (a short sentence), or None."""
    try:
        _check_codec(codec)
    except ValueError as exc:
        return str(exc)
    return None


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
    b, betas = key
    from llmquant.lattice.box import integer_beta_ratios

    c, r = integer_beta_ratios(torch.tensor(betas, dtype=torch.float32))
    return {"b": b, "c": c, "ratios": r, "limbs": limbs(b, r),
            "rtab": torch.tensor(r, dtype=torch.int32, device=device)}


def codec_constants(codec, device) -> dict:
    """``{"b", "c", "ratios", "limbs", "rtab"}`` of a box codec on ``device`` (``rtab``: int32 ``[16]`` ratios),
    computed once per (β set, device)."""
    _check_codec(codec)
    return _constants((int(codec.b), tuple(float(v) for v in codec.betas.tolist())), str(torch.device(device)))


def alpha(cx: float, cw: float) -> float:
    """``α = fl32(c_x c_w / 4)`` as a Python float (the value the kernel receives)."""
    return float(torch.tensor(cx * cw / 4.0, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------------------------
# pure-PyTorch reference


def int_coords_reference(words: torch.Tensor, b: int, ratios) -> torch.Tensor:
    """Integer coordinates ``t [R, 8 G]`` (int64) of words ``[R, G]`` (one int32 per word)."""
    from llmquant.lattice.box import codewords

    w = words.to(torch.int64) & ((1 << (8 * b + 8)) - 1)
    u = (w[..., None] >> (b * torch.arange(8, device=w.device))) & ((1 << b) - 1)
    m = (w >> (8 * b)) & 15
    j = (w >> (8 * b + 4)) & 15
    h = codewords("hamming").to(w.device)[m]
    r = torch.as_tensor(ratios, dtype=torch.int64, device=w.device)[j]
    t = r[..., None] * (4 * u + 2 * h - ((2 << b) - 1))
    return t.reshape(*words.shape[:-1], -1)


def split_limbs_reference(t: torch.Tensor, n_limbs: int) -> torch.Tensor:
    """int8 limb planes ``[L, ...]`` of integer coordinates (L = 1: ``t``; L = 2: ``(t >> 5, t & 31)``)."""
    if n_limbs == 1:
        return t.to(torch.int8)[None]
    return torch.stack([(t >> LIMB_SHIFT).to(torch.int8), (t & ((1 << LIMB_SHIFT) - 1)).to(torch.int8)])


def box_w4a4_integer_reference(x_words, x_b, x_ratios, w_words, w_b, w_ratios) -> torch.Tensor:
    """``I [M, N]`` int64 (exact; float64 matmul of integers below 2^53, so it also runs on CUDA)."""
    tx = int_coords_reference(x_words, x_b, x_ratios).double()
    tw = int_coords_reference(w_words, w_b, w_ratios).double()
    return (tx @ tw.T).to(torch.int64)


def box_w4a4_reference(x_words, xs, x_codec, w_words, ws, w_codec, bias=None, out_dtype=torch.float32,
                       raw: bool = False) -> torch.Tensor:
    """The module-doc formula in PyTorch: ``y [M, N]`` (or ``I`` int64 with ``raw``)."""
    cx, rx = _check_codec(x_codec)
    cw, rw = _check_codec(w_codec)
    i = box_w4a4_integer_reference(x_words, x_codec.b, rx, w_words, w_codec.b, rw)
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
def _word_coords(words, rtab_ptr, B: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr):
    """Integer coordinates ``t`` int32 ``[ROWS, 8 G]`` of words int32 ``[ROWS, G]`` (module doc)."""
    w = words[:, :, None]
    i = tl.arange(0, 8)[None, None, :]
    u = (w >> (B * i)) & ((1 << B) - 1)
    m = (w >> (8 * B)) & 15
    p = (m ^ (m >> 1) ^ (m >> 2) ^ (m >> 3)) & 1
    cw = m | ((m ^ (p * 15)) << 4)  # the 8 codeword bits h_0..h_7
    h = (cw >> i) & 1
    r = tl.load(rtab_ptr + ((w >> (8 * B + 4)) & 15))
    t = r * (4 * u + 2 * h - ((2 << B) - 1))
    return tl.reshape(t, (ROWS, 8 * G))


@triton.jit
def _box_int8_kernel(w_ptr, rtab_ptr, out_ptr, R, G, plane,
                     B: tl.constexpr, LIMBS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = (offs_r[:, None] < R) & (offs_g[None, :] < G)
    words = tl.load(w_ptr + offs_r[:, None] * G + offs_g[None, :], mask=mask, other=0)
    t = _word_coords(words, rtab_ptr, B, BLOCK_R, BLOCK_G)
    offs_k = pid_g * (8 * BLOCK_G) + tl.arange(0, 8 * BLOCK_G)
    omask = (offs_r[:, None] < R) & (offs_k[None, :] < 8 * G)
    dst = out_ptr + offs_r[:, None] * (8 * G) + offs_k[None, :]
    if LIMBS == 1:
        tl.store(dst, t.to(tl.int8), mask=omask)
    else:
        tl.store(dst, (t >> 5).to(tl.int8), mask=omask)
        tl.store(dst + plane, (t & 31).to(tl.int8), mask=omask)


@triton.jit
def _box_w4a4_kernel(xq_ptr, xs_ptr, w_ptr, ws_ptr, rtab_ptr, bias_ptr, out_ptr, M, N, K, x_plane, alpha,
                     stride_om, HAS_BIAS: tl.constexpr, RAW: tl.constexpr, BW: tl.constexpr, LX: tl.constexpr,
                     LW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
        offs_g = k0 // 8 + tl.arange(0, BLOCK_G)
        wmask = (offs_n[:, None] < N) & (offs_g[None, :] < G)
        words = tl.load(w_ptr + offs_n[:, None] * G + offs_g[None, :], mask=wmask, other=0)
        tw = _word_coords(words, rtab_ptr, BW, BLOCK_N, BLOCK_G)
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


def box_int8_coords(words: torch.Tensor, b: int, rtab: torch.Tensor, n_limbs: int) -> torch.Tensor:
    """int8 limb planes ``[L, R, 8 G]`` of words ``[R, G]`` (one int32 per word) by ``_box_int8_kernel``;
    equals :func:`split_limbs_reference` of :func:`int_coords_reference`."""
    if words.dim() != 2 or words.dtype != torch.int32:
        raise ValueError(f"box_int8_coords: expected int32 words [R, G], got {words.dtype} {tuple(words.shape)}")
    r, g = words.shape
    out = torch.empty((n_limbs, r, 8 * g), dtype=torch.int8, device=words.device)
    block_r, block_g = 32, 16
    grid = (triton.cdiv(r, block_r), triton.cdiv(g, block_g))
    _box_int8_kernel[grid](words.contiguous(), rtab, out, r, g, r * 8 * g, B=int(b), LIMBS=int(n_limbs),
                           BLOCK_R=block_r, BLOCK_G=block_g)
    return out


#: tiles: decode (M <= 16), medium, prefill
CONFIGS = {"decode": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4},
           "medium": {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4},
           "prefill": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8}}
#: small tiles for the CPU interpreter (tests)
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4}


def choose_config(m: int, device: torch.device) -> dict:
    """The tile for ``M`` rows (a shape, so no sync): see :data:`CONFIGS`."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    return CONFIGS["decode" if m <= 16 else "medium" if m <= 128 else "prefill"]


def box_w4a4_matmul(x_words: torch.Tensor, xs: torch.Tensor, x_codec, w_words: torch.Tensor, ws: torch.Tensor,
                    w_codec, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                    raw: bool = False, config: dict | None = None) -> torch.Tensor:
    """``y [M, N]`` (module doc) from activation words ``[M, K/8]`` + scales ``[M]`` and weight words ``[N, K/8]``
    (b = 3 layout: one int32 per word) + row scales ``[N]``; ``raw``: the integer ``I`` (int64) instead."""
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
    xq = box_int8_coords(x_words, kx["b"], kx["rtab"], kx["limbs"])
    cfg = dict(config or choose_config(m, dev))
    out = torch.empty((m, n), device=dev, dtype=torch.int64 if raw else out_dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _box_w4a4_kernel[grid](
        xq, xs.contiguous(), w_words.contiguous(), ws.contiguous(), kw["rtab"],
        bias if bias is not None else ws, out, m, n, 8 * g, m * 8 * g, alpha(kx["c"], kw["c"]), out.stride(0),
        HAS_BIAS=bias is not None, RAW=raw, BW=kw["b"], LX=kx["limbs"], LW=kw["limbs"],
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg.get("num_warps", 4),
    )
    return out
