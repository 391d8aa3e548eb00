"""Online rotations as modules inside the model (kept by ``state_dict``, recorded in the RotationPlan).

* :class:`InputRotatedLinear` wraps ``mlp.down_proj``: ``y = linear(rotation(x))`` where ``linear.weight``
  already has the rotation fused on its input side (``W' = W Q``), so ``y = x Q Q^T W^T = x W^T``.  The
  quantization pipeline swaps ``.linear`` for a quantized layer and quantizes the rotated activation.
* :class:`OutputRotated` wraps a module whose output lives in the unrotated residual basis and rotates it
  (``y = f(x) @ Q``); used for Gemma3's post-attention / post-feedforward norms (see
  :mod:`llmquant.models.rotate`).

Both call ``rotation.apply``; with ``rotation.backend`` "triton"/"auto" (set by
:func:`llmquant.quant.set_backend`) that is the Triton fast Hadamard kernel where it can run.
"""

from __future__ import annotations

import torch
from torch import nn

from llmquant.rotation.random_hadamard import HadamardRotation


class InputRotatedLinear(nn.Module):
    """``x [..., in] -> linear(rotation.apply(x)) [..., out]``.

    Attributes ``rotation`` (HadamardRotation of size in_features) and ``linear`` (the nn.Linear, or a
    quantized replacement, with the rotation fused into its input columns).
    """

    def __init__(self, rotation: HadamardRotation, linear: nn.Module):
        super().__init__()
        in_features = getattr(linear, "in_features", rotation.n)
        if in_features != rotation.n:
            raise ValueError(f"rotation size {rotation.n} != linear in_features {in_features}")
        self.rotation = rotation
        self.linear = linear

    @property
    def in_features(self) -> int:
        return self.rotation.n

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The inner layer's weight (rotation fused in), for code that reads ``down_proj.weight``."""
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rotation.apply(x))


class OutputRotated(nn.Module):
    """``x -> rotation.apply(inner(x))``: rotate a module's output into the rotated residual basis."""

    def __init__(self, inner: nn.Module, rotation: HadamardRotation):
        super().__init__()
        self.inner = inner
        self.rotation = rotation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation.apply(self.inner(x))
