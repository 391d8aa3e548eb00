"""Voronoi (nested-lattice) codes: fine lattice Λ, coarse lattice qΛ.

Codebook: ``C = Λ ∩ q V(Λ)`` where ``V`` is the Voronoi cell of Λ at 0, with ties on the
boundary of ``qV`` broken by the equivariant rules of :mod:`.closest_point`; ``|C| = q^d``
(one representative per coset of ``Λ / qΛ``).

* encode: ``y = Q_Λ(x)``, ``codes = (y G^{-1}) mod q``  (d integers in [0, q)).
* decode: ``y' = codes @ G``; ``x_hat = y' - q Q_Λ(y' / q)``.
* ``decode(encode(x)) == Q(x) - q Q(Q(x)/q)`` exactly, since ``y' - y ∈ qΛ`` and ``Q`` is
  Λ-equivariant; the coarse step is evaluated in exact integer arithmetic
  (:func:`.closest_point.coarse_closest_int`) so no float rounding can pick a different
  representative.
* overload: ``Q(Q(x)/q) != 0``, i.e. ``Q(x)`` lies outside the codebook and the decoder
  returns a point shifted by a nonzero vector of ``qΛ``.

Shifted codes (``shift=a``, Conway & Sloane's Voronoi codes with an offset): codewords are the
points of ``Λ + a`` in ``qV`` (one per coset of ``(Λ + a) / qΛ``, same tie rules), so

* encode: ``y = Q_Λ(x - a) + a``, ``codes = ((y - a) G^{-1}) mod q``;
* decode: ``y' = codes @ G + a``; ``x_hat = y' - q Q_Λ(y' / q)``.

``a`` must lie in ``½ Z^d`` (so ``2y`` stays an integer vector and the exact integer coarse step
applies unchanged).  ``shift=None`` (default) is the unshifted code, bit for bit.  For small
codebooks (``q^d <= MAX_CODEBOOK = 65536``) :meth:`VoronoiCodec.codebook` lists all codewords and
:meth:`VoronoiCodec.nearest_codeword2` is the exhaustive (MSE-optimal) encoder; at ``q <= 3``
the lattice encoder ``Q_Λ`` then ``mod qΛ`` wraps overloaded points to the far side of the
codebook and is much worse than nearest-codeword encoding.

A kernel decoding codes must reproduce the integer coarse step (``2 y' = codes @ 2G`` is an
integer vector; apply the D8/E8 rounding rules to ``2y' / (2q)`` with floor division).
"""

from __future__ import annotations

import torch

from .closest_point import check_finite, check_lattice, closest_point, coarse_closest_int, generator_matrix

#: largest codebook that :meth:`VoronoiCodec.codebook` enumerates (q^d codewords).
MAX_CODEBOOK = 65536

#: fp32 represents every half-integer exactly only below 2^22.
_MAX_ABS = 2.0**22


