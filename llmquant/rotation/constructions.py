"""Hadamard matrices of order m from documented constructions (no literal matrix tables).

A Hadamard matrix ``H`` of order ``m`` has entries +-1 and ``H H^T = m I``; ``m`` is 1, 2 or a multiple
of 4.  llmquant uses orders ``n = m * 2^k`` (:func:`llmquant.rotation.fwht.hadamard_matrix` is the
Kronecker product ``H_m (x) H_{2^k}``), so this module only needs the non-power-of-two factor ``m``.

Constructions, each generated from finite-field arithmetic at call time and checked by the tests:

* **Sylvester**: ``H_1 = [1]``, ``H_{2n} = [[H_n, H_n], [H_n, -H_n]]``; orders 2^k.
* **Paley I** (Paley 1933): ``q`` a prime power with ``q = 3 (mod 4)``.  With the quadratic character
  ``chi`` of GF(q) (``chi(0) = 0``, +1 on nonzero squares, -1 otherwise) and the Jacobsthal matrix
  ``Q[a, b] = chi(a - b)`` (antisymmetric because ``chi(-1) = -1``), ``S = [[0, 1^T], [-1, Q]]`` is skew
  with ``S S^T = q I`` and ``H = I + S`` is Hadamard of order ``q + 1``.
* **Paley II** (Paley 1933): ``q`` a prime power with ``q = 1 (mod 4)``.  ``Q`` is symmetric and
  ``C = [[0, 1^T], [1, Q]]`` is a symmetric conference matrix (``C C^T = q I``);
  ``H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]`` is Hadamard of order ``2 (q + 1)``.

GF(p^e) for e > 1 (q = 25, 27, 49, 243, ...) is GF(p)[t] / f(t) with f the lexicographically first
monic irreducible polynomial of degree e over GF(p), found by trial division when first needed.

* **Williamson** (Williamson 1944): ``A, B, C, D`` symmetric circulant +-1 matrices of odd order ``n``
  with ``A^2 + B^2 + C^2 + D^2 = 4n I``.  They commute (circulants) and are symmetric, so the array
  ``[[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]]`` is Hadamard of order ``4n``.  The
  first rows are not derivable from a closed formula; they were found by llmquant's own exhaustive-style
  search (:mod:`llmquant.rotation.williamson_search`) and are stored with provenance in
  ``llmquant/rotation/data/williamson.json``, loaded lazily on first use and re-verified (exact integer
  ``H H^T = 4n I``) every time a matrix is built.

Which m uses which construction is the explicit :data:`ORDER_TABLE`.  Multiples of 4 up to 256 with no
entry there and no factorisation ``m' * 2^j`` with ``m'`` in the table are 188 and 236 (Williamson
matrices of orders 47 and 59 do not exist; they would need Baumert-Hall / Goethals-Seidel arrays, not
implemented); asking for them raises a ValueError that says so.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import torch

#: m -> (construction, q): "paley1" gives order q + 1, "paley2" order 2 (q + 1), "williamson" order 4 q
#: (q odd, sequences from ``data/williamson.json``).  Every multiple of 4 up to 256 that is not a power of
#: two and is reachable by Paley I (preferred) or Paley II is listed (tests recompute those from the
#: prime-power rules above); Williamson entries only for orders that Paley cannot reach.
ORDER_TABLE: dict[int, tuple[str, int]] = {
    12: ("paley1", 11), 20: ("paley1", 19), 24: ("paley1", 23), 28: ("paley1", 27),
    36: ("paley2", 17), 44: ("paley1", 43), 48: ("paley1", 47), 52: ("paley2", 25),
    60: ("paley1", 59), 68: ("paley1", 67), 72: ("paley1", 71), 76: ("paley2", 37),
    80: ("paley1", 79), 84: ("paley1", 83), 100: ("paley2", 49), 104: ("paley1", 103),
    108: ("paley1", 107), 124: ("paley2", 61), 132: ("paley1", 131), 140: ("paley1", 139),
    148: ("paley2", 73), 152: ("paley1", 151), 164: ("paley1", 163), 168: ("paley1", 167),
    180: ("paley1", 179), 192: ("paley1", 191), 196: ("paley2", 97), 200: ("paley1", 199),
    204: ("paley2", 101), 212: ("paley1", 211), 220: ("paley2", 109), 224: ("paley1", 223),
    228: ("paley1", 227), 240: ("paley1", 239), 244: ("paley1", 243), 252: ("paley1", 251),
    92: ("williamson", 23), 116: ("williamson", 29), 156: ("williamson", 39), 172: ("williamson", 43),
}

WILLIAMSON_DATA = Path(__file__).with_name("data") / "williamson.json"


def prime_power(q: int) -> tuple[int, int] | None:
    """Return ``(p, e)`` with ``q = p^e`` for a prime ``p``, or None when ``q`` is not a prime power."""
    if q < 2:
        return None
    for p in range(2, q + 1):
        if q % p == 0:
            e = 0
            while q % p == 0:
                q //= p
                e += 1
            return (p, e) if q == 1 else None
    return None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """Remainder of ``a`` by monic ``f`` over GF(p); coefficient lists, lowest degree first."""
    a = [c % p for c in a]
    d = len(f) - 1
    for i in range(len(a) - 1, d - 1, -1):
        c = a[i]
        if c:
            for j in range(d + 1):
                a[i - d + j] = (a[i - d + j] - c * f[j]) % p
    return (a[:d] + [0] * d)[:d]


def _is_irreducible(f: list[int], p: int) -> bool:
    """Monic ``f`` of degree d (d <= 3 in practice, any d works) is irreducible iff no monic factor of
    degree 1..d//2 divides it; checked by trial division over all such factors."""
    d = len(f) - 1
    for deg in range(1, d // 2 + 1):
        for low in itertools.product(range(p), repeat=deg):
            g = list(low) + [1]
            if not any(_poly_mod(f, g, p)[: deg]):
                return False
    return True


@functools.cache
def _field(q: int) -> tuple[int, int, tuple[int, ...]]:
    pe = prime_power(q)
    if pe is None:
        raise ValueError(f"GF({q}) does not exist: {q} is not a prime power")
    p, e = pe
    if e == 1:
        return p, e, (0, 1)
    for low in itertools.product(range(p), repeat=e):
        f = list(low) + [1]
        if low[0] != 0 and _is_irreducible(f, p):
            return p, e, tuple(f)
    raise AssertionError("unreachable: irreducible polynomials exist in every degree")


def quadratic_character(q: int) -> list[int]:
    """``chi`` on GF(q) as a list indexed by the element's integer code.

    An element ``c_0 + c_1 t + ... + c_{e-1} t^{e-1}`` has code ``sum c_i p^i``.  ``chi(x) = x^((q-1)/2)``,
    which is 1 for nonzero squares and -1 for non-squares (Euler's criterion); ``chi(0) = 0``.
    """
    p, e, f = _field(q)
    fl = list(f)

    def mul(a: list[int], b: list[int]) -> list[int]:
        out = [0] * (2 * e - 1)
        for i, ai in enumerate(a):
            if ai:
                for j, bj in enumerate(b):
                    out[i + j] += ai * bj
        return _poly_mod(out, fl, p) if e > 1 else [out[0] % p]

    chi = [0] * q
    for code in range(1, q):
        x = [(code // p**i) % p for i in range(e)]
        r, base, k = [1] + [0] * (e - 1), x, (q - 1) // 2
        while k:
            if k & 1:
                r = mul(r, base)
            base = mul(base, base)
            k >>= 1
        chi[code] = 1 if r == [1] + [0] * (e - 1) else -1
    return chi


def jacobsthal(q: int) -> torch.Tensor:
    """Jacobsthal matrix ``Q[a, b] = chi(a - b)`` of GF(q), int64 [q, q] (elements by integer code)."""
    p, e, _ = _field(q)
    chi = torch.tensor(quadratic_character(q), dtype=torch.int64)
    digits = torch.stack([(torch.arange(q) // p**i) % p for i in range(e)], dim=-1)  # [q, e]
    diff = (digits[:, None, :] - digits[None, :, :]) % p  # coefficient-wise subtraction in GF(p)^e
    codes = (diff * torch.tensor([p**i for i in range(e)])).sum(-1)
    return chi[codes]


def sylvester(k: int) -> torch.Tensor:
    """Sylvester Hadamard matrix of order 2^k, int64, symmetric."""
    h = torch.ones(1, 1, dtype=torch.int64)
    for _ in range(k):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def paley1(q: int) -> torch.Tensor:
    """Paley I Hadamard matrix of order q + 1 (q prime power, q = 3 mod 4), int64."""
    if prime_power(q) is None or q % 4 != 3:
        raise ValueError(f"Paley I needs a prime power q = 3 (mod 4); got q={q}")
    s = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jacobsthal(q)
    return s + torch.eye(q + 1, dtype=torch.int64)


def paley2(q: int) -> torch.Tensor:
    """Paley II Hadamard matrix of order 2 (q + 1) (q prime power, q = 1 mod 4), int64."""
    if prime_power(q) is None or q % 4 != 1:
        raise ValueError(f"Paley II needs a prime power q = 1 (mod 4); got q={q}")
    c = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = jacobsthal(q)
    a = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    b = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.int64), b)


@functools.cache
def williamson_rows(n: int) -> tuple[tuple[int, ...], ...]:
    """First rows (A, B, C, D) of the stored Williamson quadruple of odd order ``n`` (the first stored
    solution), +-1 ints; read from ``data/williamson.json`` on first use."""
    with open(WILLIAMSON_DATA) as f:
        data = json.load(f)
    entry = data.get("sequences", {}).get(str(n))
    if not entry or not entry.get("solutions"):
        raise ValueError(f"no stored Williamson sequences of order {n} in {WILLIAMSON_DATA}")
    sol = entry["solutions"][0]
    return tuple(tuple(1 if c == "+" else -1 for c in sol[x]) for x in "ABCD")


def circulant(row) -> torch.Tensor:
    """Circulant matrix with first row ``row``: ``C[i, j] = row[(j - i) mod n]``, int64."""
    r = torch.as_tensor(list(row), dtype=torch.int64)
    n = r.numel()
    idx = (torch.arange(n)[None, :] - torch.arange(n)[:, None]) % n
    return r[idx]


def williamson_hadamard(rows) -> torch.Tensor:
    """Hadamard matrix of order 4n from four first rows of symmetric circulant Williamson matrices,
    int64; raises ValueError unless the result is exactly Hadamard (+-1 entries, ``H H^T = 4n I``)."""
    a, b, c, d = (circulant(r) for r in rows)
    h = torch.cat([
        torch.cat([a, b, c, d], 1),
        torch.cat([-b, a, -d, c], 1),
        torch.cat([-c, d, a, -b], 1),
        torch.cat([-d, -c, b, a], 1),
    ], 0)
    m = h.shape[0]
    if not (torch.equal(h.abs(), torch.ones_like(h)) and torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.int64))):
        raise ValueError(f"Williamson rows of length {m // 4} do not give a Hadamard matrix")
    return h


def split_order(n: int) -> tuple[int, int]:
    """Write ``n = m * 2^k`` with ``m`` = 1 or an :data:`ORDER_TABLE` entry, preferring the smallest ``m``
    (the dense part of the fast transform is then cheapest).  Raises ValueError with the nearest
    explanation when no such split exists."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"Hadamard order must be a positive int, got {n!r}")
    k, m = 0, n
    while m % 2 == 0:
        m //= 2
        k += 1
    if m == 1:
        return 1, k
    # m is odd here; try m * 2^j for j = 2.. (Hadamard orders > 2 are multiples of 4).
    for j in range(2, k + 1):
        if m * 2**j in ORDER_TABLE:
            return m * 2**j, k - j
    raise ValueError(
        f"no Hadamard construction for order {n} = {m} * 2^{k}: need a Paley order m * 2^j (j >= 2) in "
        f"llmquant.rotation.constructions.ORDER_TABLE (Sylvester x Paley I/II x Williamson); orders such as "
        f"188 = 4 * 47 and 236 = 4 * 59 need Baumert-Hall / Goethals-Seidel arrays, which are not implemented.  "
        f"Use a dimension of the form "
        f"m * 2^k with m in {sorted(ORDER_TABLE)} or a power of two."
    )


@functools.cache
def _order_matrix_cached(m: int) -> torch.Tensor:
    if m & (m - 1) == 0:
        return sylvester(m.bit_length() - 1)
    if m not in ORDER_TABLE:
        raise ValueError(
            f"no Hadamard construction for order {m}; implemented: powers of two and {sorted(ORDER_TABLE)}"
        )
    kind, q = ORDER_TABLE[m]
    if kind == "williamson":
        return williamson_hadamard(williamson_rows(q))
    return paley1(q) if kind == "paley1" else paley2(q)


def hadamard_order_matrix(m: int) -> torch.Tensor:
    """Unnormalized +-1 Hadamard matrix of order ``m`` (a power of two or an ORDER_TABLE entry), int64.
    A fresh copy; the construction itself is cached after the first call."""
    return _order_matrix_cached(int(m)).clone()
