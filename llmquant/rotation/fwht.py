"""Normalized Hadamard matrices of order n = m * 2^k and the fast transform along the last dim.

Convention (row vectors, as in ``nn.Linear``): with ``H_n = (H_m (x) H_{2^k}) / sqrt(n)``,

    fwht(x)            = x @ H_n      (x: [..., n])
    fwht(x, transpose) = x @ H_n^T

``H_m`` is from :mod:`llmquant.rotation.constructions` (Paley, not symmetric in general) and ``H_{2^k}`` is
Sylvester (symmetric).  Index ``i`` of ``x`` is split as ``i = a * 2^k + b`` (a < m, b < 2^k); viewing
``x`` as ``X[..., a, b]`` gives ``x @ (A (x) B) = A^T X B``, so the transform is an O(n log n) butterfly
over ``b`` followed by a dense m x m matmul over ``a``.  ``H_n`` is orthogonal: ``H_n H_n^T = I``.
"""

from __future__ import annotations

import math

import torch

from llmquant.rotation.constructions import hadamard_order_matrix, split_order


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Orthonormal Hadamard matrix ``(H_m (x) H_{2^k}) / sqrt(n)`` of order ``n``, shape [n, n]."""
    m, k = split_order(n)
    h = torch.kron(hadamard_order_matrix(m).to(torch.float64), hadamard_order_matrix(2**k).to(torch.float64))
    return (h / math.sqrt(n)).to(dtype=dtype, device=device)


_SIGNS: dict = {}


def _signs(dtype: torch.dtype, device) -> torch.Tensor:
    """``[[+1], [-1]]`` in ``dtype`` on ``device`` (cached)."""
    key = (dtype, str(device))
    s = _SIGNS.get(key)
    if s is None:
        s = _SIGNS[key] = torch.tensor([[1.0], [-1.0]], dtype=dtype, device=device)
    return s


def _butterfly(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Sylvester transform ``x @ H_{2^k}`` along the last dim (length 2^k).

    Stage ``h``: with ``y = x`` viewed ``[..., n / 2h, 2, h]`` and ``a, b = y[..., 0, :], y[..., 1, :]``, the
    new ``x`` is ``[a + b, a - b]`` along the pair dim, computed as one ``addcmul(a, b, [[+1], [-1]])``: ``b * (+-1)``
    is exact and ``a + (-b)`` is IEEE ``a - b``, so every entry (signed zeros included) equals the two-op form."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    sign = _signs(x.dtype, x.device)
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        x = torch.addcmul(y[..., :1, :], y[..., 1:, :], sign).reshape(*lead, n)
        h *= 2
    return x


#: entries transformed at once by :func:`fwht`: a larger input is transformed a chunk of rows at a time into one
#: output, so its temporaries (one per butterfly stage, the matmul's operands) stay one chunk large
CHUNK_ELEMS = 1 << 18


def fwht(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``x @ H_n`` (or ``x @ H_n^T`` with ``transpose=True``) along the last dim, n = x.shape[-1].

    Floating dtypes only; the result has x's dtype and device.  float16/bfloat16 inputs are transformed
    in float32 and rounded once at the end.  Cost: n log2(2^k) adds for the butterfly plus one
    [m, m] x [m, 2^k] matmul per row.  Rows are independent: inputs over :data:`CHUNK_ELEMS` entries run
    ``max(1, CHUNK_ELEMS // n)`` rows at a time (the same per-row ops, so the same values as one call; tested).
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"fwht needs a floating tensor, got {x.dtype}; convert with x.float() first")
    n = x.shape[-1] if x.dim() else 1
    step = max(1, CHUNK_ELEMS // max(1, n))
    if x.dim() > 1 and x.numel() > step * n:
        x2 = x.reshape(-1, n)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        for r0 in range(0, x2.shape[0], step):
            out[r0:r0 + step] = _fwht_rows(x2[r0:r0 + step], transpose)
        return out.reshape(x.shape)
    return _fwht_rows(x, transpose)


def _fwht_rows(x: torch.Tensor, transpose: bool) -> torch.Tensor:
    """:func:`fwht` of ``x`` in one piece."""
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    n = x.shape[-1]
    m, k = split_order(n)
    p = 2**k
    y = _butterfly(x.reshape(*x.shape[:-1], m, p))
    if m > 1:
        hm = hadamard_order_matrix(m).to(dtype=x.dtype, device=x.device)
        # A^T X for x @ H, A X for x @ H^T (H_{2^k} is symmetric so only H_m is transposed), written as
        # (X^T A)^T so that all rows form one large GEMM instead of many tiny batched ones.
        y = torch.matmul(y.transpose(-1, -2), hm.T if transpose else hm).transpose(-1, -2)
    y = y.reshape(x.shape)
    return (y / math.sqrt(n)).to(out_dtype)
