"""Gaussian matrix-product experiments: how close column-wise codes get to Γ(R).

Setting: ``A (n×a)``, ``B (n×b)`` iid N(0,1) drawn from ``torch.Generator().manual_seed(seed)``.
Every column ``x ∈ R^n`` is encoded on its own (a *stream*, see :mod:`llmquant.lattice.rate`):

1. scale ``s = ||x|| / sqrt(n)`` and unit-variance entries ``u = x / s`` (the encoder's private
   normalisation; no mean is used: the columns are zero-mean by construction);
2. ``u`` is quantized (nested lattice on its d-vectors, or a clipped uniform scalar code);
3. one fp16 number per column is stored: the least-squares gain ``c = <x, x_hat>/||x_hat||^2``
   (MMSE shrinkage and de-normalisation in one), and the decoder returns ``c · x_hat``.

Known-variance protocol (``Method(gain=False)``, scalar and box codes): the entries are known to be N(0, 1)
(the setting of Γ itself), so steps 1 and 3 are skipped: ``x`` is encoded as it is, the decoder returns
``x_hat``, and nothing but the code words is stored (box b = 3: exactly 4 bits per entry; 2^B-level scalar:
exactly B).  This separates the code from the per-column side information, which costs ``16/n`` bits.

No rotation is applied: iid Gaussian columns are already rotation invariant (a random
rotation would leave every statistic here unchanged).  Optional subtractive dither for the
lattice codes (``dither_seed``).

Reported distortion: ``E ||AᵀB - ÂᵀB̂||_F^2 / (n a b)`` measured in float64, against
``Γ(R_total)`` where ``R_total`` is the *stored* bits per entry: what a deployable layout writes, fp16
gain included.  Box codes (``kind="box"``, :class:`llmquant.lattice.box.BoxCodec`): their packed int32
words; scalar codes with 2^B levels: B bits per entry; Voronoi codes: the layout the current
``LatticeLinear`` stores (:class:`llmquant.lattice.codec.VoronoiNibbleCodec`: a nibble per coordinate,
``ceil(log2 q)`` bits for q > 16, plus the β index at ``ceil(log2 k)`` bits per vector, each part in
whole int32 per column).  ``info_rate`` is the information rate of the exact mixed-radix packer
(:func:`llmquant.lattice.rate.stream_bits`), which the Voronoi rows used to report as their rate.

Below R* (rate 0.5): a shared Johnson–Lindenstrauss sketch.  ``S (n'×n)`` has orthonormal rows:
the subsampled randomized Hadamard transform ``S = P H D / sqrt(n)`` (``D`` random signs, ``H``
the Sylvester Hadamard matrix applied by a fast Walsh–Hadamard transform, ``P`` keeps ``n'`` random
coordinates), all drawn from one seed shared by encoder and decoder (no bits).  A Gaussian ``S``
would also work but its non-orthogonal rows add estimator variance, and orthonormalising a
Gaussian by QR costs O(n n'^2).  ``SA`` and ``SB`` are encoded column-wise at the base rate ``R_q`` and the estimate is
``(SÂ)ᵀ(SB̂)`` (scale 1: for iid Gaussian data the discarded ``n - n'`` directions are independent
of the kept ones, so the unscaled estimate is the MMSE one among scalings).  ``n' = n R / R_q``
rounded down to a multiple of 8, and the rate is the sketch's bits divided by ``n``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from llmquant.lattice.beta_sets import load_beta_set
from llmquant.lattice.box import BoxCodec, shipped_box_codec
from llmquant.lattice.nested import NestedLatticeQuantizer, load_shift
from llmquant.lattice.rate import scalar_stream_bits, stream_bits

#: fp16 gain per column
SIDE_BITS = 16


@dataclass(frozen=True)
class Method:
    """One quantization method: ``kind`` "lattice" (name, q, k, choose), "scalar" (levels = q) or "box"
    (box code of width b = q, shipped setting ``box`` in {"lattice", "best", "int", "table", "beta_tables", ...}:
    :func:`llmquant.lattice.box.load_box_setting`; ``lattice`` and ``k`` are informational).
    ``shift``: use the shipped shifted code for (lattice, q) (:func:`llmquant.lattice.nested.load_shift`:
    shift vector, nearest-codeword encoder and its β; needs k == 1).  ``gain=False`` (scalar and box only): the
    known-variance protocol of the module docstring, no side information."""

    kind: str
    lattice: str
    q: int
    k: int = 1
    choose: str = "first_fit"
    dither_seed: int | None = None
    shift: bool = False
    box: str | None = None
    gain: bool = True

    @property
    def label(self) -> str:
        tail = "" if self.gain else "-nogain"
        if self.kind == "scalar":
            return f"scalar-{self.q}lvl{tail}"
        if self.kind == "box":
            return f"box-b{self.q}-{self.box}{tail}"
        rule = "" if self.choose == "first_fit" else "-minerr"
        return f"{self.lattice}-q{self.q}-k{self.k}{rule}" + ("-shift" if self.shift else "")


def gaussian_pair(n: int, a: int, b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A (n×a)``, ``B (n×b)`` iid N(0,1), float64, from one seeded generator."""
    gen = torch.Generator().manual_seed(int(seed))
    A = torch.randn(n, a, generator=gen, dtype=torch.float64)
    B = torch.randn(n, b, generator=gen, dtype=torch.float64)
    return A, B


