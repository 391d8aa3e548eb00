"""The codec protocol: one object that quantizes 8-vectors, names their stored words, packs them and
says exactly how many bits it stores.

A *codec* maps unit-variance vectors ``x (..., d)`` (callers divide by their row/column scale ``s``
first and multiply ``s`` back; ``s`` is stored as one fp16 per row and counted) to integer *words*
``(...)``, one word per d-vector, and back.  Storage is per row: :meth:`LatticeCodec.pack` turns the
words of each row ``(..., n_vec)`` into a dict of integer tensors (rows contiguous, no cross-row
packing) and ``stored_bits_per_entry(n_cols)`` is, by contract, ``(bits of those tensors for one row
+ scale_bits) / n_cols`` -- the tests compute it from the packed tensors' sizes.

Implementations:

* :class:`.box.BoxCodec` (``kind="box"``): the deployable box codes (√2E8 / D8 Construction A in a
  box, decode = shifts, masks and one table lookup per coordinate).
* :class:`VoronoiNibbleCodec` (``kind="voronoi"``): adapter over the reference NestQuant quantizer
  :class:`.nested.NestedLatticeQuantizer` with the storage the current ``LatticeLinear`` layout uses:
  a nibble per coordinate (:func:`.packing.pack_codes`, q <= 16) plus the β index packed at
  ``ceil(log2 k)`` bits per 8-vector.  Honest, but decoding needs the Voronoi ``mod qΛ`` reduction
  (cross-coordinate work), and its stored rate (4 + ceil(log2 k)/8) exceeds the information rate
  ``log2 q + log2 k / 8`` for q < 16.

For weight quantization (LDLQ in 8-column blocks): ``fake_quant(x[..., 8])`` gives the reconstruction
used for error feedback, ``encode`` the final words, ``decode_rows(words [N, K/8], scales [N])`` the
matrix.  ``to_dict()`` / :func:`codec_from_dict` carry the codec in configs and checkpoints (with a
format version).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from .box import BoxCodec, check_codec_header, pack_word_stream, unpack_word_stream
from .packing import pack_codes, unpack_codes

VORONOI_FORMAT_VERSION = 1


@runtime_checkable
class LatticeCodec(Protocol):
    """What the weight/activation quantizers, checkpoints and kernels rely on."""

    kind: str
    dim: int

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(words (...), x_hat (..., dim))`` for unit-variance ``x (..., dim)``."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer words ``(...)``, one per ``dim``-vector."""

    def decode(self, words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(..., dim)`` reconstruction (unit-variance units)."""

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` in x's shape and dtype."""

    def decode_rows(self, words: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W [N, K]`` from ``words [N, K/dim]`` and row scales ``[N]``."""

    def pack(self, words: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stored tensors of the rows of ``words (..., n_vec)``."""

    def unpack(self, packed: dict[str, torch.Tensor], n_vec: int) -> torch.Tensor:
        """Inverse of :meth:`pack`."""

    def stored_bits_per_entry(self, n_cols: int | None = None, scale_bits: int = 16) -> float:
        """Bits per entry of one stored row of ``n_cols`` entries including its scale."""

    @property
    def kernel_layout(self) -> dict:
        """JSON-serialisable description of the word layout for kernels."""

    def to_dict(self) -> dict:
        """``{"kind", "version", ...}``; :func:`codec_from_dict` inverts it."""


class VoronoiNibbleCodec:
    """Adapter: :class:`.nested.NestedLatticeQuantizer` (E8/D8, q <= 16, k scales) as a :class:`LatticeCodec`.

    Word (int64): code ``c_i ∈ [0, q)`` in bits ``[4i, 4i+4)`` (i = 0..7), β index in bits
    ``[32, 32 + w)``, ``w = ceil(log2 k)`` (0 when k = 1).  Storage per row of ``n_vec`` vectors:
    ``{"codes": int32 (..., n_vec)}`` (:func:`.packing.pack_codes` words, the layout the kernels read)
    and, when ``k > 1``, ``{"beta_idx": int32 (..., ceil(w n_vec / 32))}`` (little-endian stream of w-bit
    indices).  ``x_hat = betas[j] * decode(codes)`` (Voronoi ``mod qΛ`` reduction).
    """

    kind = "voronoi"

    def __init__(self, quantizer):
        if quantizer.q > 16 or quantizer.d != 8:
            raise ValueError(f"the nibble layout holds 8-dim codes with q <= 16, got d={quantizer.d}, q={quantizer.q}")
        self.nq = quantizer
        self.dim = 8
        self.beta_bits = 0 if quantizer.k <= 1 else math.ceil(math.log2(quantizer.k))

    @classmethod
    def build(cls, name: str = "E8", q: int = 14, betas=None, **kw) -> VoronoiNibbleCodec:
        from .nested import NestedLatticeQuantizer

        return cls(NestedLatticeQuantizer(name, q, betas, **kw))

    # sizes
    def packed_int32_per_row(self, n_vec: int) -> int:
        return int(n_vec) + -(-self.beta_bits * int(n_vec) // 32)

    def stored_bits_per_entry(self, n_cols: int | None = None, scale_bits: int = 16) -> float:
        """``(32 n_vec + 32 ceil(w n_vec / 32) + scale_bits) / n_cols``; ``None``: ``4 + w / 8``."""
        if n_cols is None:
            return 4 + self.beta_bits / 8
        if n_cols % 8 or n_cols <= 0:
            raise ValueError(f"n_cols must be a positive multiple of 8, got {n_cols}")
        return (32 * self.packed_int32_per_row(n_cols // 8) + scale_bits) / n_cols

    @property
    def info_bits_per_entry(self) -> float:
        """The mixed-radix information rate ``log2 q + log2 k / 8`` (not what is stored)."""
        return self.nq.bits_per_entry

    @property
    def kernel_layout(self) -> dict:
        nq = self.nq
        return {
            "kind": self.kind, "version": VORONOI_FORMAT_VERSION, "dim": 8, "lattice": nq.name, "q": nq.q,
            "codes": "int32 per 8-vector, code i in bits [4i, 4i+4) (pack_codes)",
            "beta_index": {"bits": self.beta_bits, "storage": "int32 little-endian stream per row"},
            "value": "x = scale * betas[j] * (codes @ G - q Q(codes @ G / q))",
            "betas": nq.betas.tolist(), "scale": "fp16 per row",
        }

    def to_dict(self) -> dict:
        nq = self.nq
        return {"kind": self.kind, "version": VORONOI_FORMAT_VERSION, "lattice": nq.name, "q": nq.q,
                "betas": nq.betas.tolist(), "choose": nq.choose, "dither_seed": nq.dither_seed,
                "shift": None if nq.codec.shift is None else nq.codec.shift.tolist(), "encoder": nq.encoder}

    @classmethod
    def from_dict(cls, d: dict) -> VoronoiNibbleCodec:
        check_codec_header(d, cls.kind, VORONOI_FORMAT_VERSION)
        return cls.build(d["lattice"], int(d["q"]), torch.tensor(d["betas"], dtype=torch.float64), choose=d["choose"],
                         dither_seed=d["dither_seed"], shift=d["shift"], encoder=d["encoder"])

    # coding
    def _words(self, codes: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.int64)
        return (c << torch.arange(0, 32, 4, device=c.device)).sum(-1) | (j.to(torch.int64) << 32)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.nq.quantize_full(x)
        return self._words(r.codes, r.beta_idx), r.x_hat

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(x)[0]

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        return self.nq.fake_quant(x)

    def fields(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes uint8 (..., 8), beta_idx uint8 (...))``."""
        w = words.to(torch.int64)
        return unpack_codes(w & 0xFFFFFFFF), ((w >> 32) & 0xFF).to(torch.uint8)

    def decode(self, words: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes, j = self.fields(words)
        return self.nq.dequantize(codes, j, dtype=dtype)

    def decode_rows(self, words: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if words.dim() != 2 or scales.shape != words.shape[:1]:
            raise ValueError(f"expected words [N, K/8] and scales [N], got {tuple(words.shape)}, {tuple(scales.shape)}")
        return (scales.to(dtype)[:, None, None] * self.decode(words, dtype)).reshape(words.shape[0], -1)

    # storage
    def pack(self, words: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, j = self.fields(words)
        out = {"codes": pack_codes(codes, 16)}
        if self.beta_bits:
            out["beta_idx"] = pack_word_stream(j, self.beta_bits)
        return out

    def unpack(self, packed: dict[str, torch.Tensor], n_vec: int) -> torch.Tensor:
        codes = unpack_codes(packed["codes"])
        if codes.shape[-2] != n_vec:
            raise ValueError(f"expected {n_vec} code words per row, got {codes.shape[-2]}")
        if self.beta_bits:
            j = unpack_word_stream(packed["beta_idx"], self.beta_bits, n_vec)
        else:
            j = torch.zeros(codes.shape[:-1], dtype=torch.int64, device=codes.device)
        return self._words(codes, j)

    def __repr__(self) -> str:
        return f"VoronoiNibbleCodec({self.nq!r})"


_KINDS = {"box": BoxCodec, "voronoi": VoronoiNibbleCodec}


def codec_from_dict(d: dict) -> LatticeCodec:
    """Rebuild a codec from :meth:`LatticeCodec.to_dict` output (dispatch on ``kind``)."""
    try:
        cls = _KINDS[d["kind"]]
    except KeyError:
        raise ValueError(f"unknown codec kind {d.get('kind')!r}; known: {sorted(_KINDS)}") from None
    return cls.from_dict(d)


def packed_bits(packed: dict[str, torch.Tensor]) -> int:
    """Total bits of the stored tensors (``numel * element bits``), for checking stored rates."""
    return sum(t.numel() * t.element_size() * 8 for t in packed.values())
