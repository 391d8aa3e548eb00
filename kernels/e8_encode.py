"""Activation encode: (optional online Hadamard) + per-token scale + E8 nearest point + β choice + packing.

Spec: :class:`llmquant.quant.activations.RowQuantizer` (``kind="lattice"``, E8) and
:class:`llmquant.lattice.NestedLatticeQuantizer`.  For a token row ``x`` ``[K]`` (``K % 8 == 0``):

    s = max(RMS(x), max_b ||x_b|| / radius) rounded up to fp16 (1 where 0), radius = q max(β) / sqrt(2)
        (``row_scale_guarded``, the reference's own function),   u = x / s,   u cut into 8-vectors;
    for each β_j (ascending): z = clamp(u / β_j, ±(2q+2)),  y = Q_E8(z),
        qλ = Q_{qE8}(y) (exact integer step),  x_j = y - qλ,  overloaded iff λ != 0,
        err_j = ||u - β_j x_j||^2;
    j* = first non-overloaded β ("first_fit"; least error if all overload) or least error ("min_error");
    codes = (x_{j*} G^{-1}) mod q  packed 8 nibbles per int32 (``pack_codes`` layout);
    beta_idx = j*  (uint8).

Outputs ``codes`` int32 ``[..., K/8]``, ``beta_idx`` uint8 ``[..., K/8]``, ``scale`` fp32 ``[...]``:
exactly the weight layout, so the W4A4 GEMM reads activations and weights the same way, and
``scale * betas[beta_idx] * decode(codes) == RowQuantizer(x)``.

Design: the row scale needs the whole row before any 8-vector can be encoded, so it is computed first,
in torch, by calling the reference's :func:`llmquant.quant.activations.row_scale_guarded` (one read of
``x``; one piece of code serves both paths, which is what makes scales and codes bit-identical);
the kernel then encodes independent 8-vectors, ``BLOCK_R`` per program, reading ``x`` once and
writing 4.125 bits per entry.  The online Hadamard (``signs`` given) is a separate launch of
:mod:`.hadamard` before it; fusing both into one pass needs a whole row per CTA (future work).
Codes are bit-identical to the reference except for inputs within an ulp of a Voronoi face (the
float closest-point step sums 8 squares in a different order) — none occur in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .e8_triton import closest_e8_float_doubled, coarse_e8_doubled, floor_div_exact, times_matrix8

CHOOSE = {"first_fit": 0, "min_error": 1}


@triton.jit
def _e8_encode_kernel(x_ptr, scale_ptr, betas_ptr, ginvh_ptr, codes_ptr, bidx_ptr, R, G_COLS, q,
                      K_BETAS: tl.constexpr, MIN_ERROR: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, 8)
    rmask = offs_r < R
    x = tl.load(x_ptr + offs_r[:, None] * 8 + j[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + offs_r // G_COLS, mask=rmask, other=1.0)
    u = tl.math.div_rn(x, s[:, None])
    lim = 2.0 * q + 2.0

    best_err = tl.full((BLOCK_R,), float("inf"), tl.float32)
    best_x2 = tl.zeros((BLOCK_R, 8), tl.float32)
    best_j = tl.zeros((BLOCK_R,), tl.int32)
    fit_x2 = tl.zeros((BLOCK_R, 8), tl.float32)
    fit_j = tl.zeros((BLOCK_R,), tl.int32)
    found = tl.zeros((BLOCK_R,), tl.int1)
    for jb in tl.static_range(K_BETAS):
        beta = tl.load(betas_ptr + jb)
        z = tl.minimum(tl.maximum(tl.math.div_rn(u, beta), -lim), lim)
        y2 = closest_e8_float_doubled(z)
        l2 = coarse_e8_doubled(y2, q)
        x2 = y2 - q * l2
        ok = tl.max(tl.abs(l2), axis=1) == 0.0
        d = u - beta * (x2 * 0.5)
        err = tl.sum(d * d, axis=1)
        better = err < best_err
        best_err = tl.where(better, err, best_err)
        best_x2 = tl.where(better[:, None], x2, best_x2)
        best_j = tl.where(better, jb, best_j)
        if not MIN_ERROR:
            take = ok & (found == 0)
            fit_x2 = tl.where(take[:, None], x2, fit_x2)
            fit_j = tl.where(take, jb, fit_j)
            found = found | ok
    if MIN_ERROR:
        sel_x2 = best_x2
        sel_j = best_j
    else:
        sel_x2 = tl.where(found[:, None], fit_x2, best_x2)
        sel_j = tl.where(found, fit_j, best_j)
    # coordinates (x G^{-1}) = x2 @ (G^{-1}/2): dyadic entries, exact in fp32, then mod q
    coords = tl.floor(times_matrix8(sel_x2, ginvh_ptr) + 0.5)
    c = coords - q * floor_div_exact(coords, q * 1.0)
    word = tl.sum(c.to(tl.int32) << (4 * j)[None, :], axis=1)
    tl.store(codes_ptr + offs_r, word, mask=rmask)
    tl.store(bidx_ptr + offs_r, sel_j.to(tl.uint8), mask=rmask)


def overload_radius(betas: torch.Tensor, q: int) -> float:
    """``q * max(betas) / sqrt(2)``: the reference's :func:`llmquant.quant.activations.overload_radius`."""
    from llmquant.quant.activations import overload_radius as reference_radius

    return reference_radius(betas, q)


