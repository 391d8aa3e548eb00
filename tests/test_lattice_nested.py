"""Multi-β nested quantizer: choice rules, contract formula, dither, bad inputs, property tests."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmquant.lattice import NestedLatticeQuantizer, VoronoiCodec, load_beta_set

BETAS = torch.tensor([0.23, 0.29, 0.37, 0.55])


def _x(n=20000, seed=7, d=8):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_contract_formula_and_one_pass_consistency():
    nq = NestedLatticeQuantizer("E8", 14, BETAS)
    x = _x()
    res = nq.quantize_full(x)
    assert res.codes.dtype == torch.uint8 and res.beta_idx.dtype == torch.uint8
    assert res.codes.shape == x.shape and res.beta_idx.shape == x.shape[:1]
    dec = VoronoiCodec("E8", 14).decode(res.codes.long())
    assert torch.equal(res.x_hat, BETAS[res.beta_idx.long()][:, None] * dec)
    assert torch.equal(nq.dequantize(res.codes, res.beta_idx), res.x_hat)
    assert torch.equal(nq.fake_quant(x), res.x_hat)
    codes, idx = nq.quantize(x)
    assert torch.equal(codes, res.codes) and torch.equal(idx, res.beta_idx)
    assert abs(nq.bits_per_entry - (3.807354922 + 0.25)) < 1e-8


def test_first_fit_takes_smallest_beta_without_overload():
    nq = NestedLatticeQuantizer("E8", 14, BETAS)
    x = _x(5000)
    res = nq.quantize_full(x)
    codec = VoronoiCodec("E8", 14)
    fits = torch.stack([~codec.overload(x / b) for b in BETAS.tolist()], 1)
    first = fits.to(torch.int8).argmax(1)
    any_fit = fits.any(1)
    assert torch.equal(res.beta_idx.long()[any_fit], first[any_fit])
    assert torch.equal(res.overload, ~any_fit)
    # where it fits, the reconstruction is the plain lattice rounding at that scale
    b = BETAS[first][:, None]
    from llmquant.lattice import closest_point

    plain = b * closest_point(x / b, "E8")
    assert torch.allclose(res.x_hat[any_fit], plain[any_fit], atol=1e-6)


def test_min_error_is_never_worse_per_vector():
    x = _x(5000)
    ff = NestedLatticeQuantizer("E8", 14, BETAS, choose="first_fit").fake_quant(x)
    me = NestedLatticeQuantizer("E8", 14, BETAS, choose="min_error").fake_quant(x)
    e_ff = (ff - x).square().sum(-1)
    e_me = (me - x).square().sum(-1)
    assert (e_me <= e_ff + 1e-6).all()
    assert e_me.mean() < e_ff.mean()


def test_shipped_betas_reach_mse_floor():
    # E8, q=14, k=4 (4.057 bits): Gaussian MSE per entry of about 0.0060 (D(R) = 2^-2R = 0.0036)
    nq = NestedLatticeQuantizer("E8", 14, load_beta_set("E8", 14, 4))
    x = _x(40000, seed=8)
    mse = float((nq.fake_quant(x) - x).square().mean())
    assert 0.0036 < mse < 0.0065


def test_dither_is_seeded_and_subtractive():
    x = _x(4000)
    a = NestedLatticeQuantizer("E8", 14, BETAS, dither_seed=11)
    b = NestedLatticeQuantizer("E8", 14, BETAS, dither_seed=11)
    c = NestedLatticeQuantizer("E8", 14, BETAS, dither_seed=12)
    ra, rb, rc = a.quantize_full(x), b.quantize_full(x), c.quantize_full(x)
    assert torch.equal(ra.x_hat, rb.x_hat) and not torch.equal(ra.x_hat, rc.x_hat)
    assert torch.equal(a.dequantize(ra.codes, ra.beta_idx), ra.x_hat)
    # subtractive dither: the error is uniform on the cell, second moment G(E8) * beta^2 per entry
    one = NestedLatticeQuantizer("E8", 64, torch.tensor([0.5]), dither_seed=3)
    err = one.fake_quant(x) - x
    assert abs(float(err.square().mean()) / (0.0717 * 0.25) - 1) < 0.05


def test_half_precision_inputs_use_fp32_arithmetic():
    nq = NestedLatticeQuantizer("E8", 14, BETAS)
    x = _x(2000).to(torch.bfloat16)
    res = nq.quantize_full(x)
    assert res.x_hat.dtype == torch.bfloat16
    assert torch.equal(res.codes, nq.quantize_full(x.float()).codes)


def test_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="ascending"):
        NestedLatticeQuantizer("E8", 14, torch.tensor([0.3, 0.2]))
    with pytest.raises(ValueError, match="positive"):
        NestedLatticeQuantizer("E8", 14, torch.tensor([0.0, 0.2]))
    with pytest.raises(ValueError, match="choose"):
        NestedLatticeQuantizer("E8", 14, BETAS, choose="best")
    nq = NestedLatticeQuantizer("E8", 14, BETAS)
    bad = _x(4)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nq.quantize(bad)
    with pytest.raises(ValueError, match="beta_idx"):
        nq.dequantize(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        nq.dequantize(torch.zeros(2, 8, dtype=torch.uint8), torch.full((2,), 4, dtype=torch.uint8))


_values = st.one_of(
    st.just(0.0),
    st.floats(-4, 4, allow_nan=False, width=32),
    st.sampled_from([1e30, -1e30, 3e38, -3e38, 1e-30, 65504.0]),
)


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    name_q=st.sampled_from([("E8", 14), ("E8", 4), ("D4", 16), ("Z", 8)]),
    choose=st.sampled_from(["first_fit", "min_error"]),
    data=st.data(),
)
def test_property_any_shape_dtype_and_value(lead, dtype, name_q, choose, data):
    name, q = name_q
    d = 4 if name == "D4" else 8
    shape = (*lead, d)
    n = 1
    for s in shape:
        n *= s
    vals = data.draw(st.lists(_values, min_size=n, max_size=n))
    x = torch.tensor(vals, dtype=torch.float64).reshape(shape).to(dtype)
    nq = NestedLatticeQuantizer(name, q, torch.tensor([0.4, 0.8]), choose=choose)
    res = nq.quantize_full(x)
    assert res.x_hat.shape == shape and res.x_hat.dtype == dtype
    assert torch.isfinite(res.x_hat.float()).all()
    assert res.codes.shape == shape and (res.codes.long() < q).all()
    assert res.beta_idx.shape == shape[:-1] and (res.beta_idx.long() < 2).all()
    assert torch.equal(nq.dequantize(res.codes, res.beta_idx, dtype=torch.float32), res.x_hat.float()) or (
        dtype == torch.bfloat16
    )
    small = (x.double().abs() < 1).all(-1)
    # moderate vectors never overload with beta 0.8 for these q, and are reproduced within the cell size
    if name != "Z":
        assert not res.overload[small].any()
    if n:
        bad = x.clone().reshape(-1)
        bad[0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            nq.quantize(bad.reshape(shape))
