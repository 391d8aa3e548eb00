"""``llmquant.kernels.dispatch.try_forward``: LatticeLinear through the kernels, and the reference fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch
from _kernels_support import kernel_device, random_packed, within_low_precision_bound

from llmquant.lattice.packing import pack_codes
from llmquant.quant.activations import RowQuantizer
from llmquant.quant.linear import LatticeLinear

pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _layer(backend: str, act_q=None, k: int = 64, n: int = 24, q: int = 14, seed: int = 0) -> LatticeLinear:
    codes, bidx = random_packed(n, k, q, 2, seed)
    layer = LatticeLinear(k, n, q=q, k=2, bias=True, backend=backend, act_q=act_q)
    layer.codes.copy_(pack_codes(codes.to(torch.uint8), q))
    layer.beta_idx.copy_(bidx)
    g = torch.Generator().manual_seed(seed)
    layer.row_scale.copy_((torch.rand(n, generator=g) * 0.05 + 0.01).half().float())
    layer.betas.copy_(torch.tensor([0.7, 1.05]))
    layer.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_w4a16_forward_matches_reference(dev, dtype):
    from llmquant.kernels.dispatch import try_forward

    layer = _layer("triton").to(dev)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1)).to(dev)
    out = try_forward(layer, x.to(dtype))
    assert out is not None and out.dtype == dtype and out.shape == (2, 3, 24)
    assert torch.equal(layer(x.to(dtype)), out)  # LatticeLinear.forward takes the kernel path
    w = layer.dequantized_weight().double().cpu()
    exact = x.double().cpu() @ w.T + layer.bias.double().cpu()
    layer.backend = "reference"
    low = layer(x.to(dtype)).cpu()
    ok, err, ref_err = within_low_precision_bound(out.cpu(), exact, low, atol=1e-5 if dtype == torch.float32 else 1e-3)
    assert ok, f"kernel error {err:.3g} > 2 x reference error {ref_err:.3g} + atol"


@pytest.mark.parametrize("x_betas", [[0.6, 1.3], [0.5, 0.7, 0.9, 1.2, 1.6]])
def test_w4a4_forward_matches_fake_quant_reference(dev, x_betas):
    from llmquant.kernels.dispatch import try_forward, w4a4_mode

    act = RowQuantizer("lattice", q=14, betas=torch.tensor(x_betas), choose="min_error")
    layer = _layer("triton", act_q=act, seed=3).to(dev)
    mode = w4a4_mode(len(x_betas), 2)
    assert mode == ("int8" if len(x_betas) == 2 else "fp16")
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2)).to(dev)
    out = try_forward(layer, x)
    assert out is not None and out.shape == (5, 24)
    xq = act.quantize_rows(x.cpu()).double()  # the reference: fake-quantized input, then the linear
    w = layer.dequantized_weight().double().cpu()
    exact = xq @ w.T + layer.bias.double().cpu()
    if mode == "int8":  # exact integer dots: only fp32 rounding of scales and sums
        assert (out.cpu().double() - exact).abs().max().item() <= 1e-5 * exact.abs().max().item()
    else:
        low = (xq.half().float() @ w.half().float().T + layer.bias.cpu()).half()  # fp16 operands
        ok, err, ref_err = within_low_precision_bound(out.cpu(), exact, low, atol=1e-4)
        assert ok, f"kernel error {err:.3g} > 2 x fp16 reference error {ref_err:.3g} + atol"


def test_fallbacks_return_none_and_log_once(dev, caplog):
    from llmquant.kernels import dispatch

    x = torch.randn(2, 64)
    cases = [
        (_layer("auto"), x, "backend 'auto'"),                       # CPU + auto: never the interpreter
        (_layer("reference"), x, "backend 'reference'"),
        (_layer("triton", act_q=RowQuantizer("scalar", bits=4)), x, "not an E8 lattice"),
        (_layer("triton"), x.to(torch.int32), "dtype"),
    ]
    if dev.type == "cpu":
        cases.append((_layer("triton"), x.bfloat16(), "bf16 on the Triton interpreter"))
    dispatch._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="llmquant.kernels"):
        for layer, inp, why in cases:
            if dev.type == "cuda" and "auto" in why:
                continue
            assert dispatch.unsupported_reason(layer, inp) is not None and why in dispatch.unsupported_reason(layer, inp)
            assert dispatch.try_forward(layer, inp) is None
            assert dispatch.try_forward(layer, inp) is None
    for _, _, why in cases:
        if dev.type == "cuda" and "auto" in why:
            continue
        hits = [r for r in caplog.records if why in r.getMessage()]
        assert len(hits) == 1, why  # one line per reason, even after repeated calls
    # the layer still works through its reference forward
    out = _layer("auto")(x)
    assert out.shape == (2, 24) and torch.isfinite(out).all()