class VoronoiCodec:
    """Voronoi code of lattice ``name`` with coarse lattice ``q * name``.

    ``name`` in {"Z", "D4", "D8", "E8"}; ``d`` is the dimension for ``Z`` (default 8).
    ``q >= 2`` integer.  Codes are int64 tensors (..., d) with entries in [0, q).
    ``shift``: ``None`` (unshifted) or a length-d vector with entries in ½Z (see module docstring).
    """

    def __init__(self, name: str = "E8", q: int = 14, d: int | None = None, shift=None):
        dim = check_lattice(name)
        if dim is None:
            dim = 8 if d is None else int(d)
        elif d is not None and d != dim:
            raise ValueError(f"lattice {name} has dimension {dim}, got d={d}")
        if int(q) != q or q < 2:
            raise ValueError(f"q must be an integer >= 2 (the nesting ratio), got {q!r}")
        self.name = name
        self.q = int(q)
        self.d = dim
        g = generator_matrix(name, dim)
        self._g2 = (2 * g).round()  # 2G is an integer matrix for all our lattices
        self._ginv = torch.linalg.inv(g)
        self._cache: dict = {}
        self.shift = None
        if shift is not None:
            a = torch.as_tensor(shift, dtype=torch.float64).flatten()
            if a.numel() != dim:
                raise ValueError(f"shift must have {dim} entries for {name}, got {a.numel()}")
            if not torch.isfinite(a).all() or (2 * a != (2 * a).round()).any() or float(a.abs().max()) > 64:
                raise ValueError(f"shift entries must be multiples of 1/2 with |a_i| <= 64, got {a.tolist()}")
            if bool((a != 0).any()):
                self.shift = a

    def _mats(self, device: torch.device, dtype: torch.dtype = torch.float64):
        """``(2G, G^{-1}, 2a or None)`` on ``device`` in ``dtype``, cached per (device, dtype)."""
        key = (str(device), dtype)
        if key not in self._cache:
            s2 = None if self.shift is None else (2 * self.shift).to(device=device, dtype=dtype)
            self._cache[key] = (self._g2.to(device=device, dtype=dtype), self._ginv.to(device=device, dtype=dtype), s2)
        return self._cache[key]

    def lattice_point(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest point of ``Λ + a`` to ``z`` (``Q_Λ(z)`` when unshifted); dtype of ``z``."""
        if self.shift is None:
            return closest_point(z, self.name)
        a = self.shift.to(device=z.device, dtype=z.dtype)
        return closest_point(z - a, self.name) + a

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.d:
            raise ValueError(f"expected a tensor of shape (..., {self.d}) for {self.name}, got {tuple(x.shape)}")

    # -- exact integer core -------------------------------------------------------------
    def reduce2(self, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voronoi reduction in doubled units: ``y2 = 2y`` (y ∈ Λ; integer-valued, int64 or float,
        see :func:`coarse_closest_int` for exactness ranges) -> (``2 (y - qλ)``, ``2λ``) with
        ``qλ = Q_{qΛ}(y)``."""
        l2 = coarse_closest_int(y2, self.name, self.q)
        return y2 - self.q * l2, l2

    def codes_from_point2(self, y2: torch.Tensor) -> torch.Tensor:
        """Coordinates ``((y - a) G^{-1}) mod q`` (int64) of points of ``Λ + a`` given as ``y2 = 2y``.

        Computed in the float dtype of ``y2`` (float64 for integer input); exact while the
        coordinates stay below the dtype's integer range (G^{-1} has entries in Z/4)."""
        dt = y2.dtype if torch.is_floating_point(y2) else torch.float64
        _, ginv, s2 = self._mats(y2.device, dt)
        y2 = y2.to(dt)
        if s2 is not None:
            y2 = y2 - s2
        coords = torch.round((y2 * 0.5) @ ginv).to(torch.int64)
        return torch.remainder(coords, self.q)

    def point2_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``2 (codes @ G + a)`` as an integer-valued float64 tensor (exact: small integers)."""
        g2, _, s2 = self._mats(codes.device)
        p2 = codes.to(torch.float64) @ g2
        return p2 if s2 is None else p2 + s2

    # -- public API ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., d) int64 in [0, q) of ``Q_Λ(x)`` modulo ``qΛ``.  ``x`` finite, |x| < 2^22."""
        self._check(x)
        check_finite(x)
        if x.numel() and float(x.abs().max()) >= _MAX_ABS:
            raise ValueError(
                f"input magnitude {float(x.abs().max()):.3g} >= 2^22: lattice points are not exactly "
                f"representable there; divide the input by a scale first"
            )
        y = self.lattice_point(x if torch.is_floating_point(x) else x.double())
        return self.codes_from_point2(2 * y.to(torch.float64))

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Voronoi representative ``c G - q Q(c G / q)`` of each code vector, shape (..., d)."""
        self._check(codes)
        if torch.is_floating_point(codes) or torch.is_complex(codes):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.q):
            raise ValueError(f"codes must lie in [0, {self.q}), got range [{int(codes.min())}, {int(codes.max())}]")
        x2, _ = self.reduce2(self.point2_from_codes(codes))
        return (x2.to(torch.float64) * 0.5).to(dtype)

    def overload(self, x: torch.Tensor) -> torch.Tensor:
        """True where ``Q(x)`` falls outside the codebook (decode(encode(x)) != Q(x)); shape (...)."""
        self._check(x)
        check_finite(x)
        y = self.lattice_point(x if torch.is_floating_point(x) else x.double())
        l2 = coarse_closest_int(2 * y.to(torch.float64), self.name, self.q)
        return (l2 != 0).any(-1)

    def codebook(self) -> torch.Tensor:
        """All ``q^d`` codewords (float64, (q^d, d)), row ``i`` decoding the base-q digits of ``i``
        (first coordinate most significant); needs ``q^d <= MAX_CODEBOOK``."""
        if "codebook" not in self._cache:
            size = self.q**self.d
            if size > MAX_CODEBOOK:
                raise ValueError(f"codebook of {self.name} with q={self.q} has {size} > {MAX_CODEBOOK} codewords")
            idx = torch.arange(size, dtype=torch.int64)[:, None]
            pw = self.q ** torch.arange(self.d - 1, -1, -1, dtype=torch.int64)
            codes = (idx // pw) % self.q
            self._cache["codebook"] = self.decode(codes, dtype=torch.float64)
        return self._cache["codebook"]

    def _relevant(self, device) -> torch.Tensor:
        """Voronoi-relevant vectors of Λ (float64, (m, d)): the minimal vectors ``±e_i`` (Z),
        ``±e_i ± e_j`` (D_n) and those plus ``(±½)^8`` with an even number of minus signs (E8)."""
        key = ("relevant", str(device))
        if key not in self._cache:
            d = self.d
            eye = torch.eye(d, dtype=torch.float64)
            if self.name == "Z":
                v = torch.cat([eye, -eye])
            else:
                rows = [s * eye[i] + t * eye[j] for i in range(d) for j in range(i + 1, d)
                        for s in (1, -1) for t in (1, -1)]
                if self.name == "E8":
                    for m in range(256):
                        signs = [(-1.0 if (m >> k) & 1 else 1.0) for k in range(8)]
                        if signs.count(-1.0) % 2 == 0:
                            rows.append(0.5 * torch.tensor(signs, dtype=torch.float64))
                v = torch.stack(rows)
            self._cache[key] = v.to(device)
        return self._cache[key]

    def nearest_codeword2(self, z: torch.Tensor, chunk: int | None = None,
                          point2: torch.Tensor | None = None) -> torch.Tensor:
        """``2c`` for the codeword ``c`` nearest to each ``z`` (..., d) (exhaustive search; ties go to
        the lowest codebook row), in ``z``'s dtype.  Needs ``q^d <= MAX_CODEBOOK``.

        Fast path (same result): when ``y = Q_{Λ+a}(z)`` is itself a codeword and ``z`` lies at
        distance ``> 1e-9`` inside the Voronoi cell of ``y`` (checked against every Voronoi-relevant
        vector), ``y`` is the unique nearest point of all of ``Λ + a`` by a squared-distance gap far
        above float64 rounding, hence also the exhaustive search's answer; only the remaining rows
        (overloaded or near a cell boundary) are searched exhaustively.  ``point2``: ``2 Q_{Λ+a}(z)`` when the
        caller already has it (it is only read where ``|z_i| <= 2q + 2``, where clamping changes nothing)."""
        self._check(z)
        cb = self.codebook().to(device=z.device, dtype=torch.float64)
        flat = z.reshape(-1, self.d).to(torch.float64)
        out = torch.empty_like(flat)
        rest = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        lim = 2.0 * self.q + 2.0  # beyond this every point of Λ + a is outside qV (see nested.py)
        inside = (flat.abs() <= lim).all(-1)
        if bool(inside.any()):
            zi = flat[inside]
            y2 = (2 * self.lattice_point(zi) if point2 is None
                  else point2.reshape(-1, self.d)[inside].to(torch.float64))
            _, l2 = self.reduce2(y2)
            v = self._relevant(flat.device)
            # distance from z to the facet of the cell of y orthogonal to v: (|v|^2/2 - (z-y).v) / |v|
            vn = v.norm(dim=-1)
            margin = ((0.5 * vn.square() - (zi - 0.5 * y2) @ v.T) / vn).amin(-1)
            fast = (l2 == 0).all(-1) & (margin > 1e-9)
            idx = inside.nonzero().squeeze(-1)
            out[idx[fast]] = y2[fast]
            rest[idx[fast]] = False
        ridx = rest.nonzero().squeeze(-1)
        if ridx.numel():
            c2n = cb.square().sum(-1)
            chunk = chunk or max(1, 2**21 // cb.shape[0])  # ~16 MB of distances per block
            for i in range(0, ridx.numel(), chunk):
                sel = ridx[i:i + chunk]
                # ||z - c||^2 - ||z||^2 = ||c||^2 - 2 z.c
                j = (c2n - 2 * flat[sel] @ cb.T).argmin(-1)
                out[sel] = 2 * cb[j]
        return out.reshape(z.shape).to(z.dtype)

    def __repr__(self) -> str:
        extra = "" if self.shift is None else f", shift={self.shift.tolist()}"
        return f"VoronoiCodec({self.name!r}, q={self.q}, d={self.d}{extra})"
