"""W4A16 fused decode-GEMM: ``y = x @ W^T (+ bias)`` with ``W`` held as packed E8 Voronoi codes.

Weight layout (``LatticeLinear``, see docs/ARCHITECTURE.md), ``W`` is ``[N, K]``, ``K % 8 == 0``:

* ``codes``    int32 ``[N, K/8]``: the 8 codes (each in ``[0, q)``, ``q <= 16``) of one 8-vector, code ``j``
  in bits ``[4j, 4j+4)``;
* ``beta_idx`` uint8 ``[N, K/8]`` into ``betas`` float32 ``[k]``;
* ``row_scale`` float32 ``[N]``;
* ``W[n, 8b:8b+8] = row_scale[n] * betas[beta_idx[n, b]] * decode(codes[n, b])``,
  ``decode(c) = c@G - q·Q_E8(c@G / q)``.

Design (for Hopper; correctness is checked under ``TRITON_INTERPRET=1``):

* every int32 code word is read from global memory exactly once per output tile, unpacked and
  Voronoi-decoded in registers (exactly, in doubled integer coordinates, see :mod:`.e8_triton`), scaled
  by its β in fp32, cast to the activation dtype and fed to ``tl.dot`` with fp32 accumulation; the row
  scale (and bias) are applied once per output element after the K loop, not per weight;
* **small M (M <= 16, decode)**: the GEMM is a GEMV bound by the weight stream (0.5 B/weight +
  1/8 B of β index per weight vs 2 B for fp16).  One 16-row dot tile (rows beyond M masked) and
  **split-K**: the grid is ``(N/BLOCK_N, SPLIT_K)`` so that small-N layers still put enough CTAs on the
  132 SMs; partial sums go to an fp32 ``[SPLIT_K, M, N]`` buffer that is reduced once (deterministic,
  no atomics);
* **large M (prefill)**: classic ``(M/BLOCK_M, N/BLOCK_N)`` tiling with a K loop, ``SPLIT_K = 1`` and
  the epilogue fused (row scale, bias, cast, store);
* on CUDA the configs are autotuned per shape bucket (next power of two of ``M``, ``N``, ``K``, dtype)
  with ``triton.testing.do_bench`` over :func:`gpu_candidates`, once per process; on the CPU interpreter
  (tests) a single fixed config is used, because autotuning needs a GPU timer.

The decode costs ~170 fp32 ops per 8 weights (64 FMAs for ``c@2G`` plus two exact D8 roundings); at
M=1 on an H100 that is the same order as the time to stream the 4-bit weights, so this kernel is
expected to be compute-limited at M=1 — it has not been measured (no GPU in the issue-5 session).
"""

from __future__ import annotations

import logging
from functools import partial

import torch
import triton
import triton.language as tl

from .e8_dequant import check_packed, doubled_generator
from .e8_triton import decode_words_doubled
from .rows import as_rows

log = logging.getLogger("llmquant.kernels")

#: Rows of the dot tile on the small-M path; tl.dot needs >= 16.
SMALL_M = 16


