"""Route a ``LatticeLinear`` forward to a Triton kernel, or say "use the reference" (``None``).

``try_forward(layer, x)`` is called by :class:`llmquant.quant.linear.LatticeLinear` when its ``backend`` is
``"triton"`` or ``"auto"``, with the *unquantized* input ``x``:

* no activation quantizer                -> W4A16 fused decode-GEMM (:mod:`.e8_decode_gemm`; box-coded
  layers, b = 3 Hamming code: :mod:`.box_w4a16`, its lattice path for γ = 1 and its level-table path for a
  level table (``box_variant: table``), per-β level tables (``beta_tables``) or a companded γ);
* box-coded layer (b = 3 Hamming / parity lattice code, integer-ratio β set) with a box activation quantizer
  (same kinds of code, any b) -> activations encoded once per token row by the box encode kernel
  (:mod:`.box_encode`, words bit-identical to :meth:`~llmquant.quant.activations.RowQuantizer.encode_rows`, memoized
  in the quantizer's memo) + W4A4 int8 GEMM (:mod:`.box_w4a4`);
* lattice (E8, q <= 16) activation quant -> activation encode (:mod:`.e8_encode`, per-token scale from
  the reference's ``row_scale_guarded`` with ``act.overload_radius()``) + W4A4 GEMM
  (:mod:`.e8_w4a4_gemm`, exact int8 mode for up to 4 β pairs, else fp16 mode, see :func:`w4a4_mode`);
* anything else (scalar activation quantizer, another lattice, q > 16, unsupported dtype or device)
  -> ``None``; the layer runs its PyTorch reference.

``try_hadamard(rotation, x, transpose=False)`` is the same for the online Hadamard rotations
(:class:`llmquant.rotation.random_hadamard.HadamardRotation` with ``backend`` != "reference", used by
``InputRotatedLinear`` on the ``down_proj`` input and the Q/K rotation after RoPE): ``x @ Q`` (or
``x @ Q^T``), ``Q = diag(s) H_n``, by the fast Hadamard kernel :func:`.hadamard.hadamard_transform`, or
``None`` -> the reference :func:`llmquant.rotation.fwht.fwht`.

``try_kv_decode(codec, words, scales, out)`` is the same for the packed box-code KV cache
(:meth:`llmquant.quant.kv_cache.PackedRows._decoded_box` on CUDA): the rows decoded into ``out`` by
:mod:`.box_kv_decode` (bit-identical to ``box_lut.decode_flat``), or ``None`` -> the pair-table decode.

Devices: ``auto`` uses CUDA only; ``triton`` also runs on CPU tensors when ``TRITON_INTERPRET=1`` (the
interpreter, for tests).  Each distinct reason for falling back is logged once (logger
``llmquant.kernels``), and a kernel that raises on CUDA is logged once and falls back too: a forward
never fails because of this module.  Nothing is imported or compiled until the first call.
"""

from __future__ import annotations

import logging

import torch

from .availability import kernel_device_ok

log = logging.getLogger("llmquant.kernels")
_LOGGED: set[str] = set()


def _fallback(reason: str) -> None:
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.info("llmquant.kernels: using the reference forward (%s)", reason)


def _input_reason(backend: str, x: torch.Tensor) -> str | None:
    """The device and dtype policy shared by every kernel: ``auto`` runs on CUDA only, ``triton`` also on
    the CPU interpreter; fp32/fp16 inputs, bf16 on CUDA only (the interpreter's bf16 ``tl.dot`` is wrong)."""
    if not kernel_device_ok(x.device, allow_interpreter=backend == "triton"):
        if x.device.type == "cpu" and backend == "auto":
            return "CPU tensor with backend 'auto' (the Triton interpreter is only used with backend 'triton')"
        return f"device {x.device} (needs CUDA + triton, or TRITON_INTERPRET=1 on CPU)"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"input dtype {x.dtype}"
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return "bf16 on the Triton interpreter (its bf16 tl.dot is wrong)"
    return None


