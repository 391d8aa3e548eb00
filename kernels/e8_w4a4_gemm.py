"""W4A4 lattice GEMM: both operands as packed E8 codes, ``y = (x_hat @ W^T) (+ bias)``.

Operands (the same layout for both, see :mod:`.e8_decode_gemm` and :mod:`.e8_encode`):

* activations: ``xc`` int32 ``[M, K/8]``, ``xb`` uint8 ``[M, K/8]``, ``xs`` fp32 ``[M]``, ``x_betas`` ``[kx]``,
  ``x_hat[m, 8b:8b+8] = xs[m] * x_betas[xb[m,b]] * decode_qx(xc[m,b])``;
* weights: ``wc``, ``wb``, ``row_scale`` ``[N]``, ``w_betas`` ``[kw]``, as ``LatticeLinear``.

So ``y[m, n] = xs[m] * row_scale[n] * Σ_b βx[m,b] βw[n,b] <Y[m,b], V[n,b]> / 4`` with ``Y, V`` the
*doubled* decoded E8 points — small integers (``|2 y_i| <= 2q <= 32``, inside the Voronoi cell of qE8),
so they fit int8 exactly.

Two modes (``mode``), both decoding the two code tiles in registers (each int32 word read once per tile):

* ``"fp16"``: ``β·y`` formed in fp32 and rounded to fp16 per element, one fp16 ``tl.dot`` per K tile
  with fp32 accumulation.  One tensor-core MMA per tile; the per-element fp16 rounding of ``β·y``
  (relative 2^-11) is the only error beyond the fp32 sum.
* ``"int8"``: exact.  The per-8-vector β's differ inside a K tile, so they cannot be pulled out of an
  integer dot; instead the tile is split by β pair: for every ``(i, j)`` in ``kx × kw`` an int8 dot
  of ``Y·[xb == i]`` with ``V·[wb == j]`` (int32 accumulation, exact) is scaled by ``βx_i βw_j / 4``
  in fp32.  Cost: ``kx·kw`` int8 MMAs per tile, at 2x the fp16 MMA rate; it beats the fp16 mode
  only for ``kx·kw <= 2`` (e.g. a single activation β and two weight β's), and it is exact.

Trade-off: on Hopper both modes spend most of their time decoding (~170 CUDA-core ops per 8-vector,
done ``N/BLOCK_N`` times for the activations and ``M/BLOCK_M`` times for the weights); at large M the
better schedule is decode-once to an int8/fp16 buffer then the MMA loop (``e8_dequant`` does the
weight half).  Not measured: there is no GPU in this session.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .e8_dequant import check_packed, doubled_generator
from .e8_triton import decode_words_doubled

MODES = ("fp16", "int8")


@triton.jit
def _decode_doubled_tile(codes_ptr, bidx_ptr, offs_r, ROWS, G_COLS, offs_g, g2_ptr, q,
                         BLOCK: tl.constexpr, BLOCK_G: tl.constexpr):
    """Doubled decoded points ``[BLOCK, 8*BLOCK_G]`` (fp32 integers) and β indices ``[BLOCK, 8*BLOCK_G]``."""
    mask = (offs_r[:, None] < ROWS) & (offs_g[None, :] < G_COLS)
    idx = offs_r[:, None] * G_COLS + offs_g[None, :]
    words = tl.load(codes_ptr + idx, mask=mask, other=0)
    bidx = tl.load(bidx_ptr + idx, mask=mask, other=0).to(tl.int32)
    y2 = decode_words_doubled(tl.reshape(words, (BLOCK * BLOCK_G,)), g2_ptr, q)
    # masked blocks decode code 0 to the origin; zero them anyway so a padded tail never contributes
    y2 = y2 * tl.reshape(mask, (BLOCK * BLOCK_G,))[:, None].to(tl.float32)
    bfull = tl.reshape(bidx, (BLOCK * BLOCK_G,))[:, None] + tl.zeros((1, 8), tl.int32)
    return tl.reshape(y2, (BLOCK, 8 * BLOCK_G)), tl.reshape(bfull, (BLOCK, 8 * BLOCK_G))


@triton.jit
def _w4a4_kernel(xc_ptr, xb_ptr, xs_ptr, xbetas_ptr, wc_ptr, wb_ptr, ws_ptr, wbetas_ptr, bias_ptr,
                 gx2_ptr, out_ptr, M, N, K, qx, qw, stride_om,
                 HAS_BIAS: tl.constexpr, INT8: tl.constexpr, KX: tl.constexpr, KW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    BLOCK_G: tl.constexpr = BLOCK_K // 8
    G_COLS = K // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_g = k0 // 8 + tl.arange(0, BLOCK_G)
        xy, xbi = _decode_doubled_tile(xc_ptr, xb_ptr, offs_m, M, G_COLS, offs_g, gx2_ptr, qx, BLOCK_M, BLOCK_G)
        wy, wbi = _decode_doubled_tile(wc_ptr, wb_ptr, offs_n, N, G_COLS, offs_g, gx2_ptr, qw, BLOCK_N, BLOCK_G)
        if INT8:
            for i in tl.static_range(KX):
                xi = tl.where(xbi == i, xy, 0.0).to(tl.int8)
                bxi = tl.load(xbetas_ptr + i)
                for jj in tl.static_range(KW):
                    wj = tl.where(wbi == jj, wy, 0.0).to(tl.int8)
                    part = tl.dot(xi, tl.trans(wj), out_dtype=tl.int32)
                    acc += (bxi * tl.load(wbetas_ptr + jj) * 0.25) * part.to(tl.float32)
        else:
            xv = (tl.load(xbetas_ptr + xbi) * (xy * 0.5)).to(tl.float16)
            wv = (tl.load(wbetas_ptr + wbi) * (wy * 0.5)).to(tl.float16)
            acc += tl.dot(xv, tl.trans(wv), out_dtype=tl.float32)
    xs = tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0)
    ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0)
    acc = acc * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def e8_w4a4_gemm(
    xc: torch.Tensor, xb: torch.Tensor, xs: torch.Tensor, x_betas: torch.Tensor, qx: int,
    wc: torch.Tensor, wb: torch.Tensor, row_scale: torch.Tensor, w_betas: torch.Tensor, qw: int,
    generator: torch.Tensor, bias: torch.Tensor | None = None, mode: str = "fp16",
    out_dtype: torch.dtype = torch.float16, config: dict | None = None,
) -> torch.Tensor:
    """``[M, N]`` output of the lattice-coded activations times the lattice-coded weight (see module doc)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_packed(wc, wb, qw)
    check_packed(xc, xb, qx)
    m, gx = xc.shape
    n, gw = wc.shape
    if gx != gw:
        raise ValueError(f"activation codes have K/8 = {gx} columns but the weight codes {gw}")
    if xs.numel() != m or row_scale.numel() != n:
        raise ValueError(f"scales: need xs [{m}] and row_scale [{n}], got {tuple(xs.shape)} / {tuple(row_scale.shape)}")
    cfg = dict(config or ({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64} if xc.device.type != "cuda"
                          else {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}))
    dev = xc.device
    g2 = doubled_generator(generator, dev)
    out = torch.empty((m, n), device=dev, dtype=out_dtype)
    f32 = {"device": dev, "dtype": torch.float32}
    xbet, wbet = x_betas.to(**f32).contiguous(), w_betas.to(**f32).contiguous()
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _w4a4_kernel[grid](
        xc.contiguous(), xb.contiguous(), xs.to(**f32).contiguous(), xbet,
        wc.contiguous(), wb.contiguous(), row_scale.to(**f32).contiguous(), wbet,
        bias if bias is not None else xbet, g2, out, m, n, 8 * gx, int(qx), int(qw), out.stride(0),
        HAS_BIAS=bias is not None, INT8=mode == "int8", KX=xbet.numel(), KW=wbet.numel(),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
    )
    return out
