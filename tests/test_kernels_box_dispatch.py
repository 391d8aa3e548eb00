"""A box-coded LatticeLinear (b = 3 Hamming: the lattice variant, the shipped level-table variant of the deployable
configs, the shipped level table per β (``beta_tables``), a companded γ) runs the box W4A16 kernel through the dispatcher and agrees with its reference forward;
other box codes (b < 3, the parity code) fall back to the reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _kernels_support import kernel_device
from llmquant.kernels import dispatch
from torch import nn

from llmquant.config import load_config
from llmquant.quant.weights import quantize_linear

pytestmark = pytest.mark.kernels
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gemma3-270m-e8-w4a16.yaml"


def _layer(variant: str, seed: int = 0, bits: int = 3):
    wcfg = dataclasses.replace(load_config(CONFIG).weights, box_variant=variant, algorithm="rtn", box_bits=bits)
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 24, bias=True)
    lin.weight.data = torch.randn(24, 64, generator=g)
    lin.bias.data = torch.randn(24, generator=g)
    layer, _ = quantize_linear(lin, None, wcfg)
    return layer


@pytest.mark.parametrize("variant", ["lattice", "table", "beta_tables"])
def test_box_hamming_variants_use_the_kernel(variant):
    dev = kernel_device()
    layer = _layer(variant).to(dev)
    assert (layer.codec.level_table is not None) == (variant != "lattice")
    assert layer.codec.per_beta_levels == (variant == "beta_tables")
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        ref = layer(x)
        assert dispatch.unsupported_reason(layer, x) is not None  # backend "reference"
        layer.backend = "triton"
        assert dispatch.unsupported_reason(layer, x) is None
        out = dispatch.try_forward(layer, x)
    assert out is not None and out.shape == ref.shape
    if variant == "beta_tables":
        # the (16, 16) per-β table, flattened, 1024-byte aligned (the PTX ORs 64 j + 4 l into the address), cached
        lv = dispatch._device_levels(layer, x.device)
        assert lv.shape == (256,) and lv.data_ptr() % 1024 == 0 and torch.equal(lv.cpu(), layer.codec.levels.flatten())
        assert dispatch._device_levels(layer, x.device) is lv
    # lattice path: x read as fp16, each word's 8 products summed in fp16; table path: fp32 (kernels/box_w4a16.py)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    _assert_gemm_bound(layer, x, out)


def _assert_gemm_bound(layer, x, out):
    """The GEMM bound of tests/test_kernels_box.py::_check_gemm against the float64 product of the decoded weight:
    2^-9 of the sum of |terms| (x read as fp16, fp16 lane sums / fp32 table products) + the output's rounding."""
    W = layer.codec.decode_rows(layer.words.cpu(), layer.row_scale.float().cpu()).double()
    x2 = x.reshape(-1, x.shape[-1]).double().cpu()
    exact = x2 @ W.T + layer.bias.double().cpu()
    xh = x2.half().double()
    tol = (xh.abs() @ W.abs().T) * 2**-9 + exact.abs() * 2**-24 + (xh - x2).abs() @ W.abs().T + 1e-5
    err = (out.reshape(exact.shape).double().cpu() - exact).abs()
    assert (err <= tol).all(), f"max err {err.max():.3g}, worst excess {(err - tol).max():.3g}"


def test_box_gamma_code_uses_the_table_path():
    """A companded code (γ != 1, no level table) goes through the same table path (``codec.levels``)."""
    from llmquant.lattice.box import BoxCodec

    dev = kernel_device()
    layer = _layer("lattice")
    layer.codec = BoxCodec(3, layer.codec.betas, "hamming", gamma=1.3)
    layer = layer.to(dev)
    layer.backend = "triton"
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)).to(dev)
    assert dispatch.unsupported_reason(layer, x) is None
    assert dispatch._device_levels(layer, x.device) is not None
    with torch.no_grad():
        out = dispatch.try_forward(layer, x)
    _assert_gemm_bound(layer, x, out)


def test_box_small_width_falls_back():
    layer = _layer("table", bits=2)
    layer.backend = "triton"
    reason = dispatch.unsupported_reason(layer, torch.zeros(1, 64))
    assert reason is not None and "b=3 Hamming" in reason
