"""Multi-scale nested-lattice quantizer (NestQuant-style Voronoi code with k scales β).

For an input vector ``x`` (unit variance per entry expected; callers divide by their own
scale first) and each scale ``β_j`` (ascending):

    z_j = x / β_j + u,   y_j = Q_Λ(z_j),   x_hat_j = β_j (y_j - q Q_Λ(y_j / q) - u)

where ``u`` is an optional subtractive dither (uniform on the Voronoi cell of Λ, drawn
from an explicit seed; ``u = 0`` by default).  ``j`` is *overloaded* when
``Q_Λ(y_j / q) != 0``.  The stored pair is (``codes = (y_j G^{-1}) mod q``, ``beta_idx = j``)
and ``dequantize`` returns ``betas[j] * (decode(codes) - u)``.

Choice of ``j`` (``choose``):

* ``"first_fit"`` (NestQuant): the smallest β without overload; when every β overloads,
  the one with the least squared error.
* ``"min_error"``: the β with the least squared error ``||x - x_hat_j||^2``.

Shifted codes and the exhaustive encoder (both off by default): ``shift=a`` uses the codebook
``(Λ + a) ∩ qV`` (:class:`.voronoi.VoronoiCodec`), and ``encoder="nearest"`` replaces
``y_j = Q(z_j)`` followed by the ``mod qΛ`` reduction with the codeword nearest to ``z_j``
(exhaustive search, ``q^d <= 65536``).  ``j`` then counts as overloaded when that codeword is not
``Q_{Λ+a}(z_j)``.  This is what makes ``q = 2`` usable: E8 shifted by a deep hole with nearest
encoding is a 256-word, 1 bit/entry code (see :func:`load_shift` and ``data/shifts.json``).

Rate: ``log2(q) + log2(k) / d`` bits per entry with an exact mixed-radix packer
(:mod:`.packing`); ``bits_per_entry`` reports that number.

Inputs are clamped to ``|x/β| <= 2q + 2`` before rounding: any coordinate beyond that
is overloaded for every lattice here (the cell ``qV`` lies in the ball of radius
``q * covering radius <= q``), so the clamp never changes a non-overloaded result and keeps
all integers small.  NaN/Inf raise ``ValueError``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import torch

from .closest_point import check_finite, closest_point, generator_matrix
from .voronoi import VoronoiCodec

CHOOSE_RULES = ("first_fit", "min_error")
ENCODERS = ("lattice", "nearest")
SHIFT_FILE = Path(__file__).resolve().parent / "data" / "shifts.json"


@functools.lru_cache(maxsize=1)
def _shift_table() -> dict:
    return json.loads(SHIFT_FILE.read_text())


def load_shift(name: str, q: int) -> dict:
    """Shipped shifted-code setting for (lattice, q) from ``data/shifts.json``: a dict with
    ``shift`` (list), ``encoder``, ``betas`` (list) and the Monte-Carlo evidence it was chosen by."""
    try:
        return dict(_shift_table()["codes"][name][str(int(q))])
    except KeyError:
        raise KeyError(f"no shipped shifted code for lattice={name!r}, q={q}; see {SHIFT_FILE}") from None


class NestedQuantResult(NamedTuple):
    """One quantization pass: reconstruction (..., d) in the input dtype, codes uint8 (..., d),
    beta_idx uint8 (...), overload bool (...) (True where even the chosen β overloads)."""

    x_hat: torch.Tensor
    codes: torch.Tensor
    beta_idx: torch.Tensor
    overload: torch.Tensor


def voronoi_dither(shape: tuple[int, ...], name: str, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Dither uniform on the Voronoi cell of ``name``: ``w G - Q(w G)``, ``w ~ U[0,1)^d``.

    ``shape = (..., d)``.  Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (so
    the same seed gives the same dither on every device), then moved.
    """
    d = shape[-1]
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.rand(shape, generator=gen, dtype=torch.float64)
    p = w @ generator_matrix(name, d)
    return (p - closest_point(p, name)).to(dtype=dtype, device=device)


