"""Closest-point maps and generator matrices for Z^n, D_n (D4, D8) and E8.

Algorithms (Conway & Sloane, "Fast quantizing and decoding algorithms for lattice
quantizers and codes", IEEE Trans. IT 1982):

* ``Z^n``: ``f(x) = floor(x + 1/2)`` per coordinate.  Ties (x = k + 1/2) go up, which
  makes the map exactly equivariant under integer translations,
  ``f(x + t) = f(x) + t`` (``torch.round`` rounds half to even and is not).
* ``D_n = {v in Z^n : sum(v) even}``: ``r = f(x)``; if ``sum(r)`` is odd, move the
  coordinate with the largest ``|x_i - r_i|`` (first such index) one step towards
  ``x_i`` (``+1`` when ``x_i - r_i >= 0``).  Depends on ``x`` only through
  ``x - f(x)`` and the parity of ``f(x)``, hence equivariant under D_n translations.
* ``E8 = D8 ∪ (D8 + h)``, ``h = (1/2, ..., 1/2)``: candidates ``a = Q_D8(x)`` and
  ``b = Q_D8(x - h) + h``; keep the nearer one.  On an exact tie keep the candidate
  with the smaller first coordinate (``a_0 != b_0`` always: one is an integer, the other
  a half-integer).  Translating ``x`` by a vector of the other coset swaps the two
  candidates, and this rule is symmetric in them, so ``Q_E8`` is E8-equivariant.

Equivariance matters for the Voronoi codec: its decoder reduces ``c G`` modulo ``qΛ``
and must land on the same representative as the encoder did from ``Q(x)``.  The
coarse step therefore also has an exact integer version (:func:`coarse_closest_int`)
that applies the same rules on rational inputs ``N / M`` without rounding error.

All functions are branch-free tensor code (CPU or CUDA), accept any leading batch
shape, and work in the dtype of the input (fp32/fp64).
"""

from __future__ import annotations

import torch

#: Lattice name -> dimension (``None``: any dimension).
LATTICE_DIMS = {"Z": None, "D4": 4, "D8": 8, "E8": 8}


def check_lattice(name: str, d: int | None = None) -> int | None:
    """Validate a lattice name (and the size of the last dimension); return its dimension."""
    if name not in LATTICE_DIMS:
        raise ValueError(f"unknown lattice {name!r}: choose one of {sorted(LATTICE_DIMS)}")
    dim = LATTICE_DIMS[name]
    if d is not None and dim is not None and d != dim:
        raise ValueError(
            f"lattice {name} has dimension {dim} but the input's last dimension is {d}: "
            f"reshape the input to (..., {dim})"
        )
    return dim


