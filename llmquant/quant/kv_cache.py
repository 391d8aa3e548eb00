"""The KV cache of one generation: :func:`make_cache` and the packed lattice cache :class:`LatticeKVCache`.

A model without KV quantizers (no attention module has ``llmquant_k_quant``/``llmquant_v_quant`` set)
gets a plain transformers ``DynamicCache``.  A model with them gets a :class:`LatticeKVCache`: one
:class:`LatticeKVLayer` per decoder layer (anchor: transformers' ``QuantizedCache``, without its
full-precision residual window, so every cached token is quantized exactly as the fake-quant path does).

On ``update(k, v)`` (``[B, H, t, D]``, keys after RoPE) the layer rotates the new keys with the attention
module's online Hadamard ``R`` (``llmquant_qk_rotation``), encodes the new rows of ``R(k)`` and ``v`` ONCE
with the module's :class:`~llmquant.quant.activations.RowQuantizer` and appends them packed
(:class:`PackedRows`); it returns all cached rows decoded, tagged with ``llmquant_kv_stored = True`` so
the ``llmquant`` attention function (:mod:`llmquant.rotation.attention`) rotates only the queries and
quantizes nothing again.  The decoded rows equal, bit for bit, what the fake-quant path
(``k_quant(R(k))``, ``v_quant(v)`` on the full-precision cache) gives, because the quantizer is per row
and the fast Hadamard is per row: per generated token the work is one encode of the new token and one
decode of the cache, instead of an encode of every cached token.

Perplexity (``use_cache=False``) never builds a cache: there the attention function fake-quantizes the
current keys and values, which are the same rows the lattice cache would store, so both paths give the
same logits (``tests/test_kv_cache.py``).

Layouts of one row (one token and head, ``D`` entries, ``nb = D / 8`` blocks), per :class:`PackedRows`:

* lattice (``RowQuantizer(kind="lattice")``, ``q <= 16``): ``words`` int32 ``[B, H, T, nb]`` (the 8 Voronoi
  coordinates of block ``b``, nibble-packed as :func:`llmquant.lattice.pack_codes`), ``beta`` uint8
  ``[B, H, T, ceil(nb w / 8)]`` (β index of block ``b`` in bits ``[w b, w b + w)`` of the row's bytes, little
  endian, ``w = ceil(log2 k)`` rounded up to 1, 2, 4 or 8), ``scale`` float16 ``[B, H, T]`` (the fp16 row
  scale ``s``).  Row ``= s * betas[j_b] * decode(codes_b)``: ``4 + w/8 + 16/D`` bits per entry.
* box (``kind="box"``, :class:`llmquant.lattice.box.BoxCodec`): ``words`` int32 ``[B, H, T, ceil(W nb / 32)]``
  (the row's box words as ``codec.pack`` streams them), ``scale`` float16 ``[B, H, T]`` (fp16 RMS).
* scalar (``kind="scalar"``): ``codes`` uint8 ``[B, H, T, D/2]`` (nibbles, ``bits <= 4``; column ``2i`` low) or
  ``[B, H, T, D]``, ``scale`` float16 and ``zero`` uint8 ``[B, H, T]``.  Row ``= scale * (code - zero)``.
* no quantizer: the rows in the model dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from llmquant.quant import heap

#: 8-vectors decoded per chunk by :meth:`PackedRows.decoded` (lattice layout)
DECODE_VECTORS = 16384
#: spare tokens a store allocates when it grows (it then holds at most this many unused rows)
GROW_TOKENS = 256


def kv_quantized_attention(model: nn.Module) -> dict[int, nn.Module]:
    """``{layer_idx: attention module}`` of the attention modules whose K or V quantizer slot is set."""
    out = {}
    for mod in model.modules():
        if getattr(mod, "llmquant_k_quant", None) is not None or getattr(mod, "llmquant_v_quant", None) is not None:
            idx = getattr(mod, "layer_idx", None)
            if idx is None:
                raise ValueError(f"make_cache: attention module {type(mod).__name__} has KV quantizers but no "
                                 "layer_idx, so its cache layer cannot be found")
            out[int(idx)] = mod
    return out


def _beta_width(k: int) -> int:
    w = max(1, math.ceil(math.log2(k)))
    return next(b for b in (1, 2, 4, 8) if b >= w)


class PackedRows:
    """Append-only store of quantized rows ``[B, H, T, D]`` in one of the layouts of the module docstring.

    ``append(x)`` encodes ``x [B, H, t, D]`` once and stores it; ``decoded(dtype)`` returns every stored row
    ``[B, H, T, D]`` decoded; ``keep_last(n)`` forgets all but the last ``n`` rows (sliding windows)."""

    def __init__(self, quant):
        self.quant = quant
        self.kind = None if quant is None else quant.kind
        if self.kind == "lattice":
            nlq = quant._quantizer()
            if nlq.codec.shift is not None or nlq.dither_seed is not None or nlq.q > 16:
                raise ValueError("LatticeKVCache: the KV quantizer must be an unshifted, undithered Voronoi code "
                                 f"with q <= 16 (got {nlq!r})")
        self.t: dict[str, torch.Tensor] = {}
        self.start = 0
        self.end = 0

    # -- encode -----------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from llmquant.quant import scalar as sq
        from llmquant.quant.activations import row_scale_guarded

        if self.kind is None:
            return {"rows": x}
        xf = x.to(torch.float32)
        d = xf.shape[-1]
        if self.kind == "scalar":
            q = self.quant
            scale, zero = sq.find_params(xf, q.bits, q.symmetric, clip_ratio=q.clip_ratio)
            codes = sq.quantize_codes(xf, scale, zero, q.bits).to(torch.uint8)
            if q.bits <= 4:
                codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
            return {"codes": codes, "scale": scale[..., 0].half(), "zero": zero[..., 0].to(torch.uint8)}
        if d % 8:
            raise ValueError(f"LatticeKVCache: head_dim {d} is not divisible by 8")
        if self.kind == "box":
            from llmquant.quant.activations import box_chunk_rows, box_row_scale

            nat = self.quant._native(xf)
            if nat is not None:  # RowQuantizer.encode_rows' words and scales, bit for bit, in one compiled pass
                _, words, s = nat.quantize_rows(self.quant.codec, xf, want_xhat=False, want_words=True,
                                                 chunk_rows=box_chunk_rows(d))
                words = words.view(*xf.shape[:-1], d // 8)
                return {"words": self.quant.codec.pack(words)["words"], "scale": s.view(xf.shape[:-1]).half()}
            rows = box_chunk_rows(d)
            if x.numel() > rows * d:  # a long prefill: encode a chunk of rows at a time (bit-identical)
                words, s = self.quant._box_encode_chunked(x, rows)
                return {"words": self.quant.codec.pack(words)["words"], "scale": s.half()}
            s = box_row_scale(xf)
            words = self.quant.codec.encode((xf / s).reshape(*xf.shape[:-1], d // 8, 8))
            return {"words": self.quant.codec.pack(words)["words"], "scale": s[..., 0].half()}
        s = row_scale_guarded(xf, self.quant.overload_radius())
        y = (xf / s).reshape(*xf.shape[:-1], d // 8, 8)
        res = self.quant._quantizer().quantize_full(y)
        shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=x.device)
        words = (res.codes.to(torch.int32) << shifts).sum(-1, dtype=torch.int32)
        return {"words": words, "beta": self._pack_beta(res.beta_idx), "scale": s[..., 0].half()}

    def _pack_beta(self, idx: torch.Tensor) -> torch.Tensor:
        w = _beta_width(self.quant.betas.numel())
        per = 8 // w
        nb = idx.shape[-1]
        pad = (-nb) % per
        if pad:
            idx = torch.cat([idx, idx.new_zeros(*idx.shape[:-1], pad)], -1)
        idx = idx.reshape(*idx.shape[:-1], -1, per).to(torch.int32)
        shifts = torch.arange(0, 8, w, dtype=torch.int32, device=idx.device)
        return (idx << shifts).sum(-1, dtype=torch.int32).to(torch.uint8)

    def _unpack_beta(self, packed: torch.Tensor, nb: int) -> torch.Tensor:
        w = _beta_width(self.quant.betas.numel())
        shifts = torch.arange(0, 8, w, dtype=torch.int32, device=packed.device)
        idx = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << w) - 1)
        return idx.reshape(*packed.shape[:-1], -1)[..., :nb]

    # -- storage ----------------------------------------------------------------------------------
    def append(self, x: torch.Tensor) -> None:
        """Encode ``x [B, H, t, D]`` and append its rows."""
        enc = self._encode(x)
        self.d = x.shape[-1]
        n = x.shape[-2]
        cap = next(iter(self.t.values())).shape[2] if self.t else 0
        if self.end + n > cap:
            live = self.end - self.start
            new_cap = live + n + GROW_TOKENS  # one copy of the live rows per GROW_TOKENS appended tokens
            grown = {}
            for name, v in enc.items():
                buf = v.new_empty(*v.shape[:2], new_cap, *v.shape[3:])
                if self.t:
                    buf[:, :, :live] = self.t[name][:, :, self.start:self.end]
                grown[name] = buf
            self.t = grown
            self.start, self.end = 0, live
        for name, v in enc.items():
            self.t[name][:, :, self.end:self.end + n] = v
        self.end += n

    def keep_last(self, n: int) -> None:
        self.start = max(self.start, self.end - n)

    def __len__(self) -> int:
        return self.end - self.start

    def nbytes(self) -> int:
        """Bytes allocated by the store (its capacity, not only the live rows)."""
        return sum(t.numel() * t.element_size() for t in self.t.values())

    # -- decode -----------------------------------------------------------------------------------
    def decoded(self, dtype: torch.dtype) -> torch.Tensor:
        """Every stored row ``[B, H, T, D]`` in ``dtype`` (vectorized float32 decode, then cast)."""
        live = {name: t[:, :, self.start:self.end] for name, t in self.t.items()}
        if self.kind is None:
            return live["rows"].to(dtype)
        if self.kind == "scalar":
            c = live["codes"]
            if self.quant.bits <= 4:
                c = torch.stack([c & 0xF, c >> 4], dim=-1).reshape(*c.shape[:-1], -1)
            scale = live["scale"].float()[..., None]
            zero = live["zero"].float()[..., None]
            return (scale * (c.to(torch.float32) - zero)).to(dtype)
        if self.kind == "box":
            return self._decoded_box(live, dtype)
        from llmquant.lattice.closest_point import coarse_closest_int

        q = self.quant
        words = live["words"]
        b, h, t, nb = words.shape
        out = torch.empty(b, h, t, nb * 8, dtype=dtype, device=words.device)
        shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device)
        g2 = _g2(q.lattice, words.device)
        step = max(1, DECODE_VECTORS // max(1, b * h * nb))  # tokens per chunk: intermediates stay in cache
        for t0 in range(0, t, step):
            sl = slice(t0, min(t0 + step, t))
            c = ((words[:, :, sl, :, None] >> shifts) & 0xF).to(torch.float32)  # [B, H, t, nb, 8]
            p2 = c @ g2
            v = (p2 - q.q * coarse_closest_int(p2, q.lattice, q.q)) * 0.5
            j = self._unpack_beta(live["beta"][:, :, sl], nb).long()
            x = (q.betas[j][..., None] * v).reshape(b, h, -1, nb * 8)
            out[:, :, sl] = x * live["scale"][:, :, sl].float()[..., None]
        return out

    def _decoded_box(self, live: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Box layout: ``(scale * decode(words)).to(dtype)`` with the product in float32, decoded by the pair
        tables of :mod:`llmquant.lattice.box_lut` in chunks straight into the ``[B, H, T, D]`` output (b = 3: the
        stored int32 are the words, nothing is unpacked).  On CUDA the Triton kernel
        :mod:`llmquant.kernels.box_kv_decode` (via ``kernels.dispatch.try_kv_decode``) decodes the packed streams in
        place into the output instead, bit-identical; without triton, or for a case it does not handle, the tables."""
        from llmquant.lattice import box_lut

        codec, d = self.quant.codec, self.d
        words = live["words"]
        out = torch.empty(*live["scale"].shape, d, dtype=dtype, device=words.device)
        if not out.is_floating_point():
            raise TypeError(f"LatticeKVCache: cannot decode keys/values into {dtype}")
        if words.is_cuda:
            try:
                from llmquant.kernels.dispatch import try_kv_decode
            except ModuleNotFoundError as exc:
                if exc.name not in ("llmquant.kernels", "llmquant.kernels.dispatch", "triton"):
                    raise
                try_kv_decode = None
            if try_kv_decode is not None and try_kv_decode(codec, words, live["scale"], out) is not None:
                return out
        if codec.word_bits != 32:
            words = codec.unpack({"words": words}, d // 8)
        return box_lut.decode_flat(codec, words, torch.float32, scales=live["scale"], out=out)


_G2: dict = {}


def _g2(lattice: str, device) -> torch.Tensor:
    key = (lattice, str(device))
    if key not in _G2:
        from llmquant.lattice.closest_point import generator_matrix

        _G2[key] = (2 * generator_matrix(lattice, 8)).round().to(device=device, dtype=torch.float32)
    return _G2[key]


class LatticeKVLayer(DynamicLayer):
    """One decoder layer's packed KV cache (see the module docstring).  ``sliding_window``: keep only the last
    ``sliding_window - 1`` tokens after each update, as transformers' ``DynamicSlidingWindowLayer``."""

    is_croppable = False

    def __init__(self, attn: nn.Module, sliding_window: int | None = None):
        super().__init__()
        self.rotation = getattr(attn, "llmquant_qk_rotation", None)
        self.k_store = PackedRows(getattr(attn, "llmquant_k_quant", None))
        self.v_store = PackedRows(getattr(attn, "llmquant_v_quant", None))
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.cumulative_length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Encode the new rows once, append them, return every cached row decoded (tagged, see above)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # a long prefill: hand the previous layer's freed temporaries back to the OS (llmquant.quant.heap)
        heap.release_after(key_states.shape[-2])
        self.cumulative_length += key_states.shape[-2]
        k = self.rotation(key_states) if self.rotation is not None else key_states
        self.k_store.append(k)
        self.v_store.append(value_states)
        keys = self.k_store.decoded(key_states.dtype)
        values = self.v_store.decoded(value_states.dtype)
        if self.sliding_window is not None:
            self.k_store.keep_last(self.sliding_window - 1)
            self.v_store.keep_last(self.sliding_window - 1)
        keys.llmquant_kv_stored = True
        values.llmquant_kv_stored = True
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.sliding_window is None:
            return self.cumulative_length + query_length, 0
        w = self.sliding_window
        offset = max(self.cumulative_length - w + 1, 0)
        if self.cumulative_length >= w:
            return w - 1 + query_length, offset
        return self.cumulative_length + query_length, offset

    def get_max_length(self) -> int:
        return -1 if self.sliding_window is None else self.sliding_window

    def nbytes(self) -> int:
        """Bytes allocated by the K and V stores."""
        return self.k_store.nbytes() + self.v_store.nbytes()

    def reset(self) -> None:
        self.k_store = PackedRows(self.k_store.quant)
        self.v_store = PackedRows(self.v_store.quant)
        self.cumulative_length = 0
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("LatticeKVLayer: the packed KV cache cannot be cropped")

    def _map(self, fn) -> None:
        for store in (self.k_store, self.v_store):
            store.t = {n: fn(t) for n, t in store.t.items()}

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])


