"""Hadamard constructions, normalized matrices, fast transform and seeded random rotations."""

import pytest
import torch

from llmquant.rotation import (
    ORDER_TABLE,
    HadamardRotation,
    fwht,
    hadamard_matrix,
    hadamard_order_matrix,
    random_hadamard,
    split_order,
)
from llmquant.rotation.constructions import (
    jacobsthal,
    paley1,
    paley2,
    prime_power,
    quadratic_character,
    sylvester,
)

# Non-power-of-two factors that real models need (issue 3) and that Paley I/II cover.
ISSUE_ORDERS = (12, 20, 28, 36, 40, 52, 60, 108, 140)
F64 = torch.float64


def test_order_table_matches_paley_rules():
    """Paley entries are exactly the prime-power rule; Williamson entries only fill orders Paley misses."""
    williamson = {m: v for m, v in ORDER_TABLE.items() if v[0] == "williamson"}
    assert williamson == {92: ("williamson", 23), 116: ("williamson", 29), 156: ("williamson", 39),
                          172: ("williamson", 43)}
    expected = {}
    for m in range(4, 257, 4):
        if m & (m - 1) == 0:
            continue
        q1, q2 = m - 1, m // 2 - 1
        if prime_power(q1) and q1 % 4 == 3:
            expected[m] = ("paley1", q1)
        elif prime_power(q2) and q2 % 4 == 1:
            expected[m] = ("paley2", q2)
    assert {m: v for m, v in ORDER_TABLE.items() if v[0] != "williamson"} == expected
    assert not set(williamson) & set(expected)


@pytest.mark.parametrize("m", sorted(ORDER_TABLE))
def test_every_table_order_is_hadamard(m):
    h = hadamard_order_matrix(m)
    assert h.dtype == torch.int64 and h.shape == (m, m)
    assert torch.equal(h.abs(), torch.ones_like(h))
    assert torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.int64))


@pytest.mark.parametrize("k", range(8))
def test_sylvester(k):
    h = sylvester(k)
    assert torch.equal(h @ h.T, 2**k * torch.eye(2**k, dtype=torch.int64))
    assert torch.equal(h, h.T)


@pytest.mark.parametrize("q", [3, 5, 7, 9, 11, 13, 25, 27, 49])
def test_jacobsthal_properties(q):
    """Q Q^T = q I - J, Q J = 0, Q^T = chi(-1) Q: holds for every finite field, incl. GF(9/25/27/49)."""
    chi = quadratic_character(q)
    assert chi[0] == 0 and sum(1 for c in chi if c == 1) == (q - 1) // 2
    j = jacobsthal(q)
    ones = torch.ones(q, q, dtype=torch.int64)
    assert torch.equal(j @ j.T, q * torch.eye(q, dtype=torch.int64) - ones)
    assert torch.equal(j @ ones, torch.zeros_like(ones))
    sign = 1 if q % 4 == 1 else -1
    assert torch.equal(j.T, sign * j)


def test_paley_rejects_wrong_q():
    with pytest.raises(ValueError, match="Paley I"):
        paley1(13)
    with pytest.raises(ValueError, match="Paley II"):
        paley2(15)


@pytest.mark.parametrize("m", ISSUE_ORDERS)
def test_issue_orders_supported(m):
    base, k = split_order(m * 64)
    assert base * 2**k == m * 64 and (base in ORDER_TABLE or base == 1)


@pytest.mark.parametrize("n", [188, 236 * 4, 6, 3])
def test_unconstructed_orders_raise_clear_error(n):
    with pytest.raises(ValueError, match="no Hadamard construction"):
        split_order(n)
    with pytest.raises(ValueError):
        HadamardRotation(n, 0)


def test_split_order_prefers_smallest_dense_part():
    assert split_order(576) == (36, 4)  # SmolLM2 hidden
    assert split_order(1536) == (12, 7)  # SmolLM2 intermediate
    assert split_order(14336) == (28, 9)  # Llama-3-8B intermediate
    assert split_order(18944) == (148, 7)  # Qwen2.5-7B intermediate
    assert split_order(4864) == (76, 6)  # Qwen2.5-0.5B intermediate
    assert split_order(4096) == (1, 12)


@pytest.mark.parametrize("n", [1, 2, 4, 12, 48, 80, 96, 160, 576, 1536])
def test_hadamard_matrix_orthonormal(n):
    h = hadamard_matrix(n)
    assert h.dtype == F64
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=F64), rtol=0, atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5), rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 16, 12, 48, 80, 160, 576, 1536])
def test_fwht_matches_dense_fp64(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, 2, n, generator=g, dtype=F64)
    h = hadamard_matrix(n)
    torch.testing.assert_close(fwht(x), x @ h, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwht(x, transpose=True), x @ h.T, rtol=0, atol=1e-12)


def test_fwht_fp32_and_non_contiguous():
    x = torch.randn(96, 5, generator=torch.Generator().manual_seed(1)).T  # [5, 96], non-contiguous
    torch.testing.assert_close(fwht(x), x @ hadamard_matrix(96, torch.float32), rtol=1e-5, atol=1e-5)
    assert fwht(x).dtype == torch.float32


@pytest.mark.parametrize("n", [14336, 18944, 4864])
def test_fwht_large_orders_are_orthogonal(n):
    """Orders too large for a dense check: norm preserved and H^T inverts H."""
    x = torch.randn(4, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = fwht(x)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(fwht(y, transpose=True), x, rtol=0, atol=1e-11)


def test_fwht_rejects_integer_input():
    with pytest.raises(TypeError, match="floating"):
        fwht(torch.ones(4, dtype=torch.int64))


def test_random_hadamard_seeded():
    a, b, c = random_hadamard(48, 7), random_hadamard(48, 7), random_hadamard(48, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a @ a.T, torch.eye(48, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(random_hadamard(48, None), hadamard_matrix(48))
    # Q = diag(s) H: rows of H with signs flipped
    s = (a / hadamard_matrix(48))[:, 0]
    assert torch.equal(s.abs(), torch.ones(48, dtype=F64))
    assert 0 < int((s < 0).sum()) < 48


def test_hadamard_rotation_module():
    r = HadamardRotation(80, seed=3)
    x = torch.randn(2, 7, 80, dtype=F64, generator=torch.Generator().manual_seed(0))
    q = r.matrix()
    torch.testing.assert_close(r.apply(x), x @ q, rtol=0, atol=1e-12)
    torch.testing.assert_close(r(x), x @ q, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.apply_transpose(x), x @ q.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.apply_transpose(r.apply(x)), x, rtol=0, atol=1e-12)
    assert r.state() == {"n": 80, "seed": 3}
    r2 = HadamardRotation.from_state(r.state())
    assert torch.equal(r2.matrix(), q)
    assert set(r.state_dict()) == {"signs"}
    with pytest.raises(ValueError, match="last dim"):
        r.apply(torch.zeros(3, 81))


def test_rotation_module_keeps_nn_module_apply():
    """model.apply(fn) recurses into children; HadamardRotation.apply must keep that meaning."""
    seen = []
    r = HadamardRotation(16, 0)
    assert r.apply(lambda m: seen.append(type(m).__name__)) is r
    assert seen == ["HadamardRotation"]
