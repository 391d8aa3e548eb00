"""Input second-moment ("Hessian") accumulation for GPTQ/LDLQ.

For a linear ``y = x W^T`` with inputs ``x_t in R^K`` the layer-wise objective
``sum_t ||(W - Q) x_t||^2 = tr((W - Q) H (W - Q)^T)`` has ``H = sum_t x_t x_t^T``.  We keep
the mean ``H / T`` (the scale does not change GPTQ; damping is relative to ``mean(diag H)``).
"""

from __future__ import annotations

import torch


class HessianAccumulator:
    """Running ``H = (1/T) sum_t x_t x_t^T`` over calls of :meth:`add` (``x [..., K]``), float32."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.in_features = in_features
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"HessianAccumulator: input has {x.shape[-1]} features, expected {self.in_features}")
        x = x.reshape(-1, self.in_features).to(self.sum.device, torch.float32)
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.count == 0:
            raise RuntimeError("HessianAccumulator: no inputs were recorded (was the layer called?)")
        return self.sum / self.count


def relative_error_from_hessian(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``sqrt(tr(E H E^T) / tr(W H W^T))`` with ``E = W - Q``: relative output error (RMS) on the calibration inputs."""
    w = w.float()
    e = w - q.float()
    h = h.float()
    num = ((e @ h) * e).sum().double()
    den = ((w @ h) * w).sum().double().clamp_min(1e-30)
    return float(num / den) ** 0.5
