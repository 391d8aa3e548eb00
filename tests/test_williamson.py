"""Williamson construction: stored sequences, the Williamson array, orders 92/116/156/172 and the search."""

import json

import numpy as np
import pytest
import torch

from llmquant.rotation import ORDER_TABLE, fwht, hadamard_matrix, hadamard_order_matrix, split_order
from llmquant.rotation.constructions import WILLIAMSON_DATA, circulant, williamson_hadamard, williamson_rows
from llmquant.rotation.williamson_search import (
    first_row,
    four_odd_squares,
    is_williamson,
    paf,
    search,
    string_to_row,
)

F64 = torch.float64
WILLIAMSON_ORDERS = sorted(m for m, (kind, _) in ORDER_TABLE.items() if kind == "williamson")


def _stored():
    with open(WILLIAMSON_DATA) as f:
        return json.load(f)["sequences"]


def test_stored_sequences_satisfy_williamson_condition():
    data = _stored()
    assert {"23", "29", "39", "43"} <= set(data)
    for n_str, entry in data.items():
        n = int(n_str)
        assert entry["solutions"], n
        prov = entry["provenance"]
        assert {"command", "date", "parameters", "runtime_s"} <= set(prov)
        for sol in entry["solutions"]:
            rows = [string_to_row(sol[x]) for x in "ABCD"]
            assert all(len(r) == n and r[0] == 1 for r in rows)
            assert all(r[k] == r[n - k] for r in rows for k in range(1, n))  # symmetric circulant
            assert is_williamson(rows)
            # independent check of the definition: A^2 + B^2 + C^2 + D^2 = 4n I in integer arithmetic
            mats = [circulant(r) for r in rows]
            assert torch.equal(sum(m @ m for m in mats), 4 * n * torch.eye(n, dtype=torch.int64))
            assert sorted(abs(sum(r)) ** 2 for r in rows) and sum(sum(r) ** 2 for r in rows) == 4 * n


@pytest.mark.parametrize("m", WILLIAMSON_ORDERS)
def test_williamson_orders_are_hadamard(m):
    assert m in (92, 116, 156, 172)
    h = hadamard_order_matrix(m)
    assert h.dtype == torch.int64 and h.shape == (m, m)
    assert torch.equal(h.abs(), torch.ones_like(h))
    assert torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.int64))
    assert torch.equal(h.T @ h, m * torch.eye(m, dtype=torch.int64))


def test_williamson_array_rejects_bad_rows():
    rows = [list(r) for r in williamson_rows(39)]
    rows[1][3] = -rows[1][3]
    rows[1][39 - 3] = -rows[1][39 - 3]
    with pytest.raises(ValueError, match="do not give a Hadamard"):
        williamson_hadamard(rows)


@pytest.mark.parametrize(
    "n, m",
    [(156 * 4, 156), (172 * 64, 172), (11008, 172), (92 * 8, 92), (184, 92), (232, 116), (116 * 64, 116)],
)
def test_split_order_uses_williamson(n, m):
    base, k = split_order(n)
    assert (base, base * 2**k) == (m, n)


@pytest.mark.parametrize("n", [156, 172, 116, 156 * 4, 92 * 2, 116 * 2])
def test_hadamard_matrix_orthonormal(n):
    h = hadamard_matrix(n)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [156 * 4, 172 * 8, 92 * 4, 116 * 2])
def test_fwht_matches_dense_fp64(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, generator=g, dtype=F64)
    h = hadamard_matrix(n)
    torch.testing.assert_close(fwht(x), x @ h, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwht(x, transpose=True), x @ h.T, rtol=0, atol=1e-12)


def test_fwht_172_times_64_dense_and_inverse():
    """Llama-2-7B intermediate size 11008 = 172 * 64: dense comparison on a small batch."""
    n = 172 * 64
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    h = hadamard_matrix(n)
    assert h.shape == (n, n)
    torch.testing.assert_close(fwht(x), x @ h, rtol=0, atol=1e-11)
    torch.testing.assert_close(fwht(x, transpose=True), x @ h.T, rtol=0, atol=1e-11)
    torch.testing.assert_close(fwht(fwht(x), transpose=True), x, rtol=0, atol=1e-11)


def test_four_odd_squares():
    assert four_odd_squares(12) == [(3, 1, 1, 1)]
    assert set(four_odd_squares(172)) == {
        (13, 1, 1, 1),
        (11, 7, 1, 1),
        (11, 5, 5, 1),
        (9, 9, 3, 1),
        (7, 7, 7, 5),
    }


def test_paf_and_first_row():
    row = first_row(0b101, 7)
    assert row == [1, -1, 1, -1, -1, 1, -1]
    r = np.array(row)
    assert paf(row).tolist() == [int(r @ np.roll(r, -k)) for k in range(7)]
    assert not is_williamson([row] * 3)


@pytest.mark.parametrize("n", [3, 5, 7, 9, 11, 13, 23])
def test_small_search_finds_valid_sequences(n):
    res = search(n, max_solutions=2)
    assert res["solutions"]
    for sol in res["solutions"]:
        rows = [string_to_row(s) for s in sol]
        assert is_williamson(rows)
        h = williamson_hadamard(rows)
        assert torch.equal(h @ h.T, 4 * n * torch.eye(4 * n, dtype=torch.int64))


@pytest.mark.parametrize("n", [13, 23])
def test_reversed_decomposition_order_finds_valid_sequences(n):
    res = search(n, max_solutions=1, reverse_decompositions=True)
    assert res["stats"]["decompositions"] == search(n, max_solutions=1)["stats"]["decompositions"][::-1]
    rows = [string_to_row(s) for s in res["solutions"][0]]
    assert is_williamson(rows)


def test_search_rejects_even_order():
    with pytest.raises(ValueError, match="odd"):
        search(8)
