"""Shared helpers for tests/test_kernels_*.py (not a test module: the name does not start with ``test_``).

Interpreter policy: Triton reads ``TRITON_INTERPRET`` when it decorates ``@triton.jit`` functions,
including its own standard library (``tl.sum``, ``tl.zeros``, ...) at ``import triton``.  So on a machine
without CUDA the variable must be set *before anything imports triton* (transformers does).  The
reliable place is the top of ``tests/conftest.py`` (or CI's environment); importing this helper
(:func:`ensure_interpreter`) additionally sets it when triton is not imported yet (e.g. running the
kernel test files on their own).  If triton was already imported without it, the
kernel tests skip with a message saying how to enable them.  Setting the variable for the whole
session does not change other tests: with ``backend="auto"`` the dispatcher never uses the
interpreter on CPU.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch


def ensure_interpreter() -> None:
    """Set ``TRITON_INTERPRET=1`` when there is no CUDA and triton has not been imported yet."""
    if "TRITON_INTERPRET" not in os.environ and "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def kernel_device() -> torch.device:
    """The device the kernel tests run on (CUDA, or the CPU interpreter), or skip with the reason."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return torch.device("cuda")
    from llmquant.kernels.availability import interpreter_active, interpreter_enabled

    if not interpreter_enabled():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set: export TRITON_INTERPRET=1 before running pytest")
    if not interpreter_active():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: set it at the top of "
                    "tests/conftest.py or in the environment")
    return torch.device("cpu")


def random_packed(n: int, k: int, q: int, n_betas: int, seed: int):
    """Random unpacked codes ``[n, k/8, 8]`` (int64) and β indices ``[n, k/8]`` (uint8)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, q, (n, k // 8, 8), generator=g)
    bidx = torch.randint(0, n_betas, (n, k // 8), generator=g).to(torch.uint8)
    return codes, bidx


def within_low_precision_bound(out: torch.Tensor, exact: torch.Tensor, low_ref: torch.Tensor,
                               atol: float) -> tuple[bool, float, float]:
    """The GEMM criterion: ``|out - exact| <= 2 |low_ref - exact| + atol`` in max norm.

    ``exact`` is the fp32/fp64 reference, ``low_ref`` the same reference computed in the low dtype.
    Returns (ok, kernel error, reference error).
    """
    err = (out.double() - exact.double()).abs().max().item()
    ref_err = (low_ref.double() - exact.double()).abs().max().item()
    return err <= 2 * ref_err + atol, err, ref_err


# Importing this helper (which the kernel test modules do before importing llmquant) sets the variable.
ensure_interpreter()
