"""Outlier measures reported by ``llmquant inspect`` (before/after rotation).

* **Weights** -- for each decoder linear (q, k, v, o, gate, up, down; for a rotated down_proj the inner
  linear with the online rotation fused in) ``max_ij |W_ij| / sqrt(mean_ij W_ij^2)``; the reported value is
  the mean over all those linears of all layers.  For iid Gaussian entries this is about
  ``sqrt(2 ln(#entries))`` (~ 5 for 576 x 1536); outlier channels push it up.
* **Activations** -- the input ``X`` (all entries of the [batch, seq, features] tensor, pooled) of each of
  the four distinct linear inputs per layer (q: attention input, o: attention output, gate: MLP input,
  down: MLP hidden after the online rotation when present) has kurtosis
  ``E[(x - mu)^4] / E[(x - mu)^2]^2`` (3 for a Gaussian, large with outlier channels); the reported value is
  the mean over roles and layers, measured with forward pre-hooks on the calibration batch.
* **Logits** -- ``relative_logit_error = ||L_rot - L||_F / ||L||_F`` over the calibration batch.
"""

from __future__ import annotations

import torch

from llmquant.models.adapters import get_adapter
from llmquant.rotation.online import InputRotatedLinear

WEIGHT_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
ACTIVATION_ROLES = ("q", "o", "gate", "down")


def _inner(module):
    return module.linear if isinstance(module, InputRotatedLinear) else module


def weight_max_over_rms(model) -> float:
    """Mean over decoder linears of ``max|W| / rms(W)`` (see module docstring)."""
    ad = get_adapter(model)
    vals = []
    for layer in ad.layers(model):
        for r in WEIGHT_ROLES:
            w = _inner(ad.get(layer, r)).weight.detach().to(torch.float64)
            vals.append((w.abs().max() / w.pow(2).mean().sqrt()).item())
    return sum(vals) / len(vals)


def kurtosis(x: torch.Tensor) -> float:
    """``E[(x - mu)^4] / E[(x - mu)^2]^2`` over all entries of ``x`` (float64)."""
    x = x.detach().to(torch.float64).flatten()
    c = x - x.mean()
    return (c.pow(4).mean() / c.pow(2).mean().pow(2)).item()


@torch.no_grad()
def activation_stats(model, ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """``({"kurtosis": mean, "per_role": {role: mean over layers}}, logits)`` for one forward of ``ids``."""
    ad = get_adapter(model)
    per_role: dict[str, list[float]] = {r: [] for r in ACTIVATION_ROLES}
    handles = []
    for layer in ad.layers(model):
        for r in ACTIVATION_ROLES:
            def hook(_mod, args, _r=r):
                per_role[_r].append(kurtosis(args[0]))

            handles.append(_inner(ad.get(layer, r)).register_forward_pre_hook(hook))
    try:
        dev = next(model.parameters()).device
        logits = model(ids.to(dev)).logits.detach().to(torch.float64).cpu()
    finally:
        for h in handles:
            h.remove()
    means = {r: sum(v) / len(v) for r, v in per_role.items()}
    return {"kurtosis": sum(means.values()) / len(means), "per_role": means}, logits


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref||_F / ||ref||_F`` in float64."""
    a, ref = a.to(torch.float64), ref.to(torch.float64)
    return ((a - ref).norm() / ref.norm()).item()
