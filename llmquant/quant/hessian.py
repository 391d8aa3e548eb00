"""Input second-moment ("Hessian") accumulation for GPTQ/LDLQ.

For a linear ``y = x W^T`` with inputs ``x_t in R^K`` the layer-wise objective
``sum_t ||(W - Q) x_t||^2 = tr((W - Q) H (W - Q)^T)`` has ``H = sum_t x_t x_t^T``.  We keep
the mean ``H / T`` (the scale does not change GPTQ; damping is relative to ``mean(diag H)``).
"""

from __future__ import annotations

import torch


class HessianAccumulator:
    """Running ``H = (1/T) sum_t x_t x_t^T`` (float32) and mean ``mu = (1/T) sum_t x_t`` (float64 sum)
    over calls of :meth:`add` (``x [..., K]``).

    ``covariance() = H - mu mu^T`` is the objective when the layer's bias absorbs the mean error
    (bias correction, :func:`llmquant.quant.weights.quantize_linear`): with ``E = W - Q`` and
    ``b' = b + E mu``, the output error is ``E (x - mu)`` and its mean square ``tr(E C E^T)``.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.in_features = in_features
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.first = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HessianAccumulator: input has {x.shape[-1]} features, expected {self.in_features}")
        x = x.reshape(-1, self.in_features).to(self.sum.device, torch.float32)
        self.sum.addmm_(x.T, x)
        self.first += x.sum(dim=0, dtype=torch.float64)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("HessianAccumulator: no inputs were recorded (was the layer called?)")
        return self.sum / self.count

    def mean(self) -> torch.Tensor:
        """``mu [K]`` float32, the mean input."""
        if self.count == 0:
            raise RuntimeError("HessianAccumulator: no inputs were recorded (was the layer called?)")
        return (self.first / self.count).to(torch.float32)

    def covariance(self) -> torch.Tensor:
        """``C = H - mu mu^T`` ``[K, K]`` float32 (symmetric positive semi-definite up to rounding)."""
        mu = self.first / self.count
        c = self.hessian().double() - torch.outer(mu, mu)
        return ((c + c.T) / 2).to(torch.float32)


def relative_error_from_hessian(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor,
                                h_error: torch.Tensor | None = None) -> float:
    """``sqrt(tr(E H_e E^T) / tr(W H W^T))`` with ``E = W - Q``: relative output error (RMS) on the calibration
    inputs.  ``h_error`` (default ``h``): the second moment the error sees, e.g. the covariance when a bias
    correction removes the mean error."""
    w = w.float()
    e = w - q.float()
    h = h.float()
    he = h if h_error is None else h_error.float()
    num = ((e @ he) * e).sum().double()
    den = ((w @ h) * w).sum().double().clamp_min(1e-30)
    return float(num.clamp_min(0) / den) ** 0.5