def row_scale(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-row scale as fp32 ``[...]``: ``row_scale_guarded(x, radius)`` of the reference ``RowQuantizer``.

    ``s = max(RMS(x), max_b ||x_b|| / radius)`` over the row's 8-vectors, rounded up to fp16 (1 for an
    all-zero row); ``radius`` is the quantizer's overload radius (:func:`overload_radius`).
    """
    from llmquant.quant.activations import row_scale_guarded

    return row_scale_guarded(x.to(torch.float32), radius).squeeze(-1)


def inverse_generator_half(generator: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``G^{-1} / 2`` as fp32 (rows x doubled point -> lattice coordinates); checks it is exact in fp32."""
    gi = torch.linalg.inv(generator.to(torch.float64)) * 0.5
    if not torch.equal(gi, gi.to(torch.float32).to(torch.float64)) or not torch.equal(gi * 64, (gi * 64).round()):
        raise ValueError("G^{-1}/2 must have small dyadic entries for the exact in-kernel code computation")
    return gi.to(device=device, dtype=torch.float32).contiguous()


def e8_encode(
    x: torch.Tensor,
    betas: torch.Tensor,
    q: int,
    generator: torch.Tensor,
    choose: str = "min_error",
    signs: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    radius: float | None = None,
    block_r: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode token rows ``x`` ``[..., K]`` -> ``(codes int32 [..., K/8], beta_idx uint8 [..., K/8], scale fp32 [...])``.

    ``signs`` (``[K]`` ±1): rotate first, ``x <- (x * signs) @ H_K`` (the ``HadamardRotation`` of the
    rotation plan).  ``scale``: use these per-row scales instead of :func:`row_scale`.  ``radius``: the
    overload radius of the guarded row scale (default :func:`overload_radius` of ``betas``, ``q``, i.e.
    ``RowQuantizer.overload_radius()``).
    ``betas`` ascending (the quantizer's β set), ``choose`` as ``NestedLatticeQuantizer``.
    """
    k = x.shape[-1]
    if k % 8:
        raise ValueError(f"e8_encode: row length {k} is not divisible by 8 (E8 works on 8-vectors)")
    if choose not in CHOOSE:
        raise ValueError(f"choose must be one of {sorted(CHOOSE)}, got {choose!r}")
    if not 2 <= int(q) <= 16:
        raise ValueError(f"q = {q}: packed activation codes need 2 <= q <= 16")
    betas = betas.to(device=x.device, dtype=torch.float32).contiguous()
    if betas.numel() < 1 or betas.numel() > 255:
        raise ValueError(f"need 1..255 betas, got {betas.numel()}")
    if signs is not None:
        from .hadamard import hadamard_transform

        x = hadamard_transform(x, signs)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    if scale is None:
        scale = row_scale(x2, overload_radius(betas, q) if radius is None else float(radius))
    scale = scale.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    if scale.numel() != x2.shape[0]:
        raise ValueError(f"scale has {scale.numel()} entries for {x2.shape[0]} rows")
    g_cols = k // 8
    r = x2.shape[0] * g_cols
    codes = torch.empty(r, device=x.device, dtype=torch.int32)
    bidx = torch.empty(r, device=x.device, dtype=torch.uint8)
    if r:
        _e8_encode_kernel[(triton.cdiv(r, block_r),)](
            x2, scale, betas, inverse_generator_half(generator, x.device), codes, bidx, r, g_cols, int(q),
            K_BETAS=betas.numel(), MIN_ERROR=CHOOSE[choose] == 1, BLOCK_R=block_r,
        )
    return codes.reshape(*lead, g_cols), bidx.reshape(*lead, g_cols), scale.reshape(lead)
