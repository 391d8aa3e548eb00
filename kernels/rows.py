"""Shared launcher step: the activation ``x [..., K]`` as a row-major matrix ``[M, K]``."""

from __future__ import annotations

import torch


def as_rows(x: torch.Tensor, k: int, what: str) -> tuple[torch.Tensor, torch.Size]:
    """``(x2 [M, K] with unit stride along K, leading shape of x)``; ``what`` names the packed weight tensor
    (for the error when ``x``'s last dim is not ``K``)."""
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the {what} describe K = 8 * {k // 8} = {k}")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2, x.shape[:-1]
