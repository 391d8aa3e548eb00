"""Bias correction: the mean-centred GPTQ/LDLQ objective and the bias that absorbs the mean error.

The case it exists for (measured on Gemma-3-270M): inputs whose energy is mostly a constant vector that the
weight nearly annihilates.  Built here synthetically: x_t = a * u + r_t, W u = 0 for the exact weight.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmquant.config import load_config, weight_bits
from llmquant.quant.hessian import HessianAccumulator
from llmquant.quant.weights import quantize_linear

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def _case(seed=0, n=32, k=64, t=2048, a=100.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(k, generator=g)
    u /= u.norm()
    w = torch.randn(n, k, generator=g)
    w -= torch.outer(w @ u, u)  # W u = 0
    x = a * u + 0.3 * torch.randn(t, k, generator=g)
    lin = nn.Linear(k, n, bias=False)
    lin.weight.data.copy_(w)
    acc = HessianAccumulator(k)
    acc.add(x)
    return lin, x, acc


@pytest.mark.parametrize("method", ["lattice", "scalar"])
def test_bias_correction_removes_the_mean_error(method):
    cfg = load_config(CONFIGS / ("smollm2-135m-nestquant-w4a16.yaml" if method == "lattice" else
                                 "smollm2-135m-quarot-w4a16.yaml")).weights
    lin, x, acc = _case()
    y = lin(x).detach()
    plain, info_plain = quantize_linear(lin, acc.hessian(), cfg)
    corr, info_corr = quantize_linear(lin, acc.hessian(), cfg, mean=acc.mean())
    assert plain.bias is None and corr.bias is not None and info_corr["bias_correction"]
    err_plain = (plain(x) - y).pow(2).mean().sqrt() / y.pow(2).mean().sqrt()
    err_corr = (corr(x) - y).pow(2).mean().sqrt() / y.pow(2).mean().sqrt()
    # the constant direction dominates the uncorrected error; corrected, the error is the code's own
    assert err_corr < 0.5 * err_plain
    # mean output error is exactly absorbed: sum_t (Q x_t + b' - W x_t) = T (b' - (W - Q) mu) = 0
    assert (corr(x) - y).mean(0).abs().max() < 1e-3 * y.abs().max()
    # the reported errors are the measured ones (calibration data = the Hessian's data)
    assert info_plain["rel_err"] == pytest.approx(float(err_plain), rel=1e-3)
    assert info_corr["rel_err"] == pytest.approx(float(err_corr), rel=1e-3)


def test_accumulator_mean_and_covariance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 8, generator=g) + torch.arange(8.0)
    acc = HessianAccumulator(8)
    acc.add(x[:200])
    acc.add(x[200:])
    torch.testing.assert_close(acc.mean(), x.mean(0))
    torch.testing.assert_close(acc.covariance(), torch.cov(x.T, correction=0), rtol=1e-4, atol=1e-4)


def test_bias_bits_are_counted():
    on = load_config(CONFIGS / "smollm2-135m-nestquant-w4a16.yaml", ["weights.bias_correction=true"]).weights
    off = load_config(CONFIGS / "smollm2-135m-nestquant-w4a16.yaml").weights
    assert not off.bias_correction
    assert weight_bits(on, 640) - weight_bits(off, 640) == pytest.approx(32 / 640)
    assert weight_bits(off, 576) == pytest.approx(math.log2(14) + 1 / 8 + 16 / 576)


def test_misalignment_diagnostic():
    """W u = 0 with inputs dominated by a * u: huge misalignment under H, about 1 under the covariance."""
    cfg = load_config(CONFIGS / "smollm2-135m-nestquant-w4a16.yaml").weights
    lin, _x, acc = _case()
    _, plain = quantize_linear(lin, acc.hessian(), cfg)
    _, corr = quantize_linear(lin, acc.hessian(), cfg, mean=acc.mean())
    assert plain["diag"]["misalignment"] > 100
    assert corr["diag"]["misalignment"] < 2