class LatticeKVCache(Cache):
    """Transformers ``Cache`` of :class:`LatticeKVLayer` s, one per decoder layer (built by :func:`make_cache`)."""

    def __init__(self, layers: list[LatticeKVLayer]):
        super().__init__(layers=layers)

    def nbytes(self) -> int:
        """Bytes the packed K/V stores hold (allocated capacity)."""
        return sum(layer.nbytes() for layer in self.layers)


def _layer_kinds(model: nn.Module, n_layers: int) -> list[int | None]:
    """Sliding window (or None) per decoder layer, from the model config's ``layer_types``."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config(decoder=True) if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers
    window = getattr(cfg, "sliding_window", None)
    out = []
    for t in types[:n_layers]:
        if t == "sliding_attention":
            if window is None:
                raise ValueError("make_cache: a sliding_attention layer but no config.sliding_window")
            out.append(int(window))
        elif t == "full_attention":
            out.append(None)
        else:
            raise ValueError(f"make_cache: layer type {t!r} is not supported by the lattice KV cache")
    return out


def make_lattice_cache(model: nn.Module) -> LatticeKVCache:
    """A :class:`LatticeKVCache` for ``model``: every decoder layer's attention module must have KV quantizers."""
    attn = kv_quantized_attention(model)
    n = max(attn) + 1
    missing = [i for i in range(n) if i not in attn]
    if missing:
        raise ValueError(f"make_cache: layers {missing} have no KV quantizer; the lattice cache needs all of them")
    windows = _layer_kinds(model, n)
    return LatticeKVCache([LatticeKVLayer(attn[i], windows[i] if i < len(windows) else None) for i in range(n)])


def make_cache(model: nn.Module, batch_size: int = 1):
    """A transformers ``Cache`` for one generation with ``model`` (``batch_size`` sequences).

    ``DynamicCache`` (full-precision keys/values) when the model has no KV quantizers, else a packed
    :class:`LatticeKVCache` (``batch_size`` is not needed up front: stores size themselves on the first
    update)."""
    from transformers import DynamicCache

    if batch_size < 1:
        raise ValueError(f"make_cache: batch_size must be >= 1, got {batch_size}")
    if kv_quantized_attention(model):
        return make_lattice_cache(model)
    return DynamicCache(config=getattr(model, "config", None))