def unsupported_reason(layer, x: torch.Tensor) -> str | None:
    """Why ``layer(x)`` cannot use a kernel (a short sentence), or None when it can."""
    backend = getattr(layer, "backend", "reference")
    if backend not in ("triton", "auto"):
        return f"backend {backend!r}"
    code = getattr(layer, "code", "voronoi")
    if code == "box":
        return _box_reason(layer, backend, x)
    if code != "voronoi":
        return f"code {layer.code!r} (these kernels read the Voronoi nibble layout)"
    if getattr(layer, "lattice", None) != "E8":
        return f"lattice {getattr(layer, 'lattice', None)!r} (kernels implement E8)"
    if not 2 <= int(layer.q) <= 16:
        return f"q={layer.q} (kernels read 4-bit packed codes, q <= 16)"
    reason = _input_reason(backend, x)
    if reason is not None:
        return reason
    if x.shape[-1] != layer.in_features:
        return f"input has {x.shape[-1]} features, layer expects {layer.in_features}"
    act = getattr(layer, "act_q", None)
    if act is not None:
        if getattr(act, "kind", None) != "lattice" or getattr(act, "lattice", None) != "E8":
            return "activation quantizer is not an E8 lattice quantizer"
        if not 2 <= int(act.q) <= 16:
            return f"activation q={act.q} > 16"
        if getattr(act, "choose", "min_error") not in ("min_error", "first_fit"):
            return f"activation choose rule {act.choose!r}"
    return None


def _box_reason(layer, backend: str, x: torch.Tensor) -> str | None:
    """The box-code W4A16 kernel (:mod:`.box_w4a16`) reads b = 3 words of the Hamming code (√2E8 lattice variant:
    its lattice path; a level table, one per β, or companded γ: its table path, fed ``codec.levels``, flattened for
    per-β tables) and needs no activation
    quantizer; the box W4A4 kernel (:mod:`.box_w4a4`) reads
    b = 3 weight words of a lattice box code (Hamming or parity) with integer β ratios and a box activation
    quantizer of the same kind (any b)."""
    c = layer.codec
    act = getattr(layer, "act_q", None)
    if act is not None:
        if getattr(act, "kind", None) != "box":
            return f"box-coded weights with a {getattr(act, 'kind', None)!r} activation quantizer (W4A4 needs a box one)"
        if c.b != 3:
            return f"box W4A4: weight box code b={c.b} (the kernel reads one int32 per weight word: b=3)"
        why = _integer_box_reason(layer, c, act.codec)
        if why is not None:
            return why
    elif not (c.b == 3 and c.code == "hamming"):
        return (f"box code b={c.b}, code={c.code} (the box W4A16 kernel reads b=3 Hamming words: lattice variant "
                "or level table)")
    reason = _input_reason(backend, x)
    if reason is None and x.shape[-1] != layer.in_features:
        reason = f"input has {x.shape[-1]} features, layer expects {layer.in_features}"
    return reason


def _integer_box_reason(layer, w_codec, x_codec) -> str | None:
    """Why the box W4A4 kernel cannot read these two codecs (integer-ratio Hamming lattice sets), or None;
    computed once per layer and pair of codecs (no host work per call)."""
    cache = layer.__dict__.setdefault("_box_w4a4_reason", {})
    key = (id(w_codec), id(x_codec))
    if key not in cache:
        from llmquant.lattice.box import integer_beta_ratios

        why = None
        for what, c in (("weight", w_codec), ("activation", x_codec)):
            if not (c.code in ("hamming", "parity") and c.is_lattice):
                why = f"box W4A4: {what} codec {c!r} is not a lattice box code (hamming/parity, gamma=1)"
            elif integer_beta_ratios(c.betas) is None:
                why = f"box W4A4: {what} β set has no integer ratios (use box_variant 'int' or 'int8')"
            if why is not None:
                break
        cache[key] = why
    return cache[key]


#: int8 W4A4 costs kx*kw integer MMAs per tile; above this many β pairs the single fp16 MMA is used.
MAX_INT8_BETA_PAIRS = 4


def w4a4_mode(kx: int, kw: int) -> str:
    """``"int8"`` (exact, matches the reference forward to fp32 rounding) for few β pairs, else ``"fp16"``.

    Exactness matters beyond one layer: the fp16 mode's per-element rounding (2^-11) moves the next
    layer's input, and the activation quantizer there turns such moves into whole lattice steps now and
    then, so the fp16 path drifts visibly from the reference over a model (one run on a tiny-llama W4A4
    checkpoint, 2 layers: logits max diff 0.23 at scale 1.9 in fp16 mode, 5e-7 in int8 mode).
    """
    return "int8" if kx * kw <= MAX_INT8_BETA_PAIRS else "fp16"


