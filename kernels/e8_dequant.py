"""Dequantize packed E8 weights to a dense matrix in one Triton pass (the decode half of the W4A16 GEMM).

``W[n, 8b:8b+8] = row_scale[n] * (betas[beta_idx[n, b]] * decode(codes[n, b]))`` (fp32, the product in
that order, as ``NestedLatticeQuantizer.dequantize`` then the row scale), written in ``out_dtype``.

Uses: the bit-exactness check of the in-register decode shared with :mod:`.e8_decode_gemm`, and a
"decode once, then cuBLAS" path for very large M where the decode cost amortizes over M rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .e8_triton import decode_words_doubled


@triton.jit
def _e8_dequant_kernel(codes_ptr, bidx_ptr, betas_ptr, scale_ptr, g2_ptr, out_ptr, N, G_COLS, q,
                       BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, APPLY_SCALE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_g = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = (offs_n[:, None] < N) & (offs_g[None, :] < G_COLS)
    idx = offs_n[:, None] * G_COLS + offs_g[None, :]
    words = tl.load(codes_ptr + idx, mask=mask, other=0)
    bidx = tl.load(bidx_ptr + idx, mask=mask, other=0).to(tl.int32)
    beta = tl.load(betas_ptr + bidx)
    y2 = decode_words_doubled(tl.reshape(words, (BLOCK_N * BLOCK_G,)), g2_ptr, q)
    w = (y2 * 0.5) * tl.reshape(beta, (BLOCK_N * BLOCK_G,))[:, None]
    w = tl.reshape(w, (BLOCK_N, BLOCK_G * 8))
    if APPLY_SCALE:
        scale = tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        w = scale[:, None] * w
    offs_k = pid_g * BLOCK_G * 8 + tl.arange(0, BLOCK_G * 8)
    omask = (offs_n[:, None] < N) & (offs_k[None, :] < G_COLS * 8)
    tl.store(out_ptr + offs_n[:, None] * (G_COLS * 8) + offs_k[None, :], w.to(out_ptr.dtype.element_ty),
             mask=omask)


def doubled_generator(generator: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``2G`` as contiguous fp32 on ``device``; raises if ``2G`` is not an integer 8x8 matrix."""
    if tuple(generator.shape) != (8, 8):
        raise ValueError(f"expected the 8x8 E8 generator matrix, got shape {tuple(generator.shape)}")
    g2 = 2.0 * generator.to(torch.float64)
    if not torch.equal(g2, g2.round()):
        raise ValueError("the E8 generator matrix must have half-integer entries (2G integer) for the kernels")
    return g2.to(device=device, dtype=torch.float32).contiguous()


def check_packed(codes: torch.Tensor, beta_idx: torch.Tensor, q: int) -> None:
    """Validate the packed layout shared by the weight kernels (clear error naming the fix)."""
    if codes.dim() != 2 or codes.dtype != torch.int32:
        raise ValueError(f"codes must be int32 [N, K/8] (pack_codes layout), got {codes.dtype} {tuple(codes.shape)}")
    if beta_idx.shape != codes.shape or beta_idx.dtype != torch.uint8:
        raise ValueError(f"beta_idx must be uint8 with the shape of codes {tuple(codes.shape)}, "
                         f"got {beta_idx.dtype} {tuple(beta_idx.shape)}")
    if not 2 <= int(q) <= 16:
        raise ValueError(f"q = {q}: nibble-packed codes need 2 <= q <= 16")


def e8_dequant(codes: torch.Tensor, beta_idx: torch.Tensor, betas: torch.Tensor, row_scale: torch.Tensor | None,
               generator: torch.Tensor, q: int, out_dtype: torch.dtype = torch.float32,
               block_n: int = 16, block_g: int = 4) -> torch.Tensor:
    """Dense ``W`` ``[N, K]`` from packed codes (``row_scale=None``: the unscaled ``betas * decode``)."""
    check_packed(codes, beta_idx, q)
    n, g_cols = codes.shape
    out = torch.empty((n, 8 * g_cols), device=codes.device, dtype=out_dtype)
    g2 = doubled_generator(generator, codes.device)
    betas32 = betas.to(device=codes.device, dtype=torch.float32).contiguous()
    scale = row_scale.to(device=codes.device, dtype=torch.float32).contiguous() if row_scale is not None else betas32
    grid = (triton.cdiv(n, block_n), triton.cdiv(g_cols, block_g))
    _e8_dequant_kernel[grid](codes.contiguous(), beta_idx.contiguous(), betas32, scale, g2, out, n, g_cols, int(q),
                             BLOCK_N=block_n, BLOCK_G=block_g, APPLY_SCALE=row_scale is not None)
    return out
