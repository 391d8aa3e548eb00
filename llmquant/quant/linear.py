"""Quantized replacements of ``nn.Linear``: :class:`LatticeLinear` and :class:`ScalarLinear`.

Both hold only integer codes, scales and (optionally) a dynamic activation quantizer
``act_q`` (:class:`~llmquant.quant.activations.RowQuantizer`) applied to the input before
the matmul.  Their reference forward keeps the weight packed: it decodes it tile by tile into a
shared work buffer on every call (``weight_cache = "none"``, the default), or keeps one decoded copy
per layer for speed (``"decoded"``, :func:`set_weight_cache`); see :class:`_PackedDecode`.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from llmquant.config.schema import BACKENDS, WEIGHT_CACHE_MODES
from llmquant.lattice.native import GEMV_MAX_ROWS
from llmquant.quant import scalar as sq


def _register_bias(module: nn.Module, out_features: int, bias: bool) -> None:
    """``bias`` float32 ``[N]`` buffer (zeros until set), or ``module.bias = None``."""
    if bias:
        module.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
    else:
        module.bias = None


#: elements of one decoded weight tile (``rows x K``) of the on-the-fly reference forward
TILE_ELEMS = 1 << 18
#: input rows up to which the ``native`` / ``auto`` CPU backend runs the fused decode-GEMV (decode steps)
NATIVE_MAX_ROWS = GEMV_MAX_ROWS
_WORK = threading.local()


def _work_buffer(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat ``[n]`` view of this thread's work buffer for ``(dtype, device)`` (grown on demand, shared by
    every layer: its size is one tile, not one weight)."""
    bufs = getattr(_WORK, "bufs", None)
    if bufs is None:
        bufs = _WORK.bufs = {}
    key = (dtype, str(device))
    buf = bufs.get(key)
    if buf is None or buf.numel() < n:
        buf = bufs[key] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n]


def set_weight_cache(model: nn.Module, mode: str) -> int:
    """Set ``weight_cache`` (``none`` | ``decoded``, :data:`~llmquant.config.schema.WEIGHT_CACHE_MODES`) on
    every :class:`LatticeLinear` and :class:`ScalarLinear` of ``model``; ``none`` drops kept copies.
    Returns the number of modules set."""
    if mode not in WEIGHT_CACHE_MODES:
        raise ValueError(f"weight_cache: {mode!r} is not one of {', '.join(WEIGHT_CACHE_MODES)}")
    n = 0
    for mod in model.modules():
        if isinstance(mod, _PackedDecode):
            mod.weight_cache = mode
            if mode == "none":
                mod._w_cache = None
            n += 1
    return n


