"""β-set search: table evaluation equals the quantizer, and the shipped sets are reproducible."""

import pytest
import torch

from llmquant.lattice import NestedLatticeQuantizer, load_beta_set
from llmquant.lattice.beta_search import make_tables, search_betas, set_mse
from llmquant.lattice.beta_sets import _load_table


def _gain_mse(x, x_hat):
    # MSE per entry after the best scalar gain: the search objective
    x, x_hat = x.double(), x_hat.double()
    g = (x * x_hat).sum() / x_hat.square().sum()
    return float((x - g * x_hat).square().mean())


@pytest.mark.parametrize("choose", ["first_fit", "min_error"])
def test_table_evaluation_matches_the_quantizer(choose):
    grid, e, o = make_tables("E8", 8, n_samples=3000, seed=9, grid_size=24, lo=1.0, hi=8.0)
    idx = [5, 11, 17]
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(9))
    nq = NestedLatticeQuantizer("E8", 8, grid[idx], choose=choose)
    assert set_mse(e, o, idx, 8, choose) == pytest.approx(_gain_mse(x, nq.fake_quant(x)), rel=1e-5)


@pytest.mark.parametrize("q,k", [(14, 2), (4, 2)])
def test_rerun_small_search_is_not_better_than_shipped(q, k):
    shipped = load_beta_set("E8", q, k)
    assert shipped.dtype == torch.float32 and shipped.numel() == k and (shipped.diff() > 0).all()
    new = search_betas("E8", q, k, n_samples=4096, seed=5, grid_size=40)
    assert new["mse"] > 0
    x = torch.randn(32768, 8, generator=torch.Generator().manual_seed(1234))
    mse_shipped = _gain_mse(x, NestedLatticeQuantizer("E8", q, shipped).fake_quant(x))
    mse_new = _gain_mse(x, NestedLatticeQuantizer("E8", q, torch.tensor(new["betas"])).fake_quant(x))
    assert mse_shipped <= mse_new * 1.02, (shipped.tolist(), new["betas"], mse_shipped, mse_new)
    # and the small search lands near the shipped scales (the objective is flat near the optimum)
    assert torch.allclose(torch.tensor(new["betas"], dtype=torch.float32), shipped, rtol=0.25)


def test_shipped_table_records_its_provenance():
    table = _load_table()
    assert table["command"].startswith("python -m llmquant.lattice.beta_search")
    for key in ("n_samples", "seed", "grid_size", "lo", "hi"):
        assert key in table["config"]
    for q in (4, 8, 14, 16):
        for k in (1, 2, 4):
            assert load_beta_set("E8", q, k).numel() == k
            assert load_beta_set("E8", q, k, choose="min_error").numel() == k
    # more scales never hurt: the k-set optimum is at most the (k-1)-set one
    sets = table["sets"]["E8"]["14"]
    assert sets["4"]["mse"] < sets["2"]["mse"] < sets["1"]["mse"]


def test_missing_set_is_a_clear_error():
    with pytest.raises(KeyError, match="no shipped beta set.*search_betas"):
        load_beta_set("E8", 15, 3)
    with pytest.raises(ValueError, match="choose"):
        load_beta_set("E8", 14, 4, choose="best")
