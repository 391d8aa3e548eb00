"""Γ(R): the limit of matrix-product distortion for iid Gaussian matrices (Ordentlich–Polyanskiy).

For ``A (n×a)``, ``B (n×b)`` with iid N(0,1) entries, each encoded at ``R`` bits per entry,
the smallest achievable ``E ||AᵀB - ÂᵀB̂||_F² / (n a b)`` as ``n -> ∞`` is

    Γ(R) = 1 - (1 - 2^(-2R))^2 = 2·2^(-2R) - 2^(-4R)                 for R >= R*,
    Γ(R) = 1 - (1 - Γ(R*)) R / R*                                    for R <  R*,

the second branch being the tangent from (0, 1) to the first curve (time sharing between
rate 0 and rate R*, realised by a shared random projection).  ``R*`` solves the tangency
condition ``Γ(R*) - 1 = R* Γ'(R*)``; with ``t = 2^(-2R)``: ``(1 - t)^2 = 4 t (1 - t) ln2 · R``
i.e. ``1 - t = 4 t R ln 2``, solved by bisection (R* ≈ 0.906324, Γ(R*) ≈ 0.4883).
Known values: Γ(1) = 7/16, Γ(2) = 31/256.
"""

from __future__ import annotations

import functools
import math


def gamma_high(rate: float) -> float:
    """``2·2^(-2R) - 2^(-4R)`` (the R >= R* branch, also defined below R*)."""
    t = 2.0 ** (-2.0 * rate)
    return 2.0 * t - t * t


@functools.lru_cache(maxsize=1)
def r_star() -> float:
    """Tangency rate R*: root of ``h(R) = 1 - t - 4 t R ln2`` with ``t = 2^(-2R)``, by bisection."""
    ln2 = math.log(2.0)

    def h(r: float) -> float:
        t = 2.0 ** (-2.0 * r)
        return 1.0 - t - 4.0 * t * r * ln2

    lo, hi = 0.1, 3.0  # h(0.1) < 0 < h(3)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if h(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def gamma(rate: float) -> float:
    """Γ(R) for ``rate >= 0`` bits per entry (see module docstring)."""
    rate = float(rate)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"rate must be a finite number >= 0 bits per entry, got {rate}")
    rs = r_star()
    if rate >= rs:
        return gamma_high(rate)
    return 1.0 - (1.0 - gamma_high(rs)) * rate / rs


def gap_db(mse: float, rate: float) -> float:
    """``10 log10(mse / Γ(rate))``."""
    return 10.0 * math.log10(mse / gamma(rate))
