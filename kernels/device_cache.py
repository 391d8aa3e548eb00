"""Constant tensors the kernel launchers need on the GPU, copied once per owner and device.

``device_copy(owner, name, tensor, device)``: ``tensor`` as a contiguous fp32 copy on ``device`` (a fresh
allocation, so 64-byte aligned), cached in ``owner.__dict__[name]`` per device: built at the first call, outside
any CUDA-graph capture, and reused afterwards with no host work per call.
"""

from __future__ import annotations

import torch


def device_copy(owner, name: str, tensor: torch.Tensor, device: torch.device, build=None) -> torch.Tensor:
    """``tensor`` (fp32, contiguous, freshly allocated) on ``device``, cached on ``owner`` under ``name``;
    ``build(tensor, device)``, when given, makes the copy instead (e.g. a table with a stricter alignment)."""
    cache = owner.__dict__.setdefault(name, {})
    key = str(device)
    if key not in cache:
        cache[key] = (build(tensor, device) if build is not None
                      else tensor.detach().to(device=device, dtype=torch.float32).contiguous().clone())
    return cache[key]
