"""Closest-point maps: brute force, lattice membership, generators, second moments, equivariance."""

import itertools

import pytest
import torch

from llmquant.lattice import closest_point, generator_matrix
from llmquant.lattice.closest_point import coarse_closest_int

DIMS = {"Z": 3, "D4": 4, "D8": 8, "E8": 8}


def _is_member(p: torch.Tensor, name: str) -> torch.Tensor:
    integer = (p == torch.round(p)).all(-1)
    if name == "Z":
        return integer
    even = torch.remainder(p.sum(-1), 2) == 0
    if name in ("D4", "D8"):
        return integer & even
    half = (p - 0.5 == torch.round(p - 0.5)).all(-1)
    return (integer | half) & even


def _neighbourhood(name: str) -> torch.Tensor:
    g = generator_matrix(name, DIMS[name])
    d = g.shape[0]
    coeffs = torch.tensor(list(itertools.product([-1, 0, 1], repeat=d)), dtype=torch.float64)
    return coeffs @ g


@pytest.mark.parametrize("name", ["Z", "D4", "D8", "E8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_brute_force(name, dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(600, DIMS[name], generator=gen, dtype=torch.float64) * 3).to(dtype)
    p = closest_point(x, name)
    assert p.dtype == dtype and p.shape == x.shape
    assert _is_member(p.double(), name).all()
    # the Voronoi-relevant vectors of all four lattices are among the {-1,0,1} combinations of these bases
    cand = p.double()[:, None, :] + _neighbourhood(name)[None]
    d_best = (x.double()[:, None, :] - cand).square().sum(-1).min(1).values
    d_p = (x.double() - p.double()).square().sum(-1)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert (d_p <= d_best + tol).all()


@pytest.mark.parametrize("name,det", [("Z", 1.0), ("D4", 2.0), ("D8", 2.0), ("E8", 1.0)])
def test_generator_matrix(name, det):
    g = generator_matrix(name, DIMS[name])
    assert g.dtype == torch.float64
    assert abs(float(torch.linalg.det(g)) - det) < 1e-12
    assert torch.equal(closest_point(g, name), g), "every basis row is a lattice point"
    gram = g @ g.T
    assert torch.equal(gram, torch.round(gram)), "integral lattice"
    if name == "E8":
        assert (torch.diagonal(gram) % 2 == 0).all(), "E8 is even"
        assert torch.equal(2 * g, torch.round(2 * g))


@pytest.mark.parametrize("name,nsm", [("Z", 1 / 12), ("D4", 0.076603), ("E8", 0.071682)])
def test_normalized_second_moment(name, nsm):
    g = generator_matrix(name, 1 if name == "Z" else DIMS[name])
    d = g.shape[0]
    gen = torch.Generator().manual_seed(2)
    # uniform on a fundamental parallelepiped: the quantization error is uniform on the Voronoi cell
    x = (torch.rand(400_000 // d, d, generator=gen, dtype=torch.float64) * 8) @ g
    err = x - closest_point(x, name)
    vol = abs(float(torch.linalg.det(g)))
    measured = float(err.square().sum(-1).mean()) / d / vol ** (2 / d)
    assert abs(measured / nsm - 1) < 0.02, (name, measured, nsm)


@pytest.mark.parametrize("name", ["Z", "D4", "D8", "E8"])
def test_translation_equivariance_including_ties(name):
    d = DIMS[name]
    gen = torch.Generator().manual_seed(3)
    # half-integer and quarter grids hit the tie cases (x exactly between lattice points)
    x = torch.randint(-8, 9, (3000, d), generator=gen).double() / 4
    g = generator_matrix(name, d)
    t = torch.randint(-3, 4, (3000, d), generator=gen).double() @ g
    assert torch.equal(closest_point(x + t, name), closest_point(x, name) + t)


@pytest.mark.parametrize("name", ["Z", "D4", "D8", "E8"])
@pytest.mark.parametrize("q", [2, 3, 14])
def test_integer_coarse_step_matches_float_rule(name, q):
    d = DIMS[name]
    gen = torch.Generator().manual_seed(4)
    y = closest_point(torch.randn(2000, d, generator=gen, dtype=torch.float64) * 3 * q, name)
    l2 = coarse_closest_int(torch.round(2 * y).long(), name, q)
    assert l2.dtype == torch.int64
    lam = l2.double() / 2
    assert _is_member(lam, name).all()
    # q*lam is a closest point of qΛ to y (ties allowed): compare distances with the float map
    ref = q * closest_point(y / q, name)
    assert torch.allclose((y - q * lam).square().sum(-1), (y - ref).square().sum(-1))
    # float-valued integer inputs give the identical answer
    assert torch.equal(coarse_closest_int(torch.round(2 * y), name, q), l2.double())


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown lattice"):
        closest_point(torch.zeros(8), "A2")
    with pytest.raises(ValueError, match="dimension 8"):
        closest_point(torch.zeros(3, 7), "E8")
    with pytest.raises(TypeError, match="floating-point"):
        closest_point(torch.zeros(3, 8, dtype=torch.int64), "E8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = torch.randn(10000, 8, dtype=torch.float64)
    for name in ("D8", "E8"):
        assert torch.equal(closest_point(x.cuda(), name).cpu(), closest_point(x, name))
