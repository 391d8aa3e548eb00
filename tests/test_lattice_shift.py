"""Shifted Voronoi codes (Λ + a) ∩ qV and the nearest-codeword encoder."""

import math

import pytest
import torch

from llmquant.lattice import NestedLatticeQuantizer, VoronoiCodec
from llmquant.lattice.nested import load_shift, search_shift

SHIFT = [0.5, 0.5, 0.5, 0.0, 0.0, 0.5, 0.0, 0.5]


@pytest.mark.parametrize("q", [2, 3, 5])
@pytest.mark.parametrize("shift", [SHIFT, [1, 0, 0, 0, 0, 0, 0, 0]])
def test_shifted_round_trip_without_overload(q, shift):
    codec = VoronoiCodec("E8", q, shift=shift)
    gen = torch.Generator().manual_seed(q)
    x = torch.randn(4000, 8, generator=gen, dtype=torch.float64) * (q / 4)
    codes = codec.encode(x)
    assert codes.min() >= 0 and codes.max() < q
    a = torch.tensor(shift, dtype=torch.float64)
    y = codec.lattice_point(x)
    assert ((2 * (y - a)) == (2 * (y - a)).round()).all()
    ok = ~codec.overload(x)
    assert ok.float().mean() > 0.1
    dec = codec.decode(codes, dtype=torch.float64)
    assert torch.equal(dec[ok], y[ok])
    # decoded points lie in Λ + a and re-encode to the same codes (exact)
    assert torch.equal(codec.encode(dec), codes)


@pytest.mark.parametrize("q", [2, 3])
def test_shifted_codebook_has_q_pow_d_distinct_words(q):
    codec = VoronoiCodec("E8", q, shift=SHIFT)
    cb = codec.codebook()
    assert cb.shape == (q**8, 8)
    assert len(set(map(tuple, cb.tolist()))) == q**8
    # nearest codeword of a codeword is itself
    assert torch.equal(codec.nearest_codeword2(cb) * 0.5, cb)


def test_zero_shift_is_the_unshifted_code_bit_for_bit():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 3
    plain, zero = VoronoiCodec("E8", 14), VoronoiCodec("E8", 14, shift=[0] * 8)
    assert torch.equal(plain.encode(x), zero.encode(x))
    assert zero.shift is None


def test_invalid_shift_rejected():
    with pytest.raises(ValueError):
        VoronoiCodec("E8", 2, shift=[0.25] * 8)
    with pytest.raises(ValueError):
        VoronoiCodec("E8", 2, shift=[0.5] * 4)
    with pytest.raises(ValueError):
        NestedLatticeQuantizer("E8", 2, [1.6], encoder="exhaustive")
    with pytest.raises(ValueError):
        NestedLatticeQuantizer("E8", 16, [1.6], encoder="nearest")  # 16^8 codewords


def test_nearest_encoder_matches_brute_force_and_dequantizes():
    cfg = load_shift("E8", 2)
    nq = NestedLatticeQuantizer("E8", 2, cfg["betas"], shift=cfg["shift"], encoder=cfg["encoder"])
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = nq.quantize_full(x)
    cb = nq.codec.codebook() * cfg["betas"][0]
    brute = cb[torch.cdist(x, cb).argmin(-1)]
    assert torch.allclose(res.x_hat, brute)
    assert torch.allclose(nq.dequantize(res.codes, res.beta_idx, dtype=torch.float64), res.x_hat)


def test_q4_nearest_fast_path_matches_exhaustive_search():
    # 65536 codewords: most rows take the Voronoi-cell fast path, overloaded ones the exhaustive search;
    # both must give the exhaustive answer exactly.
    cfg = load_shift("E8", 4)
    nq = NestedLatticeQuantizer("E8", 4, cfg["betas"], shift=cfg["shift"], encoder=cfg["encoder"])
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(400, 8, generator=g, dtype=torch.float64),
                   3 * torch.randn(100, 8, generator=g, dtype=torch.float64)])
    res = nq.quantize_full(x)
    cb = nq.codec.codebook() * cfg["betas"][0]
    d = torch.cdist(x, cb)
    best = d.min(-1).values
    got = (x - res.x_hat).norm(dim=-1)
    assert torch.allclose(got, best, rtol=0, atol=1e-9)
    assert torch.equal(res.x_hat, cb[d.argmin(-1)])
    assert torch.allclose(nq.dequantize(res.codes, res.beta_idx, dtype=torch.float64), res.x_hat)


def test_shifted_e8_q2_beats_the_sign_quantizer_on_gaussians():
    # 1 bit/entry either way; both with the least-squares gain. Shipped value 0.330 (32768 samples),
    # sign 1 - 2/pi = 0.3634; 8192 samples have a standard error ~0.003.
    cfg = load_shift("E8", 2)
    nq = NestedLatticeQuantizer("E8", 2, cfg["betas"], shift=cfg["shift"], encoder=cfg["encoder"])
    x = torch.randn(8192, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = nq.fake_quant(x)
    g = (x * y).sum() / (y * y).sum()
    mse = float((x - g * y).square().mean())
    assert mse < (1 - 2 / math.pi) - 0.02
    assert mse == pytest.approx(cfg["mse"], abs=0.01)
    # the unshifted q=2 code is worse than sign even with the nearest encoder
    plain = NestedLatticeQuantizer("E8", 2, [1.4], encoder="nearest").fake_quant(x)
    g0 = (x * plain).sum() / (plain * plain).sum()
    assert float((x - g0 * plain).square().mean()) > 1 - 2 / math.pi


def test_search_shift_small():
    r = search_shift("E8", 2, n_samples=256, betas=(1.6,))
    assert len(r) == 256 and r[0]["mse"] <= r[-1]["mse"]
    assert r[-1]["mse"] > r[0]["mse"] + 0.02