class _PackedDecode(nn.Module):
    """Reference forward of a packed linear: ``y = act_q(x) @ W^T + b`` with ``W`` decoded tile by tile.

    ``weight_cache = "none"`` (default): rows ``[n0, n0 + R)`` of ``W`` (``R = max(1, TILE_ELEMS // K)``) are
    decoded (float32, then cast to ``x.dtype``) into a per-thread work buffer shared by all layers, and
    ``y[..., n0:n0+R] = F.linear(x, W_tile, b_tile)``; nothing dense outlives the call.
    ``weight_cache = "decoded"``: the whole ``W`` in ``x.dtype`` is kept in ``_w_cache`` (keyed on the
    buffers' storage, version counters and the dtype, so ``load_state_dict`` or an in-place write
    invalidates it) and sliced into the same tiles: both modes give bit-identical outputs.
    Subclasses implement :meth:`decode_rows` (float32 rows ``[n0, n1)``)."""

    _buffer_names: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.weight_cache = "none"
        self._w_cache = None

    def _cache_key(self):
        return tuple((b.data_ptr(), b._version, b.device) for b in (getattr(self, n) for n in self._buffer_names))

    def _tile_rows(self) -> int:
        return max(1, TILE_ELEMS // self.in_features)

    def decode_rows(self, n0: int, n1: int) -> torch.Tensor:  # pragma: no cover - abstract
        """Rows ``[n0, n1)`` of the decoded weight, float32 ``[n1 - n0, K]``."""
        raise NotImplementedError

    def decode_rows_into(self, n0: int, n1: int, out: torch.Tensor) -> torch.Tensor:
        """Write rows ``[n0, n1)`` of the decoded weight into ``out [n1 - n0, K]`` (any float dtype: the float32
        rows cast, as ``out.copy_(decode_rows(n0, n1))``); subclasses may decode straight into ``out``."""
        return out.copy_(self.decode_rows(n0, n1))

    def decode_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The decoded weight ``[N, K]`` (float32 values, cast to ``dtype``; freshly decoded, not kept)."""
        out = torch.empty(self.out_features, self.in_features, dtype=dtype, device=self._device())
        r = self._tile_rows()
        for n0 in range(0, self.out_features, r):
            n1 = min(n0 + r, self.out_features)
            self.decode_rows_into(n0, n1, out[n0:n1])
        return out

    def _device(self) -> torch.device:
        return getattr(self, self._buffer_names[0]).device

    def _kept(self, dtype: torch.dtype) -> torch.Tensor:
        key = (self._cache_key(), dtype)
        if self._w_cache is None or self._w_cache[0] != key:
            self._w_cache = None  # drop the stale copy before decoding the new one
            self._w_cache = (key, self.decode_weight(dtype))
        return self._w_cache[1]

    def dequantized_weight(self) -> torch.Tensor:
        """The decoded weight ``[N, K]`` float32: kept when ``weight_cache == "decoded"``, else decoded anew."""
        if self.weight_cache == "decoded":
            return self._kept(torch.float32)
        return self.decode_weight()

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_q is not None:
            x = self.act_q(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        n, k, r = self.out_features, self.in_features, self._tile_rows()
        kept = self._kept(x.dtype) if self.weight_cache == "decoded" else None
        if kept is None and self._w_cache is not None:
            self._w_cache = None
        outs = []
        for n0 in range(0, n, r):
            n1 = min(n0 + r, n)
            if kept is not None:
                w = kept[n0:n1]
            else:
                w = _work_buffer((n1 - n0) * k, x.dtype, x.device).view(n1 - n0, k)
                self.decode_rows_into(n0, n1, w)
            outs.append(F.linear(x, w, None if bias is None else bias[n0:n1]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class LatticeLinear(_PackedDecode):
    """Linear layer with nested-lattice (Voronoi) coded weights.

    Buffers (the layout the Triton kernels read; ``N = out_features``, ``K = in_features``,
    ``K % 8 == 0``, ``k`` betas):

    * ``codes``     int32  ``[N, K/8]``: the 8 lattice coordinates (each in ``[0, q)``, q <= 16)
      of the 8-vector ``W[n, 8b:8b+8]``, nibble-packed as :func:`llmquant.lattice.pack_codes`:
      coordinate ``j`` in bits ``[4j, 4j+4)`` of the word.
    * ``beta_idx``  uint8  ``[N, K/8]``: index into ``betas`` of each 8-vector.
    * ``row_scale`` float32 ``[N]``: per-row scale (an fp16 value: RMS of the original row).
    * ``betas``     float32 ``[k]``: the beta set (lattice scalings).
    * ``bias``      float32 ``[N]`` or absent.

    ``W[n, 8b:8b+8] = row_scale[n] * betas[beta_idx[n, b]] * decode(codes[n, b])`` with
    ``decode`` the Voronoi decoder of ``lattice`` modulo ``q`` (:class:`llmquant.lattice.VoronoiCodec`).

    ``codec=`` (a :class:`llmquant.lattice.codec.LatticeCodec`): a ``VoronoiNibbleCodec`` gives the layout
    above (``code = "voronoi"``); any other codec (``code = codec.kind``, e.g. a
    :class:`llmquant.lattice.box.BoxCodec`) stores its packed tensors instead (``words`` int32
    ``[N, ceil((8b+8) K/8 / 32)]`` for the box code), ``row_scale`` float16 ``[N]`` and the optional bias, and
    decodes with ``codec.decode_rows`` (see :meth:`_init_packed`, :meth:`set_words`).  Kernels that do not
    know ``code`` fall back to the reference.

    Activation quantizer (optional, ``act_q``): fake-quantizes the input per token before the
    matmul; a fused kernel reads ``act_q.kind`` ("lattice"/"scalar"), ``act_lattice``,
    ``act_q_modulus``, ``act_betas`` (see the properties).  ``backend`` != "reference" asks
    ``llmquant.kernels.dispatch.try_forward(self, x)`` with the *unquantized* input ``x`` (the
    kernel must apply ``act_q`` itself, or return None) and falls back to the reference.
    """

    _buffer_names = ("codes", "beta_idx", "row_scale", "betas")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lattice: str = "E8",
        q: int = 14,
        k: int = 2,
        bias: bool = False,
        backend: str = "reference",
        act_q: nn.Module | None = None,
        codec=None,
    ):
        super().__init__()
        if in_features % 8:
            raise ValueError(f"LatticeLinear: in_features {in_features} is not divisible by 8")
        if codec is not None and getattr(codec, "kind", None) == "voronoi":  # the legacy layout, from the codec
            lattice, q, k = codec.nq.name, codec.nq.q, int(codec.nq.betas.numel())
        elif codec is not None:
            self._init_packed(in_features, out_features, codec, bias, backend, act_q)
            return
        self.code = "voronoi"
        self.codec = codec  # None when built from lattice/q/k (the betas arrive with set_quantized)
        if q > 16:
            raise ValueError(f"LatticeLinear: q={q} does not fit the 4-bit code packing (q <= 16)")
        self._init_shape(in_features, out_features, backend)
        self.lattice = lattice
        self.q = q
        nb = in_features // 8
        self.register_buffer("codes", torch.zeros(out_features, nb, dtype=torch.int32))
        self.register_buffer("beta_idx", torch.zeros(out_features, nb, dtype=torch.uint8))
        self.register_buffer("row_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("betas", torch.ones(k, dtype=torch.float32))
        _register_bias(self, out_features, bias)
        self.act_q = act_q
        self._codec = None

    def _init_shape(self, in_features: int, out_features: int, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"LatticeLinear: backend {backend!r} must be one of {BACKENDS}")
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend

    def _init_packed(self, in_features, out_features, codec, bias, backend, act_q) -> None:
        """Codec layout (``code = codec.kind``, e.g. "box"): buffers = the codec's packed tensors of each row
        (``codec.pack`` of ``[N, K/8]`` words: one row's words contiguous, no cross-row packing), ``row_scale``
        float16 ``[N]`` and the optional float32 ``bias``; the codec (β set, levels) is rebuilt from the
        module spec (``codec.to_dict()``).  ``W = codec.decode_rows(words, row_scale)``."""
        self._init_shape(in_features, out_features, backend)
        self.codec = codec
        self.code = codec.kind
        self.lattice = ("E8" if getattr(codec, "code", None) == "hamming" else "D8") if codec.kind == "box" else None
        self.q = None
        nb = in_features // 8
        packed = codec.pack(torch.zeros(out_features, nb, dtype=torch.int32))
        for name, t in packed.items():
            self.register_buffer(name, t)
        self._packed_names = tuple(packed)
        self.register_buffer("row_scale", torch.ones(out_features, dtype=torch.float16))
        self._buffer_names = (*self._packed_names, "row_scale")
        _register_bias(self, out_features, bias)
        self.act_q = act_q
        self._codec = None

    def extra_repr(self) -> str:
        if self.code != "voronoi":
            return (f"in_features={self.in_features}, out_features={self.out_features}, codec={self.codec!r}, "
                    f"bias={self.bias is not None}, backend={self.backend}")
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, lattice={self.lattice}, "
            f"q={self.q}, k={self.betas.numel()}, bias={self.bias is not None}, backend={self.backend}"
        )

    def unpacked_words(self) -> torch.Tensor:
        """Codec layout: the unpacked words ``[N, K/8]`` (int32)."""
        return self.codec.unpack({n: getattr(self, n) for n in self._packed_names}, self.in_features // 8)

    def set_words(self, words: torch.Tensor, row_scale: torch.Tensor,
                  bias: torch.Tensor | None = None) -> LatticeLinear:
        """Codec layout: fill the buffers from words ``[N, K/8]`` and the row scales ``[N]`` (stored as fp16)."""
        n, nb = self.out_features, self.in_features // 8
        if self.code == "voronoi":
            raise TypeError("LatticeLinear.set_words: a Voronoi-coded layer is filled with set_quantized")
        if tuple(words.shape) != (n, nb):
            raise ValueError(f"LatticeLinear.set_words: words {tuple(words.shape)} do not match [{n}, {nb}]")
        for name, t in self.codec.pack(words).items():
            getattr(self, name).copy_(t)
        self.row_scale.copy_(row_scale.to(torch.float16))
        if bias is not None:
            if self.bias is None:
                raise ValueError("LatticeLinear.set_words: a bias was given but the layer was built with bias=False")
            self.bias.copy_(bias.to(torch.float32))
        return self

    @property
    def act_lattice(self) -> str | None:
        return getattr(self.act_q, "lattice", None) if getattr(self.act_q, "kind", None) == "lattice" else None

    @property
    def act_q_modulus(self) -> int | None:
        return self.act_q.q if self.act_lattice is not None else None

    @property
    def act_betas(self) -> torch.Tensor | None:
        return self.act_q.betas if self.act_lattice is not None else None

    def set_quantized(self, codes: torch.Tensor, beta_idx: torch.Tensor, row_scale: torch.Tensor,
                      betas: torch.Tensor, bias: torch.Tensor | None = None) -> LatticeLinear:
        """Fill the buffers from unpacked ``codes [N, K/8, 8]`` (ints in ``[0, q)``) and ``beta_idx [N, K/8]``."""
        from llmquant.lattice.packing import pack_codes

        n, nb = self.out_features, self.in_features // 8
        if tuple(codes.shape) != (n, nb, 8) or tuple(beta_idx.shape) != (n, nb):
            raise ValueError(
                f"LatticeLinear.set_quantized: codes {tuple(codes.shape)} / beta_idx {tuple(beta_idx.shape)} "
                f"do not match [{n}, {nb}, 8] / [{n}, {nb}]"
            )
        self.codes.copy_(pack_codes(codes.to(torch.uint8), self.q))
        self.beta_idx.copy_(beta_idx.to(torch.uint8))
        self.row_scale.copy_(row_scale.to(torch.float32))
        self.betas.copy_(betas.to(torch.float32))
        if bias is not None:
            if self.bias is None:
                raise ValueError("LatticeLinear.set_quantized: a bias was given but the layer was built with bias=False")
            self.bias.copy_(bias.to(torch.float32))
        return self

    def _voronoi(self):
        from llmquant.lattice.voronoi import VoronoiCodec

        if self._codec is None:
            self._codec = VoronoiCodec(self.lattice, self.q)
        return self._codec

    def _box_words(self, n0: int, n1: int) -> torch.Tensor:
        """Box layout: words ``[n1 - n0, K/8]`` of rows ``[n0, n1)`` (the packed rows themselves when a word is
        one int32, b = 3; else unpacked)."""
        packed = {n: getattr(self, n)[n0:n1] for n in self._packed_names}
        if self.codec.word_bits == 32 and packed.get("words") is not None and packed["words"].dtype == torch.int32:
            return packed["words"]
        return self.codec.unpack(packed, self.in_features // 8)

    def decode_rows_into(self, n0: int, n1: int, out: torch.Tensor) -> torch.Tensor:
        """Box layout: :func:`llmquant.lattice.box_lut.decode_flat` straight into ``out`` (float32 product
        ``row_scale * β λ``, then cast: bit-identical to ``out.copy_(decode_rows(n0, n1))``)."""
        from llmquant.lattice import box_lut

        if self.code == "box" and out.is_contiguous() and out.is_floating_point():
            return box_lut.decode_flat(self.codec, self._box_words(n0, n1), torch.float32,
                                       scales=self.row_scale[n0:n1], out=out)
        return out.copy_(self.decode_rows(n0, n1))

    def decode_rows(self, n0: int, n1: int) -> torch.Tensor:
        """Rows ``[n0, n1)`` of ``W`` float32, vectorized in float32 (exact: the lattice arithmetic is on
        small integers): codes -> ``2 c G`` -> Voronoi reduction (:func:`coarse_closest_int`) -> ``x2 / 2``
        -> ``(x * betas[beta_idx]) * row_scale``; equal to ``VoronoiCodec.decode`` times the scales."""
        if self.code != "voronoi":
            words = self.codec.unpack({n: getattr(self, n)[n0:n1] for n in self._packed_names}, self.in_features // 8)
            return self.codec.decode_rows(words, self.row_scale[n0:n1])
        from llmquant.lattice.closest_point import coarse_closest_int

        g2 = self._g2(self.codes.device)
        shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=self.codes.device)
        c = ((self.codes[n0:n1, :, None] >> shifts) & 0xF).to(torch.float32)  # [R, K/8, 8]
        p2 = c @ g2
        v = (p2 - self.q * coarse_closest_int(p2, self.lattice, self.q)) * 0.5
        beta = self.betas[self.beta_idx[n0:n1].long()].unsqueeze(-1)  # [R, K/8, 1]
        return (v * beta * self.row_scale[n0:n1, None, None]).reshape(n1 - n0, self.in_features)

    def _g2(self, device) -> torch.Tensor:
        """``2G`` float32 of the lattice (integers), per device."""
        cache = self.__dict__.setdefault("_g2_cache", {})
        key = str(device)
        if key not in cache:
            from llmquant.lattice.closest_point import generator_matrix

            cache[key] = (2 * generator_matrix(self.lattice, 8)).round().to(device=device, dtype=torch.float32)
        return cache[key]

    def _native_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """``native`` / ``auto`` backend on CPU: box-coded weights, float32 ``x`` of at most
        :data:`NATIVE_MAX_ROWS` rows, packed weights (``weight_cache = "none"``): ``act_q(x)`` then the compiled
        decode-GEMV (:func:`llmquant.lattice.native.gemv`: each word decoded once per call, no weight tile);
        None otherwise (the reference runs).  Equal to the reference to fp32 rounding (another summation order)."""
        if (self.code != "box" or x.dtype != torch.float32 or self.weight_cache != "none"
                or x.numel() > NATIVE_MAX_ROWS * self.in_features):
            return None
        from llmquant.lattice import native

        if not native.available():
            return None
        if self.act_q is not None:
            x = self.act_q(x)
        rows = x.reshape(-1, self.in_features)
        y = native.gemv(self.codec, self.words, self.in_features // 8, self.row_scale, rows, bias=self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend in ("native", "auto") and x.device.type == "cpu":
            out = self._native_forward(x)
            if out is not None:
                return out
        if self.backend in ("triton", "auto"):
            try:
                from llmquant.kernels.dispatch import try_forward
            except ModuleNotFoundError as exc:
                if exc.name not in ("llmquant.kernels.dispatch", "triton"):
                    raise
                try_forward = None
            if try_forward is not None:
                out = try_forward(self, x)
                if out is not None:
                    return out
        return self._reference(x)


class ScalarLinear(_PackedDecode):
    """Linear layer with INT-``bits`` weights, per output channel or per group of ``group_size`` columns.

    Buffers (``N = out_features``, ``K = in_features``, ``G = group_size or K``):

    * ``qweight`` uint8 ``[N, K/2]`` when ``bits <= 4`` (column ``2j`` in the low nibble of byte
      ``j``, ``2j+1`` in the high nibble), else uint8 ``[N, K]``; codes in ``[0, 2^bits)``.
    * ``scale``   float32 ``[N, K/G]`` (fp16 values), ``zero`` float32 ``[N, K/G]`` (integers).
    * ``bias``    float32 ``[N]`` or absent.

    ``W[n, c] = scale[n, c // G] * (code[n, c] - zero[n, c // G])``.  Optional ``act_q`` as in
    :class:`LatticeLinear`; the forward is always the PyTorch reference.
    """

    _buffer_names = ("qweight", "scale", "zero")

    def __init__(self, in_features: int, out_features: int, *, bits: int = 4, group_size: int = 0,
                 bias: bool = False, act_q: nn.Module | None = None):
        super().__init__()
        g = group_size or in_features
        if in_features % g:
            raise ValueError(f"ScalarLinear: group_size {group_size} does not divide in_features {in_features}")
        if bits <= 4 and in_features % 2:
            raise ValueError(f"ScalarLinear: in_features {in_features} must be even for nibble packing")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        width = in_features // 2 if bits <= 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, in_features // g, dtype=torch.float32))
        self.register_buffer("zero", torch.zeros(out_features, in_features // g, dtype=torch.float32))
        _register_bias(self, out_features, bias)
        self.act_q = act_q

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def set_quantized(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                      bias: torch.Tensor | None = None) -> ScalarLinear:
        """Fill the buffers from integer ``codes [N, K]`` and ``scale``/``zero`` ``[N, K/G]``."""
        if tuple(codes.shape) != (self.out_features, self.in_features):
            raise ValueError(f"ScalarLinear.set_quantized: codes {tuple(codes.shape)} do not match "
                             f"[{self.out_features}, {self.in_features}]")
        if int(codes.min()) < 0 or int(codes.max()) >= 2**self.bits:
            raise ValueError(f"ScalarLinear.set_quantized: codes outside [0, {2**self.bits})")
        packed = sq.pack_nibbles(codes) if self.bits <= 4 else codes.to(torch.uint8)
        self.qweight.copy_(packed)
        self.scale.copy_(scale)
        self.zero.copy_(zero)
        if bias is not None:
            if self.bias is None:
                raise ValueError("ScalarLinear.set_quantized: a bias was given but the layer was built with bias=False")
            self.bias.copy_(bias.to(torch.float32))
        return self

    def int_codes(self) -> torch.Tensor:
        return sq.unpack_nibbles(self.qweight) if self.bits <= 4 else self.qweight

    def decode_rows(self, n0: int, n1: int) -> torch.Tensor:
        """Rows ``[n0, n1)`` of ``W = scale * (code - zero)`` float32 (groups broadcast, not repeated)."""
        q = self.qweight[n0:n1]
        codes = (sq.unpack_nibbles(q) if self.bits <= 4 else q).to(torch.float32)
        g = self.scale.shape[1]
        codes = codes.view(n1 - n0, g, self.in_features // g)
        return (self.scale[n0:n1, :, None] * (codes - self.zero[n0:n1, :, None])).reshape(n1 - n0, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reference(x)


def set_backend(model: nn.Module, backend: str) -> dict[str, int]:
    """Set the forward ``backend`` of every :class:`LatticeLinear` and every online
    :class:`~llmquant.rotation.random_hadamard.HadamardRotation` (``down_proj`` input rotation, Q/K
    rotation after RoPE, output rotations) inside ``model``.

    ``backend in {"reference", "triton", "native", "auto"}``: ``reference`` = PyTorch forward (the spec);
    ``triton`` = the Triton kernels (CUDA, or the CPU interpreter under ``TRITON_INTERPRET=1``), falling
    back to the reference for unsupported cases; ``native`` = the compiled CPU decode-GEMV
    (:mod:`llmquant.lattice.native`) for box-coded layers and few rows, else the reference; ``auto`` = the
    Triton kernels on CUDA, the native GEMV on CPU, the reference otherwise.  A 16-bit ``lm_head``
    (:mod:`llmquant.models.embed_dtype`) gets the same attribute (``native`` / ``auto``: its compiled GEMV on CPU).
    The attribute is not part of any state dict.  Returns ``{"lattice_linear": n, "hadamard": m}``, the
    number of modules set.  ``ScalarLinear`` and floating-point modules have no backend (always PyTorch).
    """
    from llmquant.models.embed_dtype import is_stored
    from llmquant.rotation.random_hadamard import HadamardRotation

    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    counts = {"lattice_linear": 0, "hadamard": 0}
    for mod in model.modules():
        if isinstance(mod, LatticeLinear):
            mod.backend = backend
            counts["lattice_linear"] += 1
        elif isinstance(mod, HadamardRotation):
            mod.backend = backend
            counts["hadamard"] += 1
        elif isinstance(mod, nn.Linear) and is_stored(mod):  # a 16-bit lm_head (models.embed_dtype): its GEMV
            mod.backend = backend
    return counts