def try_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    """``layer(x)`` computed by the Triton kernels, or ``None`` (caller uses the reference)."""
    reason = unsupported_reason(layer, x)
    if reason is not None:
        return _fallback(reason)
    try:
        return _run(layer, x)
    except Exception as exc:  # a kernel failure must not take the model down; it is logged once
        if x.device.type != "cuda":
            raise  # on the interpreter (tests) a failure is a bug to see, not to hide
        return _fallback(f"kernel error {type(exc).__name__}: {exc}")


def _run(layer, x: torch.Tensor) -> torch.Tensor:
    if getattr(layer, "code", "voronoi") == "box" and layer.act_q is not None:
        from . import box_encode
        from .box_w4a4 import box_w4a4_matmul

        act = layer.act_q
        # once per token row by the box encode kernel (a nearest codeword: act.encode_rows' words up to fp32 near-ties
        # under the default "nearest" rule, bit for bit under LLMQUANT_ENCODE_RULE=reference), which also writes the
        # int8 activation limb planes the GEMM reads (no separate words -> limbs pass); memoized for the linears
        # sharing x
        words, scales, planes = box_encode.quantizer_encode_rows_int8(act, x, rule=box_encode.dispatch_rule())
        out = box_w4a4_matmul(words.reshape(-1, words.shape[-1]), scales.reshape(-1), act.codec, layer.words,
                              layer.row_scale, layer.codec, bias=layer.bias, out_dtype=x.dtype, x_planes=planes)
        return out.reshape(*x.shape[:-1], layer.out_features)
    if getattr(layer, "code", "voronoi") == "box":
        from .box_w4a16 import box_w4a16_matmul

        betas, levels = _device_betas(layer, x.device), _device_levels(layer, x.device)
        return box_w4a16_matmul(x, layer.words, layer.row_scale, betas, layer.bias, levels=levels)
    from llmquant.lattice.closest_point import generator_matrix

    gen = generator_matrix("E8")
    bias = layer.bias
    act = layer.act_q
    if act is None:
        from .e8_decode_gemm import e8_decode_gemm

        return e8_decode_gemm(x, layer.codes, layer.beta_idx, layer.betas, layer.row_scale, gen, layer.q, bias=bias)
    from .e8_encode import e8_encode
    from .e8_w4a4_gemm import e8_w4a4_gemm

    lead = x.shape[:-1]
    # the per-token scale is the reference's guarded one (``row_scale_guarded`` with the quantizer's own
    # overload radius), so codes, β indices and scales are bit-identical to ``act.quantize_rows``
    xc, xb, xs = e8_encode(x.reshape(-1, x.shape[-1]), act.betas, act.q, gen, choose=act.choose,
                           radius=act.overload_radius())
    out = e8_w4a4_gemm(xc, xb, xs, act.betas, act.q, layer.codes, layer.beta_idx, layer.row_scale, layer.betas,
                       layer.q, gen, bias=bias, mode=w4a4_mode(act.betas.numel(), layer.betas.numel()),
                       out_dtype=x.dtype)
    return out.reshape(*lead, layer.out_features)


def _device_betas(layer, device: torch.device) -> torch.Tensor:
    """The codec's β set as a contiguous fp32 tensor on ``device``, built once per layer and device (no host
    work per call)."""
    from .device_cache import device_copy

    return device_copy(layer, "_kernel_betas", layer.codec.betas, device)


def _device_levels(layer, device: torch.device) -> torch.Tensor | None:
    """None for the √2E8 lattice variant (γ = 1, no level table: the kernel's lattice path); else the codec's 16
    signed levels ``codec.levels`` (level table or companded γ) as a contiguous fp32 tensor on ``device``, or, for
    a level table per β (``codec.per_beta_levels``), its ``(16, 16)`` table flattened (1 KB fp32, 1024-byte aligned:
    :func:`.box_w4a16.aligned_levels`), built once per layer and device."""
    from .device_cache import device_copy

    if layer.codec.is_lattice:
        return None
    from .box_w4a16 import aligned_levels

    # aligned as the table path needs it (64 bytes for one table, 1024 for per-β tables), cached like the betas
    return device_copy(layer, "_kernel_levels", layer.codec.levels, device, build=aligned_levels)