def _gauss_mse_scalar(levels: int, step: float) -> float:
    """E (X - Q(X))^2 for X ~ N(0,1) and the midrise uniform quantizer with ``levels`` cells of
    width ``step`` (outer cells unbounded), by exact per-cell integrals (erf / Gaussian pdf)."""
    sq2 = math.sqrt(2.0)

    def Phi(t):
        return 0.5 * (1.0 + math.erf(t / sq2)) if math.isfinite(t) else (1.0 if t > 0 else 0.0)

    def phi(t):
        return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) if math.isfinite(t) else 0.0

    total = 0.0
    for i in range(levels):
        lo = -math.inf if i == 0 else (i - levels / 2) * step
        hi = math.inf if i == levels - 1 else (i + 1 - levels / 2) * step
        c = (i + 0.5 - levels / 2) * step
        # ∫ (x - c)^2 φ = ∫ x^2 φ - 2c ∫ x φ + c^2 ∫ φ;  ∫ x φ = -φ|, ∫ x^2 φ = (Φ - xφ)|
        p = Phi(hi) - Phi(lo)
        m1 = phi(lo) - phi(hi)
        m2 = p + (lo * phi(lo) if math.isfinite(lo) else 0.0) - (hi * phi(hi) if math.isfinite(hi) else 0.0)
        total += m2 - 2 * c * m1 + c * c * p
    return total


@functools.cache
def optimal_scalar_step(levels: int) -> float:
    """Step of the MSE-optimal clipped uniform quantizer for N(0,1) (golden-section search)."""
    lo, hi = 1e-3, 8.0 / max(levels - 1, 1) + 2.0
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(100):
        c, d = b - g * (b - a), a + g * (b - a)
        if _gauss_mse_scalar(levels, c) < _gauss_mse_scalar(levels, d):
            b = d
        else:
            a = c
    return 0.5 * (a + b)


def scalar_quantize(u: torch.Tensor, levels: int) -> torch.Tensor:
    """Clipped midrise uniform quantizer with the Gaussian-optimal step; returns reconstructions."""
    step = optimal_scalar_step(levels)
    i = torch.clamp(torch.floor(u / step + levels / 2), 0, levels - 1)
    return (i + 0.5 - levels / 2) * step


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(t.dtype)


def box_codec(method: Method) -> BoxCodec:
    """The :class:`BoxCodec` of a ``kind="box"`` method (shipped setting ``method.box`` for b = ``method.q``)."""
    return shipped_box_codec(method.q, method.box or "lattice")


