"""Voronoi codec: the contract identity, exact round trips, exact overload flags, codebook size."""

import itertools

import pytest
import torch

from llmquant.lattice import VoronoiCodec, closest_point


@pytest.mark.parametrize("name,q", [("E8", 14), ("E8", 4), ("D4", 8), ("D8", 3), ("Z", 8)])
def test_decode_encode_identity(name, q):
    codec = VoronoiCodec(name, q)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(20000, codec.d, generator=gen, dtype=torch.float64) * q * 0.6
    codes = codec.encode(x)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < q
    dec = codec.decode(codes, dtype=torch.float64)
    y = closest_point(x, name)
    ref = y - q * closest_point(y / q, name)
    same = (dec == ref).all(-1)
    # where the float reference differs it sat exactly on the boundary of qV (a tie that float
    # division of y by q breaks arbitrarily); both are then representatives of the same coset at
    # the same distance from the origin
    assert same.float().mean() > 0.5
    diff = (dec[~same] - ref[~same]) / q
    assert torch.equal(closest_point(diff, name), diff), "same coset of qΛ"
    assert torch.allclose(dec[~same].square().sum(-1), ref[~same].square().sum(-1))


@pytest.mark.parametrize("name,q", [("E8", 14), ("E8", 5), ("D4", 4), ("Z", 6)])
def test_round_trip_and_overload_flag_are_exact(name, q):
    codec = VoronoiCodec(name, q)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(20000, codec.d, generator=gen) * q * 0.35
    y = closest_point(x, name)
    dec = codec.decode(codec.encode(x))
    over = codec.overload(x)
    assert 0.01 < over.float().mean() < 0.99, "the sample must exercise both cases"
    assert torch.equal(dec[~over], y[~over])
    assert torch.equal(over, (dec != y).any(-1))


@pytest.mark.parametrize("name,q", [("E8", 2), ("E8", 3), ("D4", 4), ("D4", 5), ("Z", 4)])
def test_codebook_has_q_to_the_d_points(name, q):
    codec = VoronoiCodec(name, q, d=3 if name == "Z" else None)
    d = codec.d
    codes = torch.tensor(list(itertools.product(range(q), repeat=d)), dtype=torch.int64)
    pts = codec.decode(codes, dtype=torch.float64)
    assert torch.unique(pts, dim=0).shape[0] == q**d
    assert torch.equal(codec.encode(pts), codes)
    assert not codec.overload(pts).any(), "every codeword lies in the (tie-broken) Voronoi cell of qΛ"


def test_codec_errors():
    codec = VoronoiCodec("E8", 14)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="Inf"):
        codec.overload(torch.full((2, 8), float("inf")))
    with pytest.raises(ValueError, match="2\\^22"):
        codec.encode(torch.full((1, 8), 1e30))
    with pytest.raises(ValueError, match=r"\[0, 14\)"):
        codec.decode(torch.full((1, 8), 14))
    with pytest.raises(ValueError, match="shape"):
        codec.encode(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="q must be"):
        VoronoiCodec("E8", 1)
