"""Triton fast Hadamard transform against the rotation core (``hadamard_matrix`` / ``fwht``)."""

from __future__ import annotations

import pytest
import torch
from _kernels_support import kernel_device, within_low_precision_bound

from llmquant.rotation.constructions import hadamard_order_matrix, split_order
from llmquant.rotation.fwht import fwht, hadamard_matrix
from llmquant.rotation.random_hadamard import random_signs

pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _times_h(x: torch.Tensor, n: int, transpose: bool) -> torch.Tensor:
    """``x @ H_n`` (or ``H_n^T``) in fp64: the dense ``hadamard_matrix`` for small n, else its definition
    ``(H_m ⊗ H_{2^k}) / sqrt(n)`` applied as ``H_m^T X H_{2^k}`` (a dense 14336^2 fp64 matrix is 1.6 GB)."""
    if n <= 1024:
        h = hadamard_matrix(n)
        return x @ (h.T if transpose else h)
    m, k = split_order(n)
    a = hadamard_order_matrix(m).double()
    b = hadamard_order_matrix(2**k).double()
    xx = x.reshape(*x.shape[:-1], m, 2**k)
    y = (a if transpose else a.T) @ xx @ b
    return y.reshape(x.shape) / n**0.5


# powers of two, Paley factors (12 = Paley I, 36 = Paley II) and the Llama MLP width 14336 = 28 * 2^9
@pytest.mark.parametrize("n", [8, 64, 96, 576, 4096, 14336])
@pytest.mark.parametrize("transpose", [False, True])
def test_fp32_matches_hadamard_matrix(dev, n, transpose):
    from llmquant.kernels.hadamard import hadamard_transform

    x = torch.randn(2, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    s = random_signs(n, seed=5)
    exact = _times_h(x, n, True) * s if transpose else _times_h(x * s, n, False)
    y = hadamard_transform(x.float().to(dev), s.to(dev), transpose=transpose)
    assert y.dtype == torch.float32 and y.shape == x.shape
    # fp32 sums of n terms of size |x|/sqrt(n): a few ulps of the output scale
    assert (y.cpu().double() - exact).abs().max().item() < 5e-6


@pytest.mark.parametrize("n", [64, 1024])
def test_fp16_within_twice_the_reference_error(dev, n):
    from llmquant.kernels.hadamard import hadamard_transform

    x = torch.randn(4, n, generator=torch.Generator().manual_seed(1))
    exact = fwht(x.double())
    low = fwht(x.half())  # the rotation core's transform computed in fp16
    y = hadamard_transform(x.half().to(dev))
    assert y.dtype == torch.float16
    ok, err, ref_err = within_low_precision_bound(y.cpu(), exact, low, atol=1e-3)
    assert ok, f"kernel error {err:.3g} > 2 x fp16 reference error {ref_err:.3g} + atol"


def test_round_trip_and_leading_dims(dev):
    from llmquant.kernels.hadamard import hadamard_transform

    x = torch.randn(2, 3, 192, generator=torch.Generator().manual_seed(2)).to(dev)
    s = random_signs(192, seed=9).to(dev)
    back = hadamard_transform(hadamard_transform(x, s), s, transpose=True)
    assert back.shape == x.shape
    assert (back - x).abs().max().item() < 1e-5


def test_bad_input_is_named(dev):
    from llmquant.kernels.hadamard import hadamard_transform

    with pytest.raises(TypeError, match="fp32/fp16/bf16"):
        hadamard_transform(torch.zeros(2, 8, dtype=torch.int32, device=dev))
    with pytest.raises(ValueError, match="signs must have shape"):
        hadamard_transform(torch.zeros(2, 8, device=dev), torch.ones(4, device=dev))
    with pytest.raises(ValueError, match="no Hadamard construction"):
        hadamard_transform(torch.zeros(2, 188, device=dev))  # 4 * 47: no Williamson matrices