def hadamard_unsupported_reason(rotation, x: torch.Tensor) -> str | None:
    """Why ``rotation.apply(x)`` cannot use the Hadamard kernel (a short sentence), or None when it can.

    Same device policy as :func:`unsupported_reason`: ``auto`` runs on CUDA only, ``triton`` also on the
    CPU interpreter; fp32/fp16 (bf16 on CUDA only); ``x.shape[-1] == rotation.n``.
    """
    backend = getattr(rotation, "backend", "reference")
    if backend not in ("triton", "auto"):
        return f"hadamard: backend {backend!r}"
    reason = _input_reason(backend, x)
    if reason is not None:
        return f"hadamard: {reason}"
    if x.shape[-1] != rotation.n:
        return f"hadamard: input has {x.shape[-1]} features, rotation has n={rotation.n}"
    return None


def try_hadamard(rotation, x: torch.Tensor, transpose: bool = False) -> torch.Tensor | None:
    """``x @ Q`` (``transpose=False``) or ``x @ Q^T`` along the last dim by the Triton kernel, else ``None``.

    ``rotation``: a ``HadamardRotation`` (``n``, ``signs [n]`` ±1, ``backend``); ``x [..., n]``.  The result
    has ``x``'s shape and dtype.  ``None`` means: use the reference ``fwht`` (reason logged once).
    """
    reason = hadamard_unsupported_reason(rotation, x)
    if reason is not None:
        return _fallback(reason)
    try:
        return _run_hadamard(rotation, x, transpose)
    except Exception as exc:  # as in try_forward: logged once on CUDA, raised on the interpreter
        if x.device.type != "cuda":
            raise
        return _fallback(f"hadamard kernel error {type(exc).__name__}: {exc}")


def _run_hadamard(rotation, x: torch.Tensor, transpose: bool) -> torch.Tensor:
    from .hadamard import hadamard_transform

    return hadamard_transform(x, signs=rotation.signs, transpose=transpose)


def kv_decode_unsupported_reason(codec, words: torch.Tensor, scales: torch.Tensor, out: torch.Tensor,
                                 allow_interpreter: bool = False) -> str | None:
    """Why :func:`try_kv_decode` cannot run the box KV decode kernel (a short sentence), or None when it can: CUDA
    tensors (the CPU interpreter only with ``allow_interpreter``, for tests), a box codec, int32 words, fp16 scales,
    an fp32 / fp16 / bf16 output."""
    if not kernel_device_ok(words.device, allow_interpreter=allow_interpreter):
        return f"kv decode: device {words.device} (needs CUDA + triton)"
    if getattr(codec, "kind", None) != "box" or getattr(codec, "code", None) not in ("hamming", "parity"):
        return f"kv decode: codec {codec!r} is not a Hamming/parity box codec"
    if words.dtype != torch.int32 or scales.dtype != torch.float16:
        return f"kv decode: words {words.dtype} / scales {scales.dtype} (int32 / float16 expected)"
    if out.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"kv decode: output dtype {out.dtype}"
    return None


def try_kv_decode(codec, words: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, *,
                  allow_interpreter: bool = False) -> torch.Tensor | None:
    """``out`` filled with the packed box KV rows decoded by :func:`.box_kv_decode.box_kv_decode` (bit-identical to
    ``box_lut.decode_flat(codec, unpacked words, float32, scales=scales, out=out)``), or ``None`` (reason logged
    once): the caller decodes with the reference.  ``words int32 [..., S]`` (packed streams), ``scales fp16 [...]``,
    ``out [..., D]`` contiguous.  Like :func:`try_forward`, a kernel error on CUDA is logged once and returns None."""
    reason = kv_decode_unsupported_reason(codec, words, scales, out, allow_interpreter)
    if reason is not None:
        return _fallback(reason)
    try:
        from .box_kv_decode import box_kv_decode

        return box_kv_decode(codec, words, scales, out)
    except Exception as exc:
        if words.device.type != "cuda":
            raise
        return _fallback(f"kv decode kernel error {type(exc).__name__}: {exc}")