def stored_stream_bits(n: int, method: Method) -> int:
    """Stored bits of one column of ``n`` entries, fp16 gain included unless ``method.gain`` is False (module
    docstring)."""
    side = SIDE_BITS if method.gain else 0
    if not method.gain and method.kind not in ("scalar", "box"):
        raise ValueError(f"gain=False (known variance) is defined for scalar and box codes, not {method.kind!r}")
    if method.kind == "scalar":
        if method.q & (method.q - 1):
            return scalar_stream_bits(n, method.q, side)  # not a power of two: mixed radix
        return n * (method.q.bit_length() - 1) + side
    if method.kind == "box":
        return 32 * box_codec(method).packed_int32_per_row(n // 8) + side
    d = 4 if method.lattice == "D4" else 8
    nv = n // d
    cw = 4 if method.q <= 16 else math.ceil(math.log2(method.q))
    w = 0 if method.k <= 1 else math.ceil(math.log2(method.k))
    return 32 * math.ceil(n * cw / 32) + 32 * math.ceil(nv * w / 32) + SIDE_BITS


def encode_columns(M: torch.Tensor, method: Method) -> tuple[torch.Tensor, int, int]:
    """Encode every column of ``M (n×m)`` separately; returns ``(M_hat, stored_bits, info_bits)``: the
    exact totals of all stored columns and of the mixed-radix information (side information included)."""
    n, m = M.shape
    if not method.gain:  # known N(0, 1) entries: no normalisation, no gain, only the words are stored
        U = M.to(torch.float32)
        if method.kind == "scalar":
            Xh = scalar_quantize(U, method.q).to(torch.float64)
        elif method.kind == "box" and n % 8 == 0:
            Xh = box_codec(method).fake_quant(U.T.reshape(m, n // 8, 8)).reshape(m, n).T.to(torch.float64)
        else:
            raise ValueError(f"gain=False needs a scalar or box method and n % 8 == 0, got {method.kind!r}, n={n}")
        bits = m * stored_stream_bits(n, method)
        return Xh, bits, bits
    s = M.norm(dim=0) / math.sqrt(n)
    if (s == 0).any():
        raise ValueError("a column is identically zero; the Gaussian experiment expects nonzero columns")
    U = (M / s).to(torch.float32)
    if method.kind == "scalar":
        Xh = scalar_quantize(U, method.q).to(torch.float64)
        info = m * scalar_stream_bits(n, method.q, SIDE_BITS)
    elif method.kind == "box":
        if n % 8:
            raise ValueError(f"n={n} must be a multiple of 8")
        Xh = box_codec(method).fake_quant(U.T.reshape(m, n // 8, 8)).reshape(m, n).T.to(torch.float64)
        info = m * stored_stream_bits(n, method)
    else:
        d = 4 if method.lattice == "D4" else 8
        if n % d:
            raise ValueError(f"n={n} must be a multiple of the lattice dimension {d}")
        extra = {}
        if method.shift:
            if method.k != 1:
                raise ValueError("the shipped shifted codes have one β (k=1)")
            cfg = load_shift(method.lattice, method.q)
            betas = torch.tensor(cfg["betas"])
            extra = {"shift": cfg["shift"], "encoder": cfg["encoder"]}
        else:
            betas = load_beta_set(method.lattice, method.q, method.k, method.choose)
        nq = NestedLatticeQuantizer(method.lattice, method.q, betas, choose=method.choose,
                                    dither_seed=method.dither_seed, d=d if method.lattice == "Z" else None, **extra)
        # column j's entries as n/d consecutive d-vectors
        Xh = nq.fake_quant(U.T.reshape(m, n // d, d)).reshape(m, n).T.to(torch.float64)
        info = m * stream_bits(n, method.q, method.k, d, SIDE_BITS)
    gain = (M * Xh).sum(0) / Xh.square().sum(0).clamp_min(1e-300)
    return _fp16(gain) * Xh, m * stored_stream_bits(n, method), info


def _fwht_rows(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform along dim 0 (length a power of two): the Sylvester
    recursion H_{2m} = [[H_m, H_m], [H_m, -H_m]] applied butterfly by butterfly."""
    n = x.shape[0]
    h = 1
    y = x.clone()
    while h < n:
        y = y.view(n // (2 * h), 2, h, -1)
        y = torch.stack((y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]), 1)
        h *= 2
    return y.reshape(x.shape)


def jl_sketch_apply(M: torch.Tensor, n_keep: int, seed: int) -> torch.Tensor:
    """``S M`` for the seeded SRHT ``S = P H D / sqrt(n)`` (orthonormal rows), ``M (n×m)``, n = 2^j."""
    n = M.shape[0]
    if n & (n - 1):
        raise ValueError(f"the Hadamard sketch needs n a power of two, got n={n}")
    if not 0 < n_keep <= n:
        raise ValueError(f"sketch size must be in (0, {n}], got {n_keep}")
    gen = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n, 1), generator=gen).to(M.dtype) * 2 - 1
    keep = torch.randperm(n, generator=gen)[:n_keep]
    return _fwht_rows(signs * M)[keep] / math.sqrt(n)


@dataclass
class Measurement:
    method: Method
    rate: float
    mse: float
    sketch: int | None = None  # n' when a JL sketch was used
    info_rate: float | None = None  # mixed-radix information rate (``rate`` is the stored one)


def measure(A: torch.Tensor, B: torch.Tensor, method: Method, target_rate: float | None = None,
            sketch_seed: int = 0) -> Measurement:
    """Quantize ``A`` and ``B`` column-wise with ``method``; with ``target_rate`` (below the method's
    own rate) first apply the shared JL sketch sized to reach it.  Returns the measured distortion."""
    n, a = A.shape
    b = B.shape[1]
    exact = A.T @ B
    n_keep = None
    if target_rate is not None:
        base_rate = _method_rate(method, n)
        n_keep = int(n * target_rate / base_rate) // 8 * 8
        if n_keep < 8:
            raise ValueError(f"target rate {target_rate} is too low for n={n} with a base rate of {base_rate:.3f}")
        A = jl_sketch_apply(A, n_keep, sketch_seed)
        B = jl_sketch_apply(B, n_keep, sketch_seed)
    Ah, bits_a, info_a = encode_columns(A, method)
    Bh, bits_b, info_b = encode_columns(B, method)
    mse = float((exact - Ah.T @ Bh).square().sum()) / (n * a * b)
    rate = (bits_a + bits_b) / (n * (a + b))
    return Measurement(method, rate, mse, n_keep, (info_a + info_b) / (n * (a + b)))


def _method_rate(method: Method, n: int) -> float:
    """Rate of one column of ``n`` entries that sizes the JL sketch: the stored rate, except for the
    (non-deployable) Voronoi rows, which keep their information-rate design (``info_rate ≈ target``)."""
    if method.kind == "lattice":
        d = 4 if method.lattice == "D4" else 8
        return stream_bits(n, method.q, method.k, d, SIDE_BITS) / n
    return stored_stream_bits(n, method) / n
