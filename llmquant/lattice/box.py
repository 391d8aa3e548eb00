"""Box codes: deployable lattice-type codes whose stored bits are exactly the counted bits.

Construction A.  ``C`` is a binary code of length 8 with a systematic encoder ``c(m)``:

* ``code="hamming"``: the extended Hamming code [8, 4, 4], 4-bit message,
  ``c(m) = (m_0, m_1, m_2, m_3, m_0^p, m_1^p, m_2^p, m_3^p)``, ``p = m_0^m_1^m_2^m_3`` (message bit
  ``m_i`` = bit ``i`` of ``m``).  Weights 0, 4 (14 words), 8; contains the all-ones word.
  ``L = C + 2Z^8 = {x ∈ Z^8 : x mod 2 ∈ C}`` is ``√2 E8`` up to an orthogonal map: covolume
  ``2^8/16 = 16 = (√2)^8``, minimum norm 4 (weight-4 words, ``±2 e_i``), 240 minimal vectors
  (``14 · 2^4 + 16``).  β index: 4 bits (16 scales).
* ``code="parity"``: the even-weight code [8, 7, 2], 7-bit message, ``c(m) = (m_0..m_6, parity(m))``;
  ``L = D8``.  β index: 1 bit (2 scales).  Measured better than Hamming at low rate (b = 1, 2).

Weights and activations are already randomly Hadamard-rotated, so we quantize directly in this
frame (no change of basis).  Every point is ``x = h + 2z``, ``h ∈ C``, ``z ∈ Z^8``.

Box code of width ``b ∈ {1, 2, 3}``: ``z_i ∈ [-2^(b-1), 2^(b-1) - 1]``, stored as ``u_i = z_i + 2^(b-1)``.
Per coordinate the level index is ``ℓ_i = 2 u_i + h_i ∈ [0, 2^(b+1))`` and the reconstruction of an
input 8-vector (inputs at unit variance per entry; callers divide by their row/column scale and
multiply it back) is

    v_i = β_j · λ[ℓ_i],    λ[ℓ] = sgn(c_ℓ) |c_ℓ|^γ,   c_ℓ = ℓ - 2^b + ½.

``γ = 1`` (default) is the lattice code ``β (L + ½·1) ∩ box``: ``v_i = β_j (h_i + 2 z_i + ½)``, i.e.
``2 v_i / β_j = 2ℓ_i - 2^(b+1) + 1`` is an odd integer in ``[-(2^(b+1) - 1), 2^(b+1) - 1]``.  Offset ½:
the integers ``h + 2z`` of one coordinate are ``[-2^b, 2^b - 1]`` (even ones for ``h_i = 0``, odd ones
for ``h_i = 1``), centred at -½; ½ centres them, and since ``1 ∈ C`` the point set is then
symmetric under ``x -> -x`` (``-(h + 2z + ½) = (1 - h) + 2(-z - 1) + ½``).  ``γ > 1`` companding
(finer levels near 0, for a Gaussian source) keeps the parity structure and the separable
encoder but is no longer a lattice; the decoder reads ``λ`` from a 2^(b+1)-entry table.  A free
antisymmetric table (``levels=``: the 2^b positive levels, found by search) generalises γ.

Per-β level tables (``levels=`` of shape ``(k, 2^b)``, one positive ascending half-table per β): ``v_i = β_j ·
λ_j[ℓ_i]``, i.e. a (2^(M+K) × 2^(b+1))-entry table ``β_j λ_j[ℓ]`` indexed by the word's ``j`` and ``ℓ_i``.  The
parity structure, the word layout, the stored bits and the separable exact encoder are unchanged (per β the
nearest level of each parity is searched in that β's table); only the codebook's shape may now change with the
scale: a large-norm vector gets a differently companded grid than a small one.  Found by Lloyd iterations on
Gaussian vectors (:func:`llmquant.lattice.box_tables.lloyd_tables`).

Exact nearest-codeword encoder.  For fixed ``(h, β)`` the squared error ``Σ_i (y_i - β λ[2u_i + h_i])^2``
is separable in ``u_i``: ``u_i`` = nearest entry of the ascending parity-``h_i`` levels
``λ[h_i], λ[2 + h_i], ...`` to ``y_i/β`` (the number of their midpoints below ``y_i/β``; for ``γ = 1``
``u_i - 2^(b-1) = clamp(round((y_i/β - ½ - h_i)/2))``).  Per β and coordinate we get the best error for parity 0 and 1
(``e0_i, e1_i``); codeword ``h`` costs ``Σ_i (h_i ? e1_i : e0_i)`` (a matrix product with the code's
(|C|, 16) selector), and the encoder takes the argmin over all ``|C| · k`` pairs ``(h, β)`` (256 for both
codes), ties to the smallest ``|C| j + m``.  No loop over vectors; chunks of 4096.

Word layout (one word of ``W = 8b + 8`` bits per 8-vector, every bit counted; ``M`` = message bits,
4 or 7, ``K = 8 - M`` = β-index bits, 4 or 1):

    bits [b·i, b·(i+1))   u_i        (unsigned, i = 0..7)
    bits [8b, 8b+M)       m          (message of h: hamming h_0..3 = m bits, h_{4+i} = m_i ^ parity(m);
                                      parity h_0..6 = m bits, h_7 = parity(m))
    bits [8b+M, 8b+8)     j          (β index)

``W = 16, 24, 32`` for ``b = 1, 2, 3``: 2, 3, 4 stored bits per entry.  :meth:`BoxCodec.encode` returns
words as int32 (``b = 3``: two's complement, read as uint32).  Storage (:meth:`BoxCodec.pack`): the
little-endian bit stream of one row's words, word ``v`` at stream bits ``[W v, W (v+1))``, stored in
int32 (stream bit ``t`` = bit ``t % 32`` of int32 ``t // 32``), one stream per row (no cross-row
packing), last int32 zero-padded.  ``b = 3``: one int32 per 8-vector; ``b = 1``: bytewise an int16
array; ``b = 2``: four words per three int32.  A GPU thread decodes word ``v`` from the int64
``(s[t+1] << 32 | s[t]) >> o``, ``t = W v // 32``, ``o = W v % 32``, masked to W bits (``s[t+1]`` only
when ``o + W > 32``; it is then inside the row).  The row scale is
one fp16 per row, counted in :meth:`BoxCodec.stored_bits_per_entry`.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch

from .closest_point import check_finite

BOX_BETA_FILE = Path(__file__).resolve().parent / "data" / "box_beta_sets.json"
FORMAT_VERSION = 1
WIDTHS = (1, 2, 3)
#: code -> (message bits, β-index bits)
CODES = {"hamming": (4, 4), "parity": (7, 1)}


@functools.lru_cache(maxsize=4)
def codewords(code: str = "hamming") -> torch.Tensor:
    """All codewords of ``code``, row ``m`` = ``c(m)``; int64 (2^M, 8)."""
    M = _check_code(code)[0]
    m = torch.arange(1 << M)
    bits = (m[:, None] >> torch.arange(M)) & 1
    par = bits.sum(1, keepdim=True) & 1
    return torch.cat([bits, bits ^ par], 1) if code == "hamming" else torch.cat([bits, par], 1)


def hamming_codewords() -> torch.Tensor:
    """The 16 codewords of the extended Hamming [8, 4, 4] code, int64 (16, 8)."""
    return codewords("hamming")


def construction_a_points(radius2: int, code: str = "hamming") -> torch.Tensor:
    """All points of ``L = C + 2Z^8`` with squared norm ``<= radius2`` (small radii only; tests)."""
    r = int(radius2**0.5) + 1
    vals = torch.arange(-r, r + 1)
    grid = torch.cartesian_prod(*([vals] * 8))
    grid = grid[grid.square().sum(1) <= radius2]
    keys = (codewords(code) << torch.arange(8)).sum(1)
    par = ((grid % 2) << torch.arange(8)).sum(1)
    return grid[torch.isin(par, keys)]


def box_levels(b: int, gamma: float | None = 1.0, levels=None) -> torch.Tensor:
    """``λ (2^(b+1),)`` float32 ascending: ``sgn(c)|c|^γ``, ``c = ℓ - 2^b + ½``; or, with ``levels`` (the
    2^b positive levels, ascending), the antisymmetric table ``(-levels reversed, levels)``; with ``levels`` of
    shape ``(k, 2^b)`` (per-β tables), ``(k, 2^(b+1))``, one antisymmetric table per row."""
    if levels is not None:
        pos = torch.as_tensor(levels, dtype=torch.float64)
        rows = pos.reshape(-1, pos.shape[-1]) if pos.dim() == 2 else pos.reshape(1, -1)
        if (pos.dim() > 2 or rows.shape[1] != 1 << b or not torch.isfinite(rows).all() or (rows <= 0).any()
                or (rows.diff(dim=1) <= 0).any()):
            raise ValueError(f"levels must be {1 << b} positive ascending values (or k rows of them, one per β), "
                             f"got shape {tuple(pos.shape)}: {pos.tolist()}")
        full = torch.cat([-rows.flip(1), rows], 1).float()
        return full if pos.dim() == 2 else full[0]
    c = torch.arange(1 << (b + 1), dtype=torch.float64) - (1 << b) + 0.5
    return (c.sign() * c.abs() ** float(gamma)).float()


@functools.lru_cache(maxsize=1)
def _box_table() -> dict:
    if not BOX_BETA_FILE.is_file():
        raise FileNotFoundError(f"shipped box-code beta sets not found at {BOX_BETA_FILE}; regenerate them with "
                                f"`python -m llmquant.lattice.beta_search --box --out {BOX_BETA_FILE}`")
    return json.loads(BOX_BETA_FILE.read_text())


def load_box_setting(b: int, variant: str = "lattice") -> dict:
    """Shipped box-code setting for width ``b`` from ``data/box_beta_sets.json``: dict with ``code``,
    ``gamma``, ``betas`` (+ search evidence).  ``variant``: "lattice" (Hamming, γ = 1: the √2E8 code),
    "best" (the measured best code/γ for this b), "int" / "int8" (Hamming, γ = 1, integer β ratios), "d8int8" (b = 3
    only: D8 = parity code, γ = 1, 2 integer β ratios <= 8, every coordinate fits int8; for ``kernels/box_w4a4.py``)."""
    try:
        return dict(_box_table()["sets"][variant][str(int(b))])
    except KeyError:
        raise KeyError(f"no shipped box setting for b={b}, variant={variant!r}; see {BOX_BETA_FILE}") from None


def _check_width(b: int) -> int:
    if b not in WIDTHS:
        raise ValueError(f"box width b must be one of {WIDTHS}, got {b!r}")
    return int(b)


def _check_code(code: str) -> tuple[int, int]:
    if code not in CODES:
        raise ValueError(f"code must be one of {sorted(CODES)}, got {code!r}")
    return CODES[code]


def check_codec_header(d: dict, kind: str, version: int) -> None:
    """Raise ValueError unless a codec's ``to_dict()`` has ``kind`` and format ``version`` (loud on mismatch)."""
    if d.get("kind") != kind:
        raise ValueError(f"not a {kind!r} codec: {d.get('kind')!r}")
    if d.get("version") != version:
        raise ValueError(f"{kind} codec format version {d.get('version')} is not the supported {version}")


