"""Triton W4A4 lattice GEMM (both operands E8 codes), int8 and fp16 modes, against the reference."""

from __future__ import annotations

import pytest
import torch
from _kernels_support import kernel_device, random_packed, within_low_precision_bound

from llmquant.lattice.closest_point import generator_matrix
from llmquant.lattice.packing import pack_codes, unpack_codes
from llmquant.lattice.voronoi import VoronoiCodec

pytestmark = pytest.mark.kernels

G = generator_matrix("E8")


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _dequant(codes, bidx, scale, betas, q):
    dec = VoronoiCodec("E8", q).decode(unpack_codes(codes.cpu()).long())
    return (betas[bidx.cpu().long()][..., None] * dec).reshape(codes.shape[0], -1) * scale.cpu()[:, None]


def _problem(m, n, k, qx, qw, seed, dev):
    from llmquant.kernels.e8_encode import e8_encode

    g = torch.Generator().manual_seed(seed)
    x_betas = torch.tensor([0.7, 1.2])
    w_betas = torch.tensor([0.5, 0.8, 1.1])
    x = torch.randn(m, k, generator=g)
    xc, xb, xs = e8_encode(x.to(dev), x_betas, qx, G)
    codes, wb = random_packed(n, k, qw, 3, seed)
    wc = pack_codes(codes.to(torch.uint8), qw)
    rs = (torch.rand(n, generator=g) * 0.05 + 0.01).half().float()
    bias = torch.randn(n, generator=g)
    ops = {"xc": xc, "xb": xb, "xs": xs, "x_betas": x_betas, "qx": qx, "wc": wc.to(dev), "wb": wb.to(dev),
           "row_scale": rs.to(dev), "w_betas": w_betas, "qw": qw}
    exact = _dequant(xc, xb, xs, x_betas, qx).double() @ _dequant(wc, wb, rs, w_betas, qw).double().T + bias.double()
    return ops, bias, exact, (_dequant(xc, xb, xs, x_betas, qx), _dequant(wc, wb, rs, w_betas, qw))


@pytest.mark.parametrize("m,n,k", [(1, 16, 64), (20, 40, 96)])
def test_int8_mode_is_exact_up_to_fp32_accumulation(dev, m, n, k):
    from llmquant.kernels.e8_w4a4_gemm import e8_w4a4_gemm

    ops, bias, exact, _ = _problem(m, n, k, 14, 14, seed=m + n, dev=dev)
    y = e8_w4a4_gemm(**ops, generator=G, bias=bias.to(dev), mode="int8", out_dtype=torch.float32)
    # integer partial products are exact; only the fp32 β-scaling and sums round
    assert (y.cpu().double() - exact).abs().max().item() <= 1e-5 * exact.abs().max().item() + 1e-6


@pytest.mark.parametrize("m,n,k,qx,qw", [(4, 24, 64, 14, 14), (17, 16, 128, 8, 16)])
def test_fp16_mode_within_twice_fp16_reference_error(dev, m, n, k, qx, qw):
    from llmquant.kernels.e8_w4a4_gemm import e8_w4a4_gemm

    ops, bias, exact, (xh, wh) = _problem(m, n, k, qx, qw, seed=m * n, dev=dev)
    y = e8_w4a4_gemm(**ops, generator=G, bias=bias.to(dev), mode="fp16", out_dtype=torch.float16)
    assert y.dtype == torch.float16 and y.shape == (m, n)
    low = (xh.half().float() @ wh.half().float().T + bias).half()  # the reference with fp16 operands and output
    ok, err, ref_err = within_low_precision_bound(y.cpu(), exact, low, atol=1e-3)
    assert ok, f"kernel error {err:.3g} > 2 x fp16 reference error {ref_err:.3g} + atol"


def test_shape_and_mode_errors(dev):
    from llmquant.kernels.e8_w4a4_gemm import e8_w4a4_gemm

    ops, _, _, _ = _problem(2, 16, 64, 14, 14, seed=0, dev=dev)
    with pytest.raises(ValueError, match="mode"):
        e8_w4a4_gemm(**ops, generator=G, mode="int4")
    bad = dict(ops, wc=ops["wc"][:, :4], wb=ops["wb"][:, :4])
    with pytest.raises(ValueError, match="K/8"):
        e8_w4a4_gemm(**bad, generator=G)
