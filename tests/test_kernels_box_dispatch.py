"""A box-coded LatticeLinear (b = 3 lattice variant) runs the box W4A16 kernel through the dispatcher and
agrees with its reference forward; other box variants fall back to the reference."""

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


def _layer(variant: str, seed: int = 0):
    wcfg = dataclasses.replace(load_config(CONFIG).weights, box_variant=variant, algorithm="rtn")
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 24, bias=True)
    lin.weight.data = torch.randn(24, 64, generator=g)
    lin.bias.data = torch.randn(24, generator=g)
    layer, _ = quantize_linear(lin, None, wcfg)
    return layer


def test_box_lattice_variant_uses_the_kernel():
    dev = kernel_device()
    layer = _layer("lattice").to(dev)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        ref = layer(x)
        assert dispatch.unsupported_reason(layer, x) is not None  # backend "reference"
        layer.backend = "triton"
        assert dispatch.unsupported_reason(layer, x) is None
        out = dispatch.try_forward(layer, x)
    assert out is not None and out.shape == ref.shape
    # the kernel reads x as fp16 and sums each word's 8 products in fp16 (see kernels/box_w4a16.py)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_box_table_variant_falls_back():
    layer = _layer("table")
    layer.backend = "triton"
    reason = dispatch.unsupported_reason(layer, torch.zeros(1, 64))
    assert reason is not None and "lattice variant" in reason