class BoxCodec:
    """Box code of width ``b`` (module docstring); implements :class:`llmquant.lattice.codec.LatticeCodec`.

    ``code``: "hamming" (√2E8, 16 β) or "parity" (D8, 2 β); ``betas``: ``Tensor[2^K]`` positive, strictly
    ascending (default: the shipped set for (b, code, γ=1) / (b, "best") ); ``gamma``: level companding
    (1 = lattice).  Inputs ``(..., 8)`` at unit variance per entry; words int32 ``(...)``.
    """

    kind = "box"
    dim = 8

    def __init__(self, b: int = 3, betas=None, code: str = "hamming", gamma: float | None = 1.0, levels=None):
        self.b = _check_width(b)
        self.m_bits, self.k_bits = _check_code(code)
        self.code = code
        self.level_table = None if levels is None else box_levels(self.b, levels=levels)[..., 1 << self.b:]
        self.gamma = None if levels is not None else float(gamma)
        if self.gamma is not None and not (0.25 <= self.gamma <= 4.0):
            raise ValueError(f"gamma must lie in [0.25, 4], got {gamma}")
        if betas is None:
            betas = _default_betas(self.b, code, self.gamma)
        betas = torch.as_tensor(betas, dtype=torch.float32).flatten()
        if betas.numel() != 1 << self.k_bits:
            raise ValueError(f"code {code!r} stores a {self.k_bits}-bit β index: need {1 << self.k_bits} betas, "
                             f"got {betas.numel()}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas[1:] <= betas[:-1]).any():
            raise ValueError(f"betas must be finite, positive and strictly ascending, got {betas.tolist()}")
        if self.level_table is not None and self.level_table.dim() == 2 and self.level_table.shape[0] != betas.numel():
            raise ValueError(f"per-β level tables: need one row per β ({betas.numel()}), got "
                             f"{self.level_table.shape[0]}")
        self.betas = betas
        self.levels = box_levels(self.b, self.gamma, self.level_table)

    @property
    def per_beta_levels(self) -> bool:
        """True when every β has its own level table (``levels`` is ``(k, 2^(b+1))``): ``v_i = β_j λ_j[ℓ_i]``."""
        return self.levels.dim() == 2

    @property
    def is_lattice(self) -> bool:
        """True for a lattice box code (γ = 1, no level table: uniform levels, the points of √2E8 / D8 in a box),
        the codes the integer kernels (W4A4, the activation encode) and the W4A16 lattice path read."""
        return self.gamma == 1.0 and self.level_table is None

    # ------------------------------------------------------------------ sizes and layout
    @property
    def word_bits(self) -> int:
        """Bits per 8-vector word: ``8b + M + K = 8b + 8``."""
        return 8 * self.b + self.m_bits + self.k_bits

    def packed_int32_per_row(self, n_vec: int) -> int:
        """int32 of one packed row of ``n_vec`` 8-vectors: ``ceil(W n_vec / 32)``."""
        return -(-self.word_bits * int(n_vec) // 32)

    def stored_bits_per_entry(self, n_cols: int | None = None, scale_bits: int = 16) -> float:
        """Stored bits per entry of a row of ``n_cols`` entries (``n_cols % 8 == 0``): its packed int32
        plus ``scale_bits`` for the row scale.  ``n_cols=None``: the asymptotic ``W / 8``."""
        if n_cols is None:
            return self.word_bits / 8
        if n_cols % 8 or n_cols <= 0:
            raise ValueError(f"n_cols must be a positive multiple of 8, got {n_cols}")
        return (32 * self.packed_int32_per_row(n_cols // 8) + scale_bits) / n_cols

    @property
    def kernel_layout(self) -> dict:
        """What a kernel needs to decode a word (module docstring), JSON-serialisable."""
        b, M = self.b, self.m_bits
        cw = ("h_i = (m >> i) & 1 for i < 4; h_{4+i} = ((m >> i) & 1) ^ (popcount(m) & 1)" if self.code == "hamming"
              else "h_i = (m >> i) & 1 for i < 7; h_7 = popcount(m) & 1")
        return {
            "kind": self.kind, "version": FORMAT_VERSION, "dim": 8, "code": self.code,
            "word_bits": self.word_bits,
            "storage": "int32 little-endian bit stream per row; word v at stream bits [word_bits*v, word_bits*(v+1))",
            "u_fields": {"bits": b, "shift": [b * i for i in range(8)]},
            "message": {"shift": 8 * b, "bits": M},
            "beta_index": {"shift": 8 * b + M, "bits": self.k_bits},
            "codeword": cw,
            "value": ("x_i = scale * betas[j] * levels[j][2 u_i + h_i]" if self.per_beta_levels
                      else "x_i = scale * betas[j] * levels[2 u_i + h_i]"),
            "levels": self.levels.tolist(),
            "lattice": self.gamma == 1.0,
            "odd_int": "2 levels[l] = 2 l - 2^(b+1) + 1" if self.gamma == 1.0 else None,
            "betas": self.betas.tolist(),
            "scale": "fp16 per row",
        }

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION, "b": self.b, "code": self.code, "gamma": self.gamma,
                "levels": None if self.level_table is None else self.level_table.tolist(), "betas": self.betas.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> BoxCodec:
        check_codec_header(d, cls.kind, FORMAT_VERSION)
        return cls(int(d["b"]), torch.tensor(d["betas"], dtype=torch.float32), d["code"], d.get("gamma"), d.get("levels"))

    def __repr__(self) -> str:
        return (f"BoxCodec(b={self.b}, code={self.code!r}, gamma={self.gamma}, "
                f"betas=[{self.betas[0]:.4g} .. {self.betas[-1]:.4g}])")

    # ------------------------------------------------------------------ encoder
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(words int32 (...), x_hat (..., 8))``: the nearest codeword of ``x (..., 8)`` and its words
        (:func:`llmquant.lattice.box_encode.nearest`: :func:`box_nearest`'s search with fewer tensor ops)."""
        from . import box_encode

        res = box_encode.nearest(self, x)
        return res[4], res[3]

    def quantize_reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`quantize` through :func:`box_nearest` and the word layout written out (the spec)."""
        j, m, u, x_hat = box_nearest(x, self.b, self.betas, self.code, self.gamma, levels=self.level_table)
        b = self.b
        w = (u << (b * torch.arange(8, device=u.device))).sum(-1) | (m << (8 * b)) | (j << (8 * b + self.m_bits))
        return _to_int32(w), x_hat

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Words int32 ``(...)`` of the nearest codewords of ``x (..., 8)``."""
        from . import box_encode

        return box_encode.nearest(self, x, want_xhat=False)[4]

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest codeword, same shape and dtype as ``x``."""
        from . import box_encode

        return box_encode.nearest(self, x, want_words=False)[3]

    # ------------------------------------------------------------------ decoder
    def fields(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u (..., 8), m (...), j (...))`` int64 from words (any integer dtype)."""
        if torch.is_floating_point(words) or words.dtype == torch.bool:
            raise TypeError(f"words must be an integer tensor, got {words.dtype}")
        b, M = self.b, self.m_bits
        w = words.to(torch.int64) & ((1 << self.word_bits) - 1)
        u = (w[..., None] >> (b * torch.arange(8, device=w.device))) & ((1 << b) - 1)
        return u, (w >> (8 * b)) & ((1 << M) - 1), (w >> (8 * b + M)) & ((1 << self.k_bits) - 1)

    def decode(self, words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(..., 8)``: ``β_j λ[2 u_i + h_i]`` (unit-variance units).  float32/float16/bfloat16: the table-driven
        decoder :func:`llmquant.lattice.box_lut.decode_flat` (bit-identical to :meth:`decode_reference`)."""
        from . import box_lut

        if box_lut.supported(dtype) and not (torch.is_floating_point(words) or words.dtype == torch.bool):
            return box_lut.decode_flat(self, words.reshape(-1, 1), dtype).view(*words.shape, 8)
        return self.decode_reference(words, dtype)

    def decode_reference(self, words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """:meth:`decode` by the definition: fields, codeword table, level and β lookups (the spec the fast
        decoder is tested against)."""
        u, m, j = self.fields(words)
        h = codewords(self.code).to(u.device)[m]
        if self.per_beta_levels:
            lv = self.levels.to(device=u.device, dtype=dtype)[j[..., None], 2 * u + h]
        else:
            lv = self.levels.to(device=u.device, dtype=dtype)[2 * u + h]
        return self.betas.to(device=u.device, dtype=dtype)[j][..., None] * lv

    def decode_rows(self, words: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W [N, K]`` from words ``[N, K/8]`` and row scales ``[N]``:
        ``W[n, 8v:8v+8] = scales[n] * decode(words[n, v])``."""
        if words.dim() != 2 or scales.shape != words.shape[:1]:
            raise ValueError(f"expected words [N, K/8] and scales [N], got {tuple(words.shape)}, {tuple(scales.shape)}")
        from . import box_lut

        if box_lut.supported(dtype) and not (torch.is_floating_point(words) or words.dtype == torch.bool):
            return box_lut.decode_flat(self, words, dtype, scales=scales)
        x = self.decode(words, dtype)
        return (scales.to(dtype)[:, None, None] * x).reshape(words.shape[0], -1)

    # ------------------------------------------------------------------ storage
    def pack(self, words: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"words": int32 (..., ceil(W n_vec / 32))}``: each row's words ``(..., n_vec)`` as one bit stream."""
        return {"words": pack_word_stream(words, self.word_bits)}

    def unpack(self, packed: dict[str, torch.Tensor], n_vec: int) -> torch.Tensor:
        """Inverse of :meth:`pack`: int32 words ``(..., n_vec)``."""
        return unpack_word_stream(packed["words"], self.word_bits, n_vec)


def shipped_box_codec(b: int, variant: str = "lattice") -> BoxCodec:
    """The :class:`BoxCodec` of the shipped setting :func:`load_box_setting` ``(b, variant)`` (its code, γ, β
    set and level table)."""
    st = load_box_setting(b, variant)
    return BoxCodec(b, st["betas"], st["code"], st.get("gamma", 1.0), st.get("levels"))


def E8BoxCodec(b: int = 3, betas=None) -> BoxCodec:
    """The √2E8 box code: ``BoxCodec(b, betas, code="hamming", gamma=1)``."""
    return BoxCodec(b, betas, "hamming", 1.0)


def _default_betas(b: int, code: str, gamma: float) -> torch.Tensor:
    for variant in ("lattice", "best"):
        try:
            s = load_box_setting(b, variant)
        except (KeyError, FileNotFoundError):
            continue
        if s["code"] == code and s.get("gamma") == gamma and s.get("levels") is None:
            return torch.tensor(s["betas"], dtype=torch.float32)
    raise KeyError(f"no shipped betas for box b={b}, code={code!r}, gamma={gamma}: pass betas "
                   f"(llmquant.lattice.beta_search.search_box_betas)")


@functools.lru_cache(maxsize=16)
def _select_matrix(code: str, device) -> torch.Tensor:
    H = codewords(code).to(device=device, dtype=torch.float32)
    return torch.cat([H, 1 - H], 1)  # (|C|, 16): picks e1 where h_i = 1, e0 where h_i = 0


@functools.lru_cache(maxsize=8)
def _row_ids(r: int, device) -> torch.Tensor:
    return torch.arange(r, dtype=torch.int32, device=device)[:, None]


def _argmin_rows(E: torch.Tensor) -> torch.Tensor:
    """Exact ``argmin`` over dim 0 of ``E (r, n)``, ``E >= +0.0`` float32, ties to the smallest row.
    Non-negative floats order like their int32 bit patterns, so: ``m = min``, then the smallest row
    with ``bits == m`` via one integer ``amin`` of ``(bits > m) * r + row`` (torch's ``argmin`` over a
    strided dim is ~4x slower on CPU).  int64 ``(n,)``."""
    r = E.shape[0]
    Ei = E.view(torch.int32)
    m = Ei.amin(0)
    key = (Ei - m).clamp_(max=1).mul_(r).add_(_row_ids(r, E.device))
    return key.amin(0).to(torch.int64)


def _nearest_in_class(t: torch.Tensor, p: int, b: int, levels: torch.Tensor, uniform: bool) -> torch.Tensor:
    """Index ``u ∈ [0, 2^b)`` of the nearest parity-``p`` level ``levels[2u + p]`` to every element of ``t``
    (int64, shape of ``t``).  γ = 1: ``clamp(round((t - p + 2^b - ½) / 2))``; otherwise the number of
    class midpoints below ``t`` (2^b - 1 comparisons; ties between two levels go to the lower one).  Per-β
    tables (``levels (k, 2^(b+1))``): ``t`` is ``(k, ...)`` and row ``j`` of ``t`` uses row ``j`` of ``levels``."""
    if uniform:
        return torch.round((t - (p - (1 << b) + 0.5)) * 0.5).clamp_(0, (1 << b) - 1).to(torch.int64)
    lv = levels[..., p::2]
    mids = 0.5 * (lv[..., 1:] + lv[..., :-1])
    u = torch.zeros_like(t)
    if levels.dim() == 2:
        mids = mids.reshape(mids.shape[0], *([1] * (t.dim() - 1)), mids.shape[1])
        for q in range(mids.shape[-1]):
            u += t > mids[..., q]
        return u.to(torch.int64)
    for m in mids.tolist():
        u += t > m
    return u.to(torch.int64)


def _level_at(levels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``levels[idx]`` for a shared table; for per-β tables ``levels[j, idx[j]]`` (``idx (k, ...)``)."""
    if levels.dim() == 1:
        return levels[idx]
    k = levels.shape[0]
    return levels.take(idx + (torch.arange(k, device=idx.device) * levels.shape[1]).view(k, *([1] * (idx.dim() - 1))))


def _search(yt: torch.Tensor, betas: torch.Tensor, code: str, b: int, levels: torch.Tensor,
            uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search for a chunk ``yt (8, n)`` (coordinate-major): ``(j (n,), m (n,))`` int64 of the
    least squared error over all ``k`` β × ``|C|`` codewords (ties: smallest ``|C| j + m``)."""
    t = yt[None] / betas[:, None, None]  # (k, 8, n)
    e1 = (t - _level_at(levels, 2 * _nearest_in_class(t, 1, b, levels, uniform) + 1)).square_()
    e0 = (t - _level_at(levels, 2 * _nearest_in_class(t, 0, b, levels, uniform))).square_()
    # E[j, m] = sum_i (h_i ? e1 : e0)[j, i] = [H, 1-H] (|C|, 16) @ [e1; e0] (k, 16, n); all terms >= 0
    E = torch.matmul(_select_matrix(code, yt.device), torch.cat([e1, e0], 1))
    E *= betas.square()[:, None, None]
    nc = E.shape[1]
    idx = _argmin_rows(E.reshape(-1, yt.shape[1]))
    return idx // nc, idx % nc


def box_nearest(x: torch.Tensor, b: int, betas, code: str = "hamming", gamma: float | None = 1.0, chunk: int = 4096,
                levels=None):
    """Nearest point of the box code (any number ``k`` of scales) to each ``x (..., 8)``:
    ``(j (...), m (...), u (..., 8), x_hat (..., 8))``; ``j, m, u`` int64, ``x_hat`` in x's dtype.
    fp32 arithmetic, chunks of ``chunk`` vectors (module docstring: exact per (h, β), argmin over all)."""
    b = _check_width(b)
    _check_code(code)
    if not torch.is_floating_point(x):
        raise TypeError(f"encode needs a floating-point tensor, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != 8:
        raise ValueError(f"expected (..., 8) vectors, got {tuple(x.shape)}")
    check_finite(x)
    betas = torch.as_tensor(betas, dtype=torch.float32).flatten().to(x.device)
    uniform = levels is None and float(gamma) == 1.0
    levels = box_levels(b, gamma, levels).to(x.device)
    y = x.float().reshape(-1, 8)
    n = y.shape[0]
    bj = torch.empty(n, dtype=torch.int64, device=y.device)
    bm = torch.empty(n, dtype=torch.int64, device=y.device)
    for s in range(0, n, chunk):
        bj[s:s + chunk], bm[s:s + chunk] = _search(y[s:s + chunk].T, betas, code, b, levels, uniform)
    beta = betas[bj][:, None]
    h = codewords(code).to(y.device)[bm]
    t = y / beta
    lv = levels[bj] if levels.dim() == 2 else levels  # per-β tables: each vector's own table, (n, 2^(b+1))
    u = torch.where(h == 1, _nearest_in_class(t, 1, b, lv, uniform), _nearest_in_class(t, 0, b, lv, uniform))
    x_hat = (beta * (lv.gather(1, 2 * u + h) if lv.dim() == 2 else lv[2 * u + h])).to(x.dtype).reshape(x.shape)
    lead = x.shape[:-1]
    return bj.reshape(lead), bm.reshape(lead), u.reshape(x.shape), x_hat


def _to_int32(w64: torch.Tensor) -> torch.Tensor:
    w64 = w64 & 0xFFFFFFFF
    return torch.where(w64 >= 2**31, w64 - 2**32, w64).to(torch.int32)


def pack_word_stream(words: torch.Tensor, width: int) -> torch.Tensor:
    """Pack words ``(..., n)`` of ``width`` bits (8 <= width <= 32, any integer dtype; only the low
    ``width`` bits are kept) into int32 ``(..., ceil(width n / 32))`` per leading index: word ``v`` at
    stream bits ``[width v, width (v+1))``; the last int32 of each row zero-padded."""
    if torch.is_floating_point(words) or words.dtype == torch.bool:
        raise TypeError(f"words must be an integer tensor, got {words.dtype}")
    if not 1 <= width <= 32:
        raise ValueError(f"width must be in [1, 32], got {width}")
    if width == 32 and words.dtype == torch.int32:  # one word per int32: the stream is the words
        return words.clone(memory_format=torch.contiguous_format)
    lead, n = words.shape[:-1], words.shape[-1]
    w = words.to(torch.int64).reshape(-1, n) & ((1 << width) - 1)
    n_out = -(-width * n // 32)
    pos = width * torch.arange(n, device=w.device)
    idx, off = pos // 32, pos % 32
    out = torch.zeros(w.shape[0], n_out + 1, dtype=torch.int64, device=w.device)
    part = w << off  # up to 63 bits: low 32 go to int32 idx, the rest to idx+1
    out.scatter_add_(1, idx.expand_as(w), part & 0xFFFFFFFF)  # disjoint bit ranges: add == or
    out.scatter_add_(1, (idx + 1).expand_as(w), part >> 32)
    return _to_int32(out[:, :n_out]).reshape(*lead, n_out)


def unpack_word_stream(stream: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_word_stream`: int32 words ``(..., n)`` (``width = 32``: two's complement)."""
    lead = stream.shape[:-1]
    if stream.shape[-1] != -(-width * n // 32):
        raise ValueError(f"{n} words of {width} bits take {-(-width * n // 32)} int32, got {stream.shape[-1]}")
    if width == 32 and stream.dtype == torch.int32:  # one word per int32: the stream is the words
        return stream.clone()
    if width == 16 and stream.dtype == torch.int32 and sys.byteorder == "little" and stream.is_contiguous():
        return stream.view(torch.int16)[..., :n].to(torch.int32).bitwise_and_(0xFFFF)
    s = stream.to(torch.int64).reshape(-1, stream.shape[-1]) & 0xFFFFFFFF
    s = torch.cat([s, torch.zeros_like(s[:, :1])], 1)
    pos = width * torch.arange(n, device=s.device)
    idx, off = pos // 32, pos % 32
    both = s[:, idx] | (s[:, idx + 1] << 32)
    return _to_int32((both >> off) & ((1 << width) - 1)).reshape(*lead, n)


def integer_beta_ratios(betas, max_ratio: int = 256, rtol: float = 2e-6) -> tuple[float, list[int]] | None:
    """``(c, r)`` with ``betas[j] = c r_j`` (to relative ``rtol``: fp32 storage of ``c r_j``), ``r_j`` distinct
    positive integers ``<= max_ratio`` with the smallest possible ``r_0``; None when the set has no such ratios.

    With ``γ = 1`` the value of a coordinate is ``β_j (ℓ - 2^b + ½) = (c / 2) t``, ``t = r_j (2ℓ - 2^(b+1) + 1)``
    an integer (``|t| <= r_max (2^(b+1) - 1)``): what an integer kernel multiplies (``kernels/box_w4a4.py``).
    ``c`` is the least-squares fit ``Σ β_j r_j / Σ r_j^2`` (float64)."""
    b = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if b.numel() == 0 or (b <= 0).any():
        return None
    for r0 in range(1, int(max_ratio) + 1):
        r = torch.round(b * (r0 / b[0]))
        if r.max() > max_ratio or (r[1:] <= r[:-1]).any():
            continue
        c = float((b * r).sum() / r.square().sum())
        if bool(((b - c * r).abs() <= rtol * b).all()):
            return c, [int(v) for v in r.tolist()]
    return None
