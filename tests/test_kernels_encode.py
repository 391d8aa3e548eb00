"""Triton activation encode (scale + E8 nearest point + β choice + packing) against the lattice core."""

from __future__ import annotations

import pytest
import torch
from _kernels_support import kernel_device

from llmquant.lattice.closest_point import generator_matrix
from llmquant.lattice.nested import NestedLatticeQuantizer
from llmquant.lattice.packing import pack_codes, unpack_codes
from llmquant.lattice.voronoi import VoronoiCodec
from llmquant.quant.activations import RowQuantizer, row_scale_guarded
from llmquant.rotation.random_hadamard import random_signs

pytestmark = pytest.mark.kernels

BETAS = torch.tensor([0.55, 0.8, 1.15, 1.7])


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _tokens(m: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * (torch.rand(m, 1, generator=g) * 4 + 0.1)
    x[0, :8] *= 25.0  # an outlier 8-vector: every β overloads there
    x[1] = 0.0        # an all-zero row (scale falls back to 1)
    return x


@pytest.mark.parametrize("choose", ["min_error", "first_fit"])
@pytest.mark.parametrize("q", [14, 6])
def test_codes_and_betas_bit_identical(dev, choose, q):
    from llmquant.kernels.e8_encode import e8_encode, overload_radius, row_scale

    m, k = 12, 128
    x = _tokens(m, k, seed=q)
    codes, bidx, scale = e8_encode(x.to(dev), BETAS, q, generator_matrix("E8"), choose=choose)
    radius = RowQuantizer("lattice", q=q, betas=BETAS, choose=choose).overload_radius()
    assert overload_radius(BETAS, q) == radius
    s_ref = row_scale_guarded(x, radius).squeeze(-1)  # the reference's guarded scale
    assert torch.equal(row_scale(x, radius), s_ref)
    assert torch.equal(scale.cpu(), s_ref)
    if q == 6:  # small overload radius: the outlier row's scale is set by the guard, not the RMS
        assert scale[0].item() > x[0].pow(2).mean().sqrt().half().float().item()
    nlq = NestedLatticeQuantizer("E8", q, BETAS, choose=choose)
    rc, rb = nlq.quantize((x / s_ref[:, None]).reshape(m, k // 8, 8))
    assert torch.equal(codes.cpu(), pack_codes(rc, q))
    assert torch.equal(bidx.cpu(), rb)
    assert len(set(rb.flatten().tolist())) > 1  # the β choice is exercised


def test_row_scale_matches_row_quantizer_and_dequant_equals_fake_quant(dev):
    from llmquant.kernels.e8_encode import e8_encode

    q, k = 14, 512  # long rows: one 8-vector can exceed RMS * overload radius (needs k > radius^2)
    x = _tokens(6, k, seed=3)
    x[2, 16:24] *= 60.0  # a heavy-tailed row: the overload guard, not the RMS, sets its scale
    codes, bidx, scale = e8_encode(x.to(dev), BETAS, q, generator_matrix("E8"), choose="min_error")
    rq = RowQuantizer("lattice", q=q, betas=BETAS, choose="min_error")
    dec = VoronoiCodec("E8", q).decode(unpack_codes(codes.cpu()).long())
    x_hat = (BETAS[bidx.cpu().long()][..., None] * dec).reshape(6, k) * scale.cpu()[:, None]
    assert torch.equal(scale.cpu(), row_scale_guarded(x, rq.overload_radius()).squeeze(-1))
    assert scale[2].item() > x[2].pow(2).mean().sqrt().half().float().item()
    assert torch.equal(x_hat, rq(x))


def test_rotation_fused_path_equals_rotate_then_encode(dev):
    from llmquant.kernels.e8_encode import e8_encode
    from llmquant.kernels.hadamard import hadamard_transform

    q, k = 14, 96
    x = _tokens(5, k, seed=4).to(dev)
    s = random_signs(k, seed=1).to(dev)
    got = e8_encode(x, BETAS, q, generator_matrix("E8"), signs=s)
    want = e8_encode(hadamard_transform(x, s), BETAS, q, generator_matrix("E8"))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_leading_dims_and_errors(dev):
    from llmquant.kernels.e8_encode import e8_encode

    x = _tokens(6, 32, seed=5).reshape(2, 3, 32).to(dev)
    codes, bidx, scale = e8_encode(x, BETAS, 14, generator_matrix("E8"))
    assert codes.shape == (2, 3, 4) and codes.dtype == torch.int32
    assert bidx.shape == (2, 3, 4) and bidx.dtype == torch.uint8 and scale.shape == (2, 3)
    with pytest.raises(ValueError, match="not divisible by 8"):
        e8_encode(torch.zeros(2, 12, device=dev), BETAS, 14, generator_matrix("E8"))
    with pytest.raises(ValueError, match="choose"):
        e8_encode(torch.zeros(2, 8, device=dev), BETAS, 14, generator_matrix("E8"), choose="best")
