"""GPTQ error feedback, generalized to blocks of ``width`` columns (``width = 8``: LDLQ for E8).

Math.  With ``H`` the (damped) input Hessian and ``U`` the upper Cholesky factor of
``H^{-1} = U^T U``, quantizing the column group ``g`` jointly (all rows at once) and
letting the not-yet-quantized columns ``r`` absorb the error is the OBS update

    W_r <- W_r - (W_g - Q_g) [H^{-1}_rem]_{gg}^{-1} [H^{-1}_rem]_{g r}
         = W_r - (W_g - Q_g) U_gg^{-1} U_{g r},

because the inverse Hessian restricted to the remaining columns is ``U[j:, j:]^T U[j:, j:]``.
``width = 1`` is plain GPTQ.  Updates are applied lazily per ``block_size`` columns.

``quant_cols(w_cols [N, width], cols LongTensor[width]) -> q_cols`` quantizes one group
(``cols`` are the original column indices, useful for per-group scalar parameters) and may
record codes on the side.  Shapes: ``W [N, K]``, ``H [K, K]``; ``K % width == 0``.

Damping: ``percdamp * mean(diag(H))`` is added to the diagonal.  When the damped Hessian (or its
inverse) is not numerically positive definite the Cholesky factorization is retried with the
damping raised tenfold (at least to 1e-3), up to :data:`MAX_DAMP_TRIES` attempts, so one
ill-conditioned Hessian does not stop a long run; ``stats`` receives the damping used and the
number of retries.  A Hessian with NaN / Inf, or one that stays indefinite, raises
:class:`~llmquant.errors.NumericsError`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmquant.errors import NumericsError

#: Cholesky attempts (the first with the configured damping, then tenfold more each time)
MAX_DAMP_TRIES = 7


def damped_inverse_factor(h: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor ``U`` of ``(H + d * mean(diag H) * I)^{-1} = U^T U`` (float64) with the
    smallest damping ``d`` of ``percdamp, max(10 percdamp, 1e-3), ...`` that factorizes; returns
    ``(U, d, retries)``.  Raises :class:`NumericsError` for a non-finite ``H`` or after
    :data:`MAX_DAMP_TRIES` failures."""
    if not bool(torch.isfinite(h).all()):
        raise NumericsError("GPTQ: the Hessian has NaN/Inf entries (non-finite calibration activations); "
                            "check model.dtype (float16 overflows: use float32 or bfloat16) and the model weights")
    k = h.shape[0]
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    mean = torch.mean(torch.diag(h))
    d = float(percdamp)
    for attempt in range(MAX_DAMP_TRIES):
        chol, info = torch.linalg.cholesky_ex(h + (d * mean) * eye)
        if int(info) == 0:
            u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0 and bool(torch.isfinite(u).all()):
                return u, d, attempt
        d = max(10.0 * d, 1e-3)
    raise NumericsError(
        f"GPTQ: the Hessian ({k}x{k}) is not positive definite even with damping {d / 10:g} x mean(diag) "
        f"after {MAX_DAMP_TRIES} attempts; use more calibration data (calibration.n_samples) or "
        "weights.algorithm: rtn"
    )


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quant_cols: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    width: int = 1,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
    stats: dict | None = None,
) -> torch.Tensor:
    """Return the dequantized weight ``Q [N, K]`` (float32) chosen with error feedback.

    ``stats`` (optional dict) receives ``percdamp`` (the damping used) and ``damping_retries``."""
    k = weight.shape[1]
    if k % width:
        raise ValueError(f"gptq_quantize: {k} input columns are not a multiple of the group width {width}")
    if block_size % width:
        raise ValueError(f"gptq_quantize: block_size {block_size} is not a multiple of width {width}")
    if act_order and width != 1:
        raise ValueError("gptq_quantize: act_order would split the column groups; use it with width 1 only")
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    cols = torch.arange(k, device=w.device)
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h, cols = w[:, perm], h[perm][:, perm], cols[perm]
    u, used, retries = damped_inverse_factor(h, percdamp)
    u = u.to(torch.float32)
    if stats is not None:
        stats.update(percdamp=used, damping_retries=retries)

    q = torch.zeros_like(w)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()
        e1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j in range(0, i2 - i1, width):
            j2 = j + width
            wg = w1[:, j:j2]
            qg = quant_cols(wg, cols[i1 + j : i1 + j2]).to(torch.float32)
            q[:, i1 + j : i1 + j2] = qg
            err = torch.linalg.solve_triangular(u1[j:j2, j:j2], wg - qg, upper=True, left=False)
            w1[:, j2:] -= err @ u1[j:j2, j2:]
            e1[:, j:j2] = err
        w[:, i2:] -= e1 @ u[i1:i2, i2:]
    if act_order:
        inv = torch.argsort(perm)
        q = q[:, inv]
    return q