@triton.jit
def _decode_tile(codes_ptr, bidx_ptr, betas_ptr, g2_ptr, q, N, G_COLS, offs_n, offs_g,
                 BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """Decode a ``[BLOCK_N, 8*BLOCK_G]`` weight tile (without row scale) as fp32; masked blocks are 0."""
    mask = (offs_n[:, None] < N) & (offs_g[None, :] < G_COLS)
    idx = offs_n[:, None] * G_COLS + offs_g[None, :]
    words = tl.load(codes_ptr + idx, mask=mask, other=0)
    bidx = tl.load(bidx_ptr + idx, mask=mask, other=0).to(tl.int32)
    beta = tl.load(betas_ptr + bidx)
    beta = tl.where(mask, beta, 0.0)
    y2 = decode_words_doubled(tl.reshape(words, (BLOCK_N * BLOCK_G,)), g2_ptr, q)
    # beta * y in fp32 (y = y2/2 exactly), the same product the reference dequantizer forms
    w = (y2 * 0.5) * tl.reshape(beta, (BLOCK_N * BLOCK_G,))[:, None]
    return tl.reshape(w, (BLOCK_N, 8 * BLOCK_G))


@triton.jit
def _e8_decode_gemm_kernel(
    x_ptr, codes_ptr, bidx_ptr, betas_ptr, scale_ptr, bias_ptr, g2_ptr, out_ptr, part_ptr,
    M, N, K, q, stride_xm, stride_om,
    K_PER_SPLIT,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    BLOCK_G: tl.constexpr = BLOCK_K // 8
    G_COLS = K // 8

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    for k0 in range(k_begin, k_begin + K_PER_SPLIT, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        offs_g = k0 // 8 + tl.arange(0, BLOCK_G)
        w = _decode_tile(codes_ptr, bidx_ptr, betas_ptr, g2_ptr, q, N, G_COLS, offs_n, offs_g,
                         BLOCK_N, BLOCK_G)
        if IEEE:  # fp32 activations: no TF32 rounding of either operand
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)), out_dtype=tl.float32)

    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        scale = tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * scale[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=out_mask)


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two (1, 2, 4, ..., capped at 4096)."""
    return min(4096, 1 << max(0, (m - 1).bit_length()))


def choose_config(m: int, n: int, k: int, *, on_gpu: bool) -> dict:
    """Default tile config; fixed small tiles in the interpreter, shape buckets on GPU.

    GPU buckets (starting points for Hopper, refined by :func:`autotune_config`): small M uses 16-row
    tiles and split-K so that ``(N/BLOCK_N) * SPLIT_K`` reaches ~2x the SM count; large M 128x128 tiles.
    """
    if not on_gpu:
        # the interpreter pays per program and per op, not per element: few, large tiles
        block_k = 64 if k % 64 == 0 else (32 if k % 32 == 0 else 16)
        block_n = max(16, min(64, 1 << max(0, (n - 1).bit_length())))
        return {"BLOCK_M": SMALL_M, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": 1}
    if m <= SMALL_M:
        block_n, block_k = 64, 128
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        tiles = triton.cdiv(n, block_n)
        split = 1
        while tiles * split < 2 * sms and k // (block_k * split * 2) >= 4:
            split *= 2
        return {"BLOCK_M": SMALL_M, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split, "num_warps": 4}
    if m <= 128:
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "SPLIT_K": 1, "num_warps": 8}


def gpu_candidates(m: int) -> list[dict]:
    """Configs tried by :func:`autotune_config` for an M bucket (GPU only)."""
    if m <= SMALL_M:
        return [{"BLOCK_M": SMALL_M, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "num_warps": w}
                for bn in (32, 64, 128) for bk in (64, 128, 256) for sk in (1, 2, 4, 8) for w in (4, 8)]
    return [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 1, "num_warps": w}
            for bm in (32, 64, 128) for bn in (64, 128) for bk in (32, 64) for w in (4, 8)]


_TUNED: dict = {}


def autotune_config(x2: torch.Tensor, n: int, k: int, launch) -> dict:
    """Best of :func:`gpu_candidates` for this (M bucket, N, K, dtype), timed once with
    ``triton.testing.do_bench`` and cached for the process.  ``launch(cfg)`` runs the kernel."""
    key = (m_bucket(x2.shape[0]), n, k, x2.dtype, x2.device.index)
    if key not in _TUNED:
        from triton.testing import do_bench

        best, best_t = None, float("inf")
        for cfg in gpu_candidates(x2.shape[0]):
            try:
                t = do_bench(partial(launch, cfg), warmup=5, rep=20)
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory for this tile: skip it
                log.debug("decode-GEMM autotune: config %s failed: %s", cfg, exc)
                continue
            if t < best_t:
                best, best_t = cfg, t
        _TUNED[key] = best or choose_config(x2.shape[0], n, k, on_gpu=True)
    return _TUNED[key]


def e8_decode_gemm(
    x: torch.Tensor,
    codes: torch.Tensor,
    beta_idx: torch.Tensor,
    betas: torch.Tensor,
    row_scale: torch.Tensor,
    generator: torch.Tensor,
    q: int,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
    autotune: bool = True,
) -> torch.Tensor:
    """``x @ W^T + bias`` for the packed lattice weight above.

    ``x`` ``[..., K]`` (fp16 / bf16 / fp32; bf16 is not exact in the interpreter); returns ``[..., N]`` in
    ``x.dtype``.  ``generator`` is the lattice core's E8 generator matrix (rows = basis vectors).
    ``config`` (keys BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, optional num_warps) overrides the choice; else
    on CUDA with ``autotune`` the best candidate per shape bucket (:func:`autotune_config`), otherwise
    :func:`choose_config`.
    """
    check_packed(codes, beta_idx, q)
    n, g_cols = codes.shape
    k = 8 * g_cols
    x2, lead = as_rows(x, k, "codes")
    m = x2.shape[0]
    dev = x.device
    g2 = doubled_generator(generator, dev)
    codes, beta_idx = codes.contiguous(), beta_idx.contiguous()
    betas32 = betas.to(device=dev, dtype=torch.float32).contiguous()
    scale32 = row_scale.to(device=dev, dtype=torch.float32).contiguous()

    def launch(cfg: dict) -> torch.Tensor:
        bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SPLIT_K"]
        if bk % 8 or bk & (bk - 1) or bk < 16:
            raise ValueError(f"BLOCK_K = {bk} must be a power of two >= 16")
        k_per_split = triton.cdiv(triton.cdiv(k, split), bk) * bk
        out = torch.empty((m, n), device=dev, dtype=x.dtype)
        part = torch.empty((split, m, n), device=dev, dtype=torch.float32) if split > 1 else out
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn), split)
        extra = {"num_warps": cfg["num_warps"]} if "num_warps" in cfg else {}
        _e8_decode_gemm_kernel[grid](
            x2, codes, beta_idx, betas32, scale32, bias if bias is not None else scale32, g2, out, part,
            m, n, k, int(q), x2.stride(0), out.stride(0), k_per_split,
            HAS_BIAS=bias is not None, SPLIT_K=split, IEEE=x.dtype == torch.float32,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **extra,
        )
        if split > 1:
            acc = part.sum(0) * scale32
            if bias is not None:
                acc = acc + bias.to(torch.float32)
            out = acc.to(x.dtype)
        return out

    if config is not None:
        cfg = dict(config)
    elif dev.type == "cuda" and autotune and m:
        cfg = autotune_config(x2, n, k, launch)
    else:
        cfg = choose_config(m, n, k, on_gpu=dev.type == "cuda")
    return launch(cfg).reshape(*lead, n)
