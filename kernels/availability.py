"""Can a Triton kernel run on this tensor's device?  Flags only: nothing is imported at module import.

Two ways a kernel can run:

* **CUDA**: ``triton`` importable and the tensor lives on a CUDA device (compiled kernels).
* **Interpreter**: ``triton`` importable, the tensor is on the CPU and ``TRITON_INTERPRET=1`` was set
  *before triton was first imported* (Triton decides compiled vs interpreted when ``@triton.jit``
  decorates a function, its own ``tl.sum``/``tl.zeros``... included, see :func:`interpreter_active`).  The interpreter is a correctness tool (the CPU tests); it is ~1000x slower
  than the PyTorch reference, so the ``auto`` backend never chooses it, only an explicit ``triton``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """True when the ``triton`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value in the environment (read on every call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernel_device_ok(device: torch.device | str, *, allow_interpreter: bool = True) -> bool:
    """True when a Triton kernel can run on tensors of ``device``.

    CUDA needs ``triton`` importable and ``torch.cuda.is_available()``; CPU needs ``triton`` importable and
    the interpreter enabled, and ``allow_interpreter`` (the ``auto`` backend passes False).
    """
    if not triton_importable():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return allow_interpreter and interpreter_enabled() and interpreter_active()
    return False


def describe() -> dict:
    """A small JSON-able summary used by ``llmquant bench kernels`` and the dispatch log line."""
    cuda = torch.cuda.is_available()
    return {
        "triton_importable": triton_importable(),
        "triton_interpret": interpreter_enabled(),
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def interpreter_active() -> bool:
    """True when Triton's own language library was decorated in interpreter mode.

    Triton builds ``tl.sum``, ``tl.zeros``, ... with ``@triton.jit`` at ``import triton``; kernels run on
    the CPU interpreter only if ``TRITON_INTERPRET=1`` was set before that import.  Imports triton.
    """
    if not triton_importable():
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)