class NestedLatticeQuantizer:
    """Nested-lattice quantizer with ``k = len(betas)`` scales (see module docstring).

    ``name``: lattice ("E8", "D4", "D8", "Z"); ``q``: nesting ratio (2..256 so codes fit uint8);
    ``betas``: ascending positive scales, ``Tensor[k]`` (k <= 256); ``choose``: "first_fit" or
    "min_error"; ``dither_seed``: ``None`` (no dither) or an int; ``d``: dimension for Z;
    ``shift``: ``None`` or a vector in ½Z^d (shifted Voronoi code); ``encoder``: "lattice" (default)
    or "nearest" (exhaustive nearest codeword, needs q^d <= 65536).
    """

    def __init__(
        self,
        name: str = "E8",
        q: int = 14,
        betas: torch.Tensor | None = None,
        choose: str = "first_fit",
        dither_seed: int | None = None,
        d: int | None = None,
        shift=None,
        encoder: str = "lattice",
    ):
        self.codec = VoronoiCodec(name, q, d, shift=shift)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if encoder == "nearest":
            self.codec.codebook()  # raises when the codebook is too large to search
        if self.codec.q > 256:
            raise ValueError(f"q={q} does not fit uint8 codes: use q <= 256")
        if betas is None:
            from .beta_sets import load_beta_set

            betas = load_beta_set(name, q, 1)
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or betas.numel() > 256:
            raise ValueError(f"need 1..256 betas, got {betas.numel()}")
        if not torch.isfinite(betas).all() or (betas <= 0).any():
            raise ValueError(f"betas must be finite and positive, got {betas.tolist()}")
        if (betas[1:] <= betas[:-1]).any():
            raise ValueError(f"betas must be strictly ascending, got {betas.tolist()}")
        if choose not in CHOOSE_RULES:
            raise ValueError(f"choose must be one of {CHOOSE_RULES}, got {choose!r}")
        self.name = name
        self.q = self.codec.q
        self.d = self.codec.d
        self.betas = betas
        self.choose = choose
        self.dither_seed = dither_seed
        self.encoder = encoder

    @property
    def k(self) -> int:
        return int(self.betas.numel())

    @property
    def bits_per_entry(self) -> float:
        """``log2(q) + log2(k) / d`` (exact mixed-radix packing of codes and β index)."""
        import math

        return math.log2(self.q) + math.log2(self.k) / self.d

    def _dither(self, shape, dtype, device):
        if self.dither_seed is None:
            return None
        return voronoi_dither(tuple(shape), self.name, self.dither_seed, dtype=dtype, device=device)

    def quantize_full(self, x: torch.Tensor) -> NestedQuantResult:
        """Quantize (..., d) vectors in one pass: reconstruction, codes, β indices, overload."""
        if not torch.is_floating_point(x):
            raise TypeError(f"quantize needs a floating-point tensor, got {x.dtype}")
        self.codec._check(x)
        check_finite(x)
        out_dtype = x.dtype
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # half precision cannot hold the lattice arithmetic exactly
        q, codec = self.q, self.codec
        u = self._dither(x.shape, x.dtype, x.device)
        betas = self.betas.to(device=x.device)
        lim = 2.0 * q + 2.0
        lead = x.shape[:-1]
        best_err = torch.full(lead, float("inf"), dtype=x.dtype, device=x.device)
        best_x2 = torch.zeros_like(x)
        best_j = torch.zeros(lead, dtype=torch.int64, device=x.device)
        found = torch.zeros(lead, dtype=torch.bool, device=x.device)
        fit_x2 = best_x2.clone()
        fit_j = best_j.clone()
        for j in range(self.k):
            beta = float(betas[j])
            z = (x / beta).clamp(-lim, lim)
            if u is not None:
                z = z + u
            # |y2| <= 2(2q+3) after the clamp, so the exact coarse step can run in x's float dtype
            y2 = 2 * codec.lattice_point(z)
            if self.encoder == "nearest":
                x2 = codec.nearest_codeword2(x / beta if u is None else x / beta + u, point2=y2)  # unclamped
                ok = (x2 == y2).all(-1)
            else:
                x2, l2 = codec.reduce2(y2)
                ok = ~(l2 != 0).any(-1)
            rec = x2 * 0.5
            if u is not None:
                rec = rec - u
            err = (x - beta * rec).square().sum(-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_x2 = torch.where(better[..., None], x2, best_x2)
            best_j = torch.where(better, torch.full_like(best_j, j), best_j)
            if self.choose == "first_fit":
                take = ok & ~found
                fit_x2 = torch.where(take[..., None], x2, fit_x2)
                fit_j = torch.where(take, torch.full_like(fit_j, j), fit_j)
                found = found | ok
        if self.choose == "first_fit":
            sel_x2 = torch.where(found[..., None], fit_x2, best_x2)
            sel_j = torch.where(found, fit_j, best_j)
            over = ~found
        else:
            sel_x2, sel_j = best_x2, best_j
            # overload of the chosen β: its point is not the plain rounding of x / β
            over = self._overloaded(x, sel_j, sel_x2, u)
        rec = sel_x2 * 0.5
        if u is not None:
            rec = rec - u
        x_hat = betas.to(x.dtype)[sel_j][..., None] * rec
        codes = codec.codes_from_point2(sel_x2).to(torch.uint8)
        return NestedQuantResult(x_hat.to(out_dtype), codes, sel_j.to(torch.uint8), over)

    def _overloaded(self, x, j, x2, u) -> torch.Tensor:
        beta = self.betas.to(device=x.device, dtype=x.dtype)[j][..., None]
        z = (x / beta).clamp(-(2.0 * self.q + 2.0), 2.0 * self.q + 2.0)
        if u is not None:
            z = z + u
        y2 = 2 * self.codec.lattice_point(z)
        return (y2 != x2).any(-1)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes uint8 (..., d), beta_idx uint8 (...))``."""
        r = self.quantize_full(x)
        return r.codes, r.beta_idx

    def dequantize(self, codes: torch.Tensor, beta_idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``betas[beta_idx] * (decode(codes) - u)``, shape (..., d)."""
        if codes.shape[:-1] != beta_idx.shape:
            raise ValueError(f"codes {tuple(codes.shape)} and beta_idx {tuple(beta_idx.shape)} disagree: "
                             f"beta_idx must have the shape of codes without its last dimension")
        j = beta_idx.to(torch.int64)
        if j.numel() and (int(j.min()) < 0 or int(j.max()) >= self.k):
            raise ValueError(f"beta_idx must lie in [0, {self.k}), got max {int(j.max())}")
        rec = self.codec.decode(codes.to(torch.int64), dtype=dtype)
        u = self._dither(codes.shape, dtype, codes.device)
        if u is not None:
            rec = rec - u
        return self.betas.to(device=codes.device, dtype=dtype)[j][..., None] * rec

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize then dequantize (the reconstruction), same shape and dtype as ``x``."""
        return self.quantize_full(x).x_hat

    def __repr__(self) -> str:
        return (f"NestedLatticeQuantizer({self.name!r}, q={self.q}, betas={[round(b, 5) for b in self.betas.tolist()]}, "
                f"choose={self.choose!r}, dither_seed={self.dither_seed}"
                + ("" if self.codec.shift is None else f", shift={self.codec.shift.tolist()}")
                + ("" if self.encoder == "lattice" else f", encoder={self.encoder!r}") + ")")


def shift_candidates(name: str, d: int | None = None) -> torch.Tensor:
    """Representatives of every class of ``½Z^d`` modulo ``Λ`` (plus duplicates): ``{0, ½}^d`` and,
    for E8 (where ``{0, ½}^8`` misses the odd-sum integer classes), ``e_0 + {0, ½}^8``.  (m, d) float64."""
    dim = VoronoiCodec(name, 2, d).d
    grid = torch.tensor([[(i >> (dim - 1 - k)) & 1 for k in range(dim)] for i in range(2**dim)],
                        dtype=torch.float64) * 0.5
    if name == "E8":
        e0 = torch.zeros(dim, dtype=torch.float64)
        e0[0] = 1.0
        grid = torch.cat([grid, grid + e0])
    return grid


def search_shift(name: str, q: int, n_samples: int = 4096, seed: int = 0, betas=(1.4, 1.6, 1.8),
                 d: int | None = None) -> list[dict]:
    """Monte-Carlo Gaussian MSE of the shifted code ``(Λ + a) ∩ qV`` with the nearest-codeword
    encoder, for every candidate shift (:func:`shift_candidates`) and encoder scale in ``betas``,
    after the least-squares gain (as the per-column fp16 gain of the benchmark applies it).
    Returns one dict per shift (sorted, best first): ``shift``, ``beta``, ``mse``."""
    gen = torch.Generator().manual_seed(int(seed))
    dim = VoronoiCodec(name, q, d).d
    x = torch.randn(n_samples, dim, generator=gen, dtype=torch.float64)
    out = []
    seen = set()
    for a in shift_candidates(name, d):
        codec = VoronoiCodec(name, q, d, shift=a)
        key = tuple(sorted(map(tuple, codec.codebook().tolist())))
        if key in seen:  # same codebook as an earlier shift
            continue
        seen.add(key)
        best = None
        for beta in betas:
            y = beta * codec.nearest_codeword2(x / beta) * 0.5
            g = (x * y).sum() / (y * y).sum()
            mse = float((x - g * y).square().mean())
            if best is None or mse < best[1]:
                best = (beta, mse)
        out.append({"shift": a.tolist(), "beta": best[0], "mse": best[1]})
    return sorted(out, key=lambda r: r["mse"])
