"""Dynamic per-row quantizers for activations (one row = one token's input to a linear) and
for the KV cache (one row = one head's key or value vector of one token).

``RowQuantizer(kind="lattice")``: per row ``s = max(RMS(x), max_b ||x_b|| / radius)`` (see
:func:`row_scale_guarded`; rounded up to fp16), the row is cut
into 8-vectors ``y = x / s`` and replaced by ``betas[i] * decode(code)`` chosen by the nested
lattice quantizer (unit-variance inputs, ``k`` betas); result ``s * y_hat``.
Bits per entry: ``log2 q + log2(k)/8 + 16/row``.

``RowQuantizer(kind="box", codec=BoxCodec(...))``: the deployable box code
(:class:`llmquant.lattice.box.BoxCodec`) per row: ``s`` = RMS of the row rounded to fp16 (no overload
guard: the box code clips, it never wraps), the row's 8-vectors of ``x / s`` -> one word each
(:meth:`RowQuantizer.encode_rows`: words int32 ``[..., R/8]`` + scales ``[...]``, what a kernel reads), result
``s * decode(words)``.  Bits per entry: what the packed words + scale store,
``(32 ceil((8b + 8) R/8 / 32) + 16) / R`` (:func:`llmquant.config.bits.dynamic_bits`).

``RowQuantizer(kind="scalar")``: INT-``bits`` per row, asymmetric min/max (or symmetric
absmax) times ``clip_ratio``; see :mod:`llmquant.quant.scalar`.

Attributes a fused kernel can read: ``kind``, ``lattice``, ``q``, ``betas`` (buffer
float32 ``[k]``), ``bits``, ``symmetric``, ``clip_ratio``; box: ``codec`` and :meth:`RowQuantizer.encode_rows`.

The same instance may be shared by linears that read the same input (q/k/v, gate/up): the
last input and its quantized version are memoized (same tensor object, same version
counter), so the shared input is quantized once per forward, as a fused kernel would.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from llmquant.quant import scalar as sq


class _InputMemo:
    """One result cached per input tensor: a hit needs the same object and the same version counter.  The
    input is held by a weak reference and the entry is dropped as soon as the input dies, so no activation
    outlives its forward pass."""

    def __init__(self):
        self._entry = None

    def get(self, x: torch.Tensor):
        e = self._entry
        return e[2] if e is not None and e[0]() is x and e[1] == x._version else None

    def put(self, x: torch.Tensor, out):
        token = object()
        self._entry = (weakref.ref(x), x._version, out, token)
        weakref.finalize(x, self._drop, token)
        return out

    def _drop(self, token) -> None:
        if self._entry is not None and self._entry[3] is token:
            self._entry = None

    def clear(self) -> None:
        self._entry = None


class RowQuantizer(nn.Module):
    def __init__(
        self,
        kind: str,
        *,
        bits: int = 4,
        symmetric: bool = False,
        clip_ratio: float = 1.0,
        lattice: str = "E8",
        q: int = 14,
        betas: torch.Tensor | None = None,
        k: int | None = None,
        choose: str = "min_error",
        codec=None,
    ):
        super().__init__()
        if kind not in ("scalar", "lattice", "box"):
            raise ValueError(f"RowQuantizer: kind {kind!r} must be 'scalar', 'lattice' or 'box'")
        if (kind == "box") != (getattr(codec, "kind", None) == "box"):
            raise ValueError("RowQuantizer: kind 'box' needs codec=BoxCodec(...) (and only it takes a codec)")
        self.codec = codec
        self.kind = kind
        self.bits = bits
        self.symmetric = symmetric
        self.clip_ratio = clip_ratio
        self.lattice = lattice
        self.q = q
        self.choose = choose
        if kind == "lattice":
            if betas is None:
                if k is None:
                    raise ValueError("RowQuantizer(kind='lattice') needs betas (or k for an empty shell to load into)")
                betas = torch.zeros(k)
            self.register_buffer("betas", betas.detach().to(torch.float32).clone())
        elif kind == "box":
            self.bits = codec.b + 1
            self.betas = None
        else:
            self.betas = None
        self._nlq = None
        self._memo = _InputMemo()
        self._enc_memo = _InputMemo()

    def extra_repr(self) -> str:
        if self.kind == "box":
            return f"box, codec={self.codec!r}"
        if self.kind == "lattice":
            return f"lattice={self.lattice}, q={self.q}, k={self.betas.numel()}"
        return f"scalar, bits={self.bits}, symmetric={self.symmetric}, clip_ratio={self.clip_ratio}"

    def _quantizer(self):
        from llmquant.lattice.nested import NestedLatticeQuantizer

        key = (self.betas.data_ptr(), self.betas._version, self.betas.device)
        if self._nlq is None or self._nlq[0] != key:
            self._nlq = (key, NestedLatticeQuantizer(self.lattice, self.q, self.betas.detach().clone(), choose=self.choose))
        return self._nlq[1]

    def quantize_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x [..., R]`` row by row (last dim); returns the same shape and dtype."""
        native = self._native(x)
        if native is not None:  # the same bits in one compiled pass (no chunks needed: no temporaries)
            out = native.quantize_rows(self.codec, x.to(torch.float32),
                                       chunk_rows=box_chunk_rows(x.shape[-1]))[0]
            return out.view(x.shape).to(x.dtype)
        if self.kind == "box" and x.dim() and x.numel() > box_chunk_rows(x.shape[-1]) * x.shape[-1]:
            return self._box_fake_quant_chunked(x, box_chunk_rows(x.shape[-1]))
        dtype = x.dtype
        xf = x.to(torch.float32)
        if self.kind == "scalar":
            scale, zero = sq.find_params(xf, self.bits, self.symmetric, clip_ratio=self.clip_ratio)
            out = sq.fake_quant(xf, scale, zero, self.bits)
        elif self.kind == "box":
            s = box_row_scale(xf)
            x_hat = self.codec.fake_quant((xf / s).reshape(*xf.shape[:-1], -1, 8))
            out = x_hat.reshape(xf.shape) * s
        else:
            r = xf.shape[-1]
            if r % 8:
                raise ValueError(f"lattice activation quantizer: row length {r} is not divisible by 8")
            s = row_scale_guarded(xf, self.overload_radius())
            y = (xf / s).reshape(*xf.shape[:-1], r // 8, 8)
            out = self._quantizer().fake_quant(y).reshape(xf.shape) * s
        return out.to(dtype)

    def encode_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box code: ``(words int32 [..., R/8], scales float32 [...] (fp16 values))`` of ``x [..., R]``, the
        exact encoding behind :meth:`quantize_rows` (``x_hat = scales[..., None] * codec.decode(words)``).
        Memoized like :meth:`forward` (a fused kernel encodes a shared input once)."""
        if self.kind != "box":
            raise TypeError(f"RowQuantizer.encode_rows: only the box quantizer has words, this one is {self.kind!r}")
        hit = self._enc_memo.get(x)
        if hit is not None:
            return hit
        if x.dim() == 0:
            raise ValueError("box activation quantizer: needs rows [..., R], got a 0-dim tensor")
        if x.shape[-1] % 8:
            raise ValueError(f"box activation quantizer: row length {x.shape[-1]} is not divisible by 8")
        native = self._native(x)
        if native is not None:
            _, words, s = native.quantize_rows(self.codec, x.to(torch.float32), want_xhat=False,
                                               want_words=True, chunk_rows=box_chunk_rows(x.shape[-1]))
            return self._enc_memo.put(x, (words.view(*x.shape[:-1], -1), s.view(x.shape[:-1])))
        rows = box_chunk_rows(x.shape[-1])
        if x.numel() > rows * x.shape[-1]:
            return self._enc_memo.put(x, self._box_encode_chunked(x, rows))
        xf = x.to(torch.float32)
        s = box_row_scale(xf)
        words = self.codec.encode((xf / s).reshape(*xf.shape[:-1], -1, 8))
        return self._enc_memo.put(x, (words, s.squeeze(-1)))

    def _native(self, x: torch.Tensor):
        """:mod:`llmquant.lattice.native` when it can run this box quantizer on ``x`` (CPU rows of a length
        divisible by 8), else None."""
        if self.kind != "box" or x.device.type != "cpu" or not x.dim() or x.shape[-1] % 8 or not x.numel():
            return None
        from llmquant.lattice import native

        return native if native.available() else None

    def _box_fake_quant_chunked(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """:meth:`quantize_rows` of the box code, ``rows`` rows at a time into one output (same ops per row, same
        search chunks: bit-identical; no temporary larger than one chunk of rows)."""
        r = x.shape[-1]
        if r % 8:
            raise ValueError(f"box activation quantizer: row length {r} is not divisible by 8")
        x2 = x.reshape(-1, r)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        for r0 in range(0, x2.shape[0], rows):
            xf = x2[r0:r0 + rows].to(torch.float32)
            s = box_row_scale(xf)
            x_hat = self.codec.fake_quant((xf / s).reshape(xf.shape[0], -1, 8))
            out[r0:r0 + rows] = x_hat.reshape(xf.shape) * s
            del xf, s, x_hat
        return out.reshape(x.shape)

    def _box_encode_chunked(self, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_rows`' ``(words, scales)``, ``rows`` rows at a time (bit-identical, as above)."""
        r = x.shape[-1]
        x2 = x.reshape(-1, r)
        words = torch.empty(x2.shape[0], r // 8, dtype=torch.int32, device=x.device)
        scales = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        for r0 in range(0, x2.shape[0], rows):
            xf = x2[r0:r0 + rows].to(torch.float32)
            s = box_row_scale(xf)
            words[r0:r0 + rows] = self.codec.encode((xf / s).reshape(xf.shape[0], -1, 8))
            scales[r0:r0 + rows] = s.squeeze(-1)
            del xf, s
        return words.reshape(*x.shape[:-1], r // 8), scales.reshape(x.shape[:-1])

    def overload_radius(self) -> float:
        """:func:`overload_radius` of this quantizer's ``betas`` and ``q``."""
        return overload_radius(self.betas, self.q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = self._memo.get(x)
        return hit if hit is not None else self._memo.put(x, self.quantize_rows(x))

    def clear_memo(self) -> None:
        self._memo.clear()
        self._enc_memo.clear()


#: about this many 8-vectors are box-encoded per chunk of rows (:func:`box_chunk_rows`)
ENCODE_VECTORS = 16384


def box_chunk_rows(r: int) -> int:
    """Rows of length ``r`` box-encoded at once by :meth:`RowQuantizer.quantize_rows` / :meth:`~RowQuantizer.encode_rows`:
    a multiple of ``u = CHUNK / gcd(r / 8, CHUNK)`` rows (``CHUNK`` = :data:`llmquant.lattice.box_encode.CHUNK`), so
    every chunk of rows holds whole search chunks of 8-vectors and the search runs on the same chunks as on the
    whole tensor (bit-identical), about :data:`ENCODE_VECTORS` vectors (at least ``u`` rows).  Bounds the encode's
    temporaries (``x / s``, the decoded rows, the words) by one chunk of rows instead of all ``T`` tokens."""
    from llmquant.lattice.box_encode import CHUNK

    nv = max(1, r // 8)
    unit = CHUNK // math.gcd(nv, CHUNK)
    return unit * max(1, ENCODE_VECTORS // (unit * nv))


def box_row_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-row scale ``s [..., 1]`` of ``x [..., R]`` for the box code: ``RMS(x)`` rounded to fp16 (1 for a zero
    row), as for box-coded weights (:func:`llmquant.quant.weights.quantize_codec_linear`)."""
    s = x.pow(2).mean(dim=-1, keepdim=True).sqrt_()
    return torch.where(s > 0, s, 1.0).half().float()


def overload_radius(betas: torch.Tensor, q: int) -> float:
    """``q * max(betas) / sqrt(2)``: radius of the ball inscribed in the Voronoi cell of the coarse
    lattice ``q * beta_max * E8`` (E8 packing radius ``1/sqrt(2)``); 8-vectors inside it never overload.
    One function for the reference and the encode kernel, so both get the same float."""
    return int(q) * float(betas.to(torch.float32).max()) / math.sqrt(2.0)


def row_scale_guarded(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-row scale ``s [..., 1]`` of ``x [..., R]`` for the lattice quantizer, an fp16 value:

    ``s = max(RMS(x), max_b ||x_b|| / radius)`` over the row's 8-vectors ``x_b``, rounded *up* to fp16.
    The RMS makes entries unit variance (what the beta sets are optimized for); the guard raises the
    scale just enough that no 8-vector of ``x / s`` leaves the no-overload ball of the largest beta, so a
    heavy-tailed row (e.g. the o_proj input, only rotated per head) is never wrapped around modulo the
    coarse lattice: the error degrades like a clipped scalar quantizer instead of blowing up.
    """
    r = x.shape[-1]
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    peak = x.reshape(*x.shape[:-1], r // 8, 8).norm(dim=-1).amax(dim=-1, keepdim=True) / radius
    s = torch.maximum(rms, peak)
    s = torch.where(s > 0, s, torch.ones_like(s))
    h = s.half()
    up = torch.nextafter(h, torch.full_like(h, float("inf")))
    return torch.where(h.float() < s, up, h).float()


def row_quantizer_from_config(d, k_hint: int | None = None) -> RowQuantizer | None:
    """Build a :class:`RowQuantizer` from a :class:`~llmquant.config.DynamicQuantConfig` (None for ``none``)."""
    if d.method == "none":
        return None
    if d.method == "scalar":
        return RowQuantizer("scalar", bits=d.bits, symmetric=d.symmetric, clip_ratio=d.clip_ratio)
    code = getattr(d, "code", "voronoi")
    if code == "box":
        from llmquant.lattice.box import WIDTHS, shipped_box_codec

        if d.box_bits not in WIDTHS:
            raise ValueError(f"box_bits: {d.box_bits!r} must be one of {WIDTHS}")
        return RowQuantizer("box", codec=shipped_box_codec(d.box_bits, d.box_variant))
    if code != "voronoi":
        raise ValueError(f"code: {code!r} must be 'voronoi' or 'box'")
    from llmquant.lattice.beta_search import load_beta_set

    return RowQuantizer("lattice", lattice=d.lattice, q=d.q, betas=load_beta_set(d.lattice, d.q, d.k).float(),
                        choose=d.choose)
