"""Triton E8 weight decode and W4A16 decode-GEMM against the lattice core (TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch
from _kernels_support import kernel_device, random_packed, within_low_precision_bound

from llmquant.lattice.closest_point import generator_matrix
from llmquant.lattice.packing import pack_codes
from llmquant.lattice.voronoi import VoronoiCodec

pytestmark = pytest.mark.kernels



@pytest.fixture(scope="module")
def interpreter() -> torch.device:
    return kernel_device()


def _boundary_codes(q: int) -> torch.Tensor:
    """Codes of points ``q t`` with ``t`` on the Voronoi cell boundary of E8 (ties in the coarse step).

    ``t = v/2`` for the 240 roots ``v`` (faces) and ``t = ±e_i`` (deep holes); needs q even.
    """
    roots = []
    for i, j in itertools.combinations(range(8), 2):
        for si, sj in itertools.product((1, -1), repeat=2):
            v = [0.0] * 8
            v[i], v[j] = si, sj
            roots.append(v)
    for signs in itertools.product((0.5, -0.5), repeat=8):
        if sum(s < 0 for s in signs) % 2 == 0:
            roots.append(list(signs))
    v = torch.tensor(roots, dtype=torch.float64)
    holes = torch.cat([torch.eye(8), -torch.eye(8)]).double() * 2
    y2 = torch.cat([q * v, q * holes]).round().to(torch.int64)  # 2 * (q t)
    return VoronoiCodec("E8", q).codes_from_point2(y2)


@pytest.mark.parametrize("q", [14, 16, 5])
def test_dequant_bit_identical_to_voronoi_decode(interpreter, q):
    from llmquant.kernels.e8_dequant import e8_dequant

    codec = VoronoiCodec("E8", q)
    codes, bidx = random_packed(48, 128, q, 3, seed=q)
    if q % 2 == 0:  # every tie of the coarse step, padded to whole rows
        b = _boundary_codes(q)
        codes = torch.cat([codes.reshape(-1, 8), b]).reshape(-1, 8)
        pad = (-codes.shape[0]) % 16
        codes = torch.cat([codes, codes[:pad]]).reshape(-1, 16, 8)
        bidx = torch.randint(0, 3, codes.shape[:2], generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    betas = torch.tensor([0.55, 0.8, 1.2])
    words = pack_codes(codes.to(torch.uint8), q).to(interpreter)
    w = e8_dequant(words, bidx.to(interpreter), betas, None, generator_matrix("E8"), q)
    ref = (betas[bidx.long()][..., None] * codec.decode(codes)).reshape(codes.shape[0], -1)
    assert torch.equal(w.cpu(), ref)


def test_dequant_matches_lattice_linear_decode_weight(interpreter):
    from llmquant.kernels.e8_dequant import e8_dequant

    from llmquant.quant.linear import LatticeLinear

    n, k, q = 24, 64, 14
    codes, bidx = random_packed(n, k, q, 2, seed=7)
    layer = LatticeLinear(k, n, q=q, k=2)
    layer.codes.copy_(pack_codes(codes.to(torch.uint8), q))
    layer.beta_idx.copy_(bidx)
    layer.row_scale.copy_(torch.linspace(0.01, 0.3, n))
    layer.betas.copy_(torch.tensor([0.7, 1.05]))
    ref = layer.decode_weight()
    w = e8_dequant(layer.codes, layer.beta_idx, layer.betas, layer.row_scale, generator_matrix("E8"), q)
    assert torch.equal(w, ref)


def _layer_tensors(n, k, q, seed, device):
    codes, bidx = random_packed(n, k, q, 4, seed)
    g = torch.Generator().manual_seed(seed + 1)
    betas = torch.tensor([0.5, 0.75, 1.0, 1.4])
    row_scale = (torch.rand(n, generator=g) * 0.05 + 0.01).half().float()
    bias = torch.randn(n, generator=g) * 0.1
    w = (betas[bidx.long()][..., None] * VoronoiCodec("E8", q).decode(codes)).reshape(n, k) * row_scale[:, None]
    words = pack_codes(codes.to(torch.uint8), q)
    return [t.to(device) for t in (words, bidx, betas, row_scale, bias)], w


@pytest.mark.parametrize(
    "m,n,k,config",
    [
        (1, 40, 96, None),                                                  # GEMV, N and K tails
        (3, 32, 128, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 2}),   # split-K
        (7, 24, 256, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 4}),   # split-K, K tail per split
        (40, 48, 64, {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}),   # large-M tiling, M tail
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_gemm_against_reference(interpreter, m, n, k, config, dtype):
    from llmquant.kernels.e8_decode_gemm import e8_decode_gemm

    q = 14
    (words, bidx, betas, row_scale, bias), w = _layer_tensors(n, k, q, seed=m * 100 + n, device=interpreter)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(interpreter)
    out = e8_decode_gemm(x.to(dtype), words, bidx, betas, row_scale, generator_matrix("E8"), q, bias=bias,
                         config=config)
    assert out.dtype == dtype and out.shape == (m, n)
    exact = x.double().cpu() @ w.double().T + bias.double().cpu()
    xl = x.to(dtype).cpu()
    low = (xl.float() @ w.to(dtype).float().T + bias.cpu()).to(dtype) if dtype != torch.float32 else \
        (x.cpu() @ w.T + bias.cpu())
    ok, err, ref_err = within_low_precision_bound(out.cpu(), exact, low, atol=1e-5 if dtype == torch.float32 else 1e-3)
    assert ok, f"kernel error {err:.3g} > 2 x reference error {ref_err:.3g} + atol"


def test_decode_gemm_leading_dims_and_errors(interpreter):
    from llmquant.kernels.e8_decode_gemm import e8_decode_gemm

    q = 16
    (words, bidx, betas, row_scale, _), w = _layer_tensors(16, 64, q, seed=3, device=interpreter)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)).to(interpreter)
    out = e8_decode_gemm(x, words, bidx, betas, row_scale, generator_matrix("E8"), q)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out.cpu().double(), x.cpu().double() @ w.double().T, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="features"):
        e8_decode_gemm(x[..., :32], words, bidx, betas, row_scale, generator_matrix("E8"), q)
    with pytest.raises(ValueError, match="int32"):
        e8_decode_gemm(x, words.long(), bidx, betas, row_scale, generator_matrix("E8"), q)
    with pytest.raises(ValueError, match="q = 17"):
        e8_decode_gemm(x, words, bidx, betas, row_scale, generator_matrix("E8"), 17)