def generator_matrix(name: str, d: int = 1) -> torch.Tensor:
    """Generator matrix ``G`` (rows are basis vectors, float64); lattice = ``{c @ G : c in Z^d}``.

    * ``Z``: identity of size ``d`` (det 1).
    * ``Dn``: rows ``2 e_0`` and ``e_i - e_{i-1}`` (i = 1..n-1); lower triangular, det 2.
    * ``E8``: the D8 rows ``2 e_0, e_1 - e_0, ..., e_6 - e_5`` (seven rows, spanning the D7
      sitting in the first seven coordinates) plus ``h = (1/2,)*8``; lower triangular with
      diagonal (2, 1, ..., 1, 1/2), det 1.  All rows lie in E8 and det 1 = det E8, so they
      generate E8 (a sublattice of index |det| = 1).
    """
    check_lattice(name)
    if name == "Z":
        if d < 1:
            raise ValueError(f"Z^d needs d >= 1, got {d}")
        return torch.eye(d, dtype=torch.float64)
    n = LATTICE_DIMS[name]
    g = torch.zeros(n, n, dtype=torch.float64)
    g[0, 0] = 2.0
    last = n if name != "E8" else n - 1
    for i in range(1, last):
        g[i, i - 1] = -1.0
        g[i, i] = 1.0
    if name == "E8":
        g[n - 1, :] = 0.5
    return g


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def closest_point_z(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of Z^n: ``floor(x + 1/2)`` elementwise (ties go up)."""
    return _round_half_up(x)


def _parity_flip(r: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Turn an integer vector with odd sum into its nearest even-sum neighbour (D_n rule).

    ``r``: integer-valued (..., n); ``delta = target - r`` in units of one step.
    """
    # remainder() of each coordinate keeps the parity exact even when sum(r) would be huge.
    odd = torch.remainder(torch.remainder(r, 2).sum(-1, keepdim=True), 2) != 0
    idx = delta.abs().argmax(dim=-1, keepdim=True)
    d_at = torch.gather(delta, -1, idx)
    step = torch.where(d_at >= 0, torch.ones_like(d_at), -torch.ones_like(d_at))
    step = torch.where(odd, step, torch.zeros_like(step))
    return r.scatter_add(-1, idx, step)


def closest_point_dn(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of D_n (any n >= 2 on the last dim): round, then fix the parity."""
    r = _round_half_up(x)
    return _parity_flip(r, x - r)


def closest_point_e8(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of E8 = D8 ∪ (D8 + 1/2); ties keep the candidate with smaller first coordinate."""
    a = closest_point_dn(x)
    b = closest_point_dn(x - 0.5) + 0.5
    da = (x - a).square().sum(-1, keepdim=True)
    db = (x - b).square().sum(-1, keepdim=True)
    take_a = (da < db) | ((da == db) & (a[..., :1] < b[..., :1]))
    return torch.where(take_a, a, b)


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise a clear error on NaN/Inf (quantizing them would give silent garbage)."""
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{what} contains {n_nan} NaN and {n_inf} Inf values: lattice quantization needs finite "
            f"inputs; clean or clamp the tensor (e.g. torch.nan_to_num) before quantizing"
        )


def closest_point(x: torch.Tensor, name: str) -> torch.Tensor:
    """Closest lattice point to each vector along the last dimension.

    ``name`` in {"Z", "D4", "D8", "E8"}; the last dimension must equal the lattice
    dimension (any size for Z).  Same shape and dtype as ``x`` (must be floating point).
    Exact for |x| < 2^22 in fp32 (2^51 in fp64), where the rounding steps are exact.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"closest_point needs a floating-point tensor, got {x.dtype}: call .float() first")
    check_lattice(name, x.shape[-1] if x.dim() else None)
    if x.dim() == 0:
        raise ValueError("closest_point needs at least one dimension (the lattice dimension)")
    if name == "Z":
        return closest_point_z(x)
    if name in ("D4", "D8"):
        return closest_point_dn(x)
    return closest_point_e8(x)


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    # For integer-valued floats the correctly rounded quotient of two exact integers never
    # crosses an integer it does not equal (|a| << 2^(mantissa bits) here), so floor() is exact;
    # this is several times faster than int64 floor division on CPU.
    if torch.is_floating_point(a):
        return torch.floor(a / b)
    return torch.div(a, b, rounding_mode="floor")


def _dn_rational(num: torch.Tensor, den: int) -> torch.Tensor:
    """D_n point nearest to ``num / den`` (integer-valued ``num``, positive int ``den``), exactly.

    Same rules as :func:`closest_point_dn`: ``r = floor(num/den + 1/2) = floor((2 num + den) / (2 den))``,
    the residual numerator ``num - den r`` lies in [-den/2, den/2).
    """
    r = _floor_div(2 * num + den, 2 * den)
    return _parity_flip(r, num - den * r)


def coarse_closest_int(y2: torch.Tensor, name: str, q: int) -> torch.Tensor:
    """Exact closest point of ``Λ`` to ``y / q`` for lattice points ``y``, in doubled units.

    ``y2 = 2 y`` (integer-valued: int64, or a float tensor holding integers, which is faster;
    float32 is exact while |y2| < 2^20, float64 while |y2| < 2^48).  Returns ``l2 = 2 λ`` (same dtype)
    with ``q λ`` the point of ``qΛ`` nearest to ``y``, using the tie rules of
    :func:`closest_point` evaluated in exact integer arithmetic (the rational target
    ``y / q = y2 / (2q)``).  ``y - q λ`` is the Voronoi representative of ``y`` modulo ``qΛ``.
    """
    m = 2 * q
    if name == "Z":
        return 2 * _floor_div(2 * y2 + m, 2 * m)
    if name in ("D4", "D8"):
        return 2 * _dn_rational(y2, m)
    a = _dn_rational(y2, m)
    b = _dn_rational(y2 - q, m)  # target - h = (y2 - q) / (2q); b + h is the coset candidate
    ea = y2 - m * a
    eb = y2 - q - m * b
    da = ea.square().sum(-1, keepdim=True)
    db = eb.square().sum(-1, keepdim=True)
    a2 = 2 * a
    b2 = 2 * b + 1
    take_a = (da < db) | ((da == db) & (a2[..., :1] < b2[..., :1]))
    return torch.where(take_a, a2, b2)
