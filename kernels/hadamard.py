"""Fast Hadamard transform kernel for n = m * 2^k: ``y = (x * s) @ H_n`` (or ``x @ H_n^T * s``).

Spec: :func:`llmquant.rotation.fwht.fwht` / :class:`llmquant.rotation.random_hadamard.HadamardRotation`,
``H_n = (H_m ⊗ H_{2^k}) / sqrt(n)`` with the ±1 factors from :mod:`llmquant.rotation.constructions`.

Design: Sylvester matrices factor, ``H_{2^k} = H_{2^{k1}} ⊗ H_{2^{k2}}``, so
``H_m ⊗ H_{2^k} = A ⊗ B`` with ``A = H_m ⊗ H_{2^{k1}}`` (n1 x n1) and ``B = H_{2^{k2}}`` (n2 x n2),
``n1 ≈ n2 ≈ sqrt(n)`` after padding to powers of two.  Splitting index ``i = a*n2 + b`` and viewing a row as ``X[a, b]``:

    x @ (A ⊗ B)   = A^T X B            x @ (A ⊗ B)^T = A X B       (B is symmetric)

i.e. two small ``tl.dot``s per token row (n = 4096: 64x64 @ 64x64 twice; n = 14336 = 28*2^9: A is
112x112 padded to 128, B 128x128), on tensor cores, instead of log2(n) butterfly passes through memory.
The ±1 factor matrices (exact in fp16) are built on the host from the rotation core's constructions
and cached per (n, device); dimensions are zero-padded to powers of two >= 16 (``tl.dot`` minimum).

Precision: fp32 inputs use ``input_precision="ieee"`` (no TF32) for both dots; fp16 inputs run both
dots in fp16 with fp32 accumulation, the intermediate ``X B`` rounded once to fp16 (sums of ±x, so
the only rounding beyond the reference's).  Cost per row: ``2 n (n1 + n2)`` flops vs ``n log2 n`` adds
for the butterfly, on tensor cores (~n1/log2(n) times more flops, far more throughput).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_FACTORS: dict = {}


def _pow2_at_least(v: int, floor: int = 16) -> int:
    return max(floor, 1 << (max(1, v) - 1).bit_length())


def hadamard_factors(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(A, B, n1, n2)``: ±1 fp32 factors with ``A ⊗ B == H_m ⊗ H_{2^k}`` (unnormalized), zero-padded.

    ``A`` is ``[P1, P1]`` holding ``H_m ⊗ H_{2^{k1}}`` (n1 x n1) in its top-left corner, ``B`` likewise
    ``[P2, P2]`` for ``H_{2^{k2}}``; ``k2`` minimizes the larger padded size.  Cached per (n, device).
    """
    key = (int(n), str(device))
    if key not in _FACTORS:
        from llmquant.rotation.constructions import hadamard_order_matrix, split_order

        m, k = split_order(int(n))
        # balance the padded tile sizes: n = 14336 = 28 * 2^9 -> A = 28 * 2^2 (pad 128), B = 2^7
        k2 = min(range(k + 1), key=lambda j: (max(_pow2_at_least(m * 2 ** (k - j)), _pow2_at_least(2**j)),
                                              _pow2_at_least(m * 2 ** (k - j)) * _pow2_at_least(2**j)))
        k1 = k - k2
        a = torch.kron(hadamard_order_matrix(m), hadamard_order_matrix(2**k1))
        b = hadamard_order_matrix(2**k2)
        n1, n2 = a.shape[0], b.shape[0]
        p1, p2 = _pow2_at_least(n1), _pow2_at_least(n2)
        ap = torch.zeros(p1, p1, dtype=torch.float32)
        bp = torch.zeros(p2, p2, dtype=torch.float32)
        ap[:n1, :n1] = a.to(torch.float32)
        bp[:n2, :n2] = b.to(torch.float32)
        _FACTORS[key] = (ap.to(device), bp.to(device), n1, n2)
    return _FACTORS[key]


@triton.jit
def _hadamard_kernel(x_ptr, s_ptr, a_ptr, b_ptr, y_ptr, stride_x, stride_y, n1, n2, norm,
                     HAS_SIGNS: tl.constexpr, TRANSPOSE: tl.constexpr, IEEE: tl.constexpr,
                     P1: tl.constexpr, P2: tl.constexpr):
    row = tl.program_id(0)
    ia = tl.arange(0, P1)
    ib = tl.arange(0, P2)
    mask = (ia[:, None] < n1) & (ib[None, :] < n2)
    offs = ia[:, None] * n2 + ib[None, :]
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_SIGNS and not TRANSPOSE:
        x = x * tl.load(s_ptr + offs, mask=mask, other=0.0).to(x.dtype)
    b = tl.load(b_ptr + ib[:, None] * P2 + ib[None, :])
    if TRANSPOSE:
        a = tl.load(a_ptr + ia[:, None] * P1 + ia[None, :])          # A
    else:
        a = tl.load(a_ptr + ia[None, :] * P1 + ia[:, None])          # A^T
    if IEEE:
        t = tl.dot(x, b, input_precision="ieee")
        y = tl.dot(a, t, input_precision="ieee")
    else:
        t = tl.dot(x, b.to(x.dtype), out_dtype=tl.float32).to(x.dtype)
        y = tl.dot(a.to(x.dtype), t, out_dtype=tl.float32)
    y = y * norm
    if HAS_SIGNS and TRANSPOSE:
        y = y * tl.load(s_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor | None = None, transpose: bool = False) -> torch.Tensor:
    """``(x * signs) @ H_n`` (``transpose=False``) or ``(x @ H_n^T) * signs`` along the last dim.

    ``x`` ``[..., n]`` fp32 or fp16 (bf16 runs on GPU; the interpreter's bf16 ``tl.dot`` is wrong);
    ``signs`` ``[n]`` ±1 or None.  Same shape and dtype as ``x``.
    """
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"hadamard_transform needs fp32/fp16/bf16 input, got {x.dtype}")
    n = x.shape[-1]
    a, b, n1, n2 = hadamard_factors(n, x.device)
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty_like(x2)
    if signs is not None:
        if signs.shape != (n,):
            raise ValueError(f"signs must have shape ({n},), got {tuple(signs.shape)}")
        signs = signs.to(device=x.device, dtype=torch.float32).contiguous()
    if x2.shape[0]:
        _hadamard_kernel[(x2.shape[0],)](
            x2, signs if signs is not None else a, a, b, y, x2.stride(0), y.stride(0), n1, n2, 1.0 / math.sqrt(n),
            HAS_SIGNS=signs is not None, TRANSPOSE=bool(transpose), IEEE=x.dtype == torch.float32,
            P1=a.shape[0], P2=b.shape[0],
        )
    return y.reshape(x.shape)
