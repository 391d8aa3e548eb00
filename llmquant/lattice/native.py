"""Compiled CPU kernels of the box code (``csrc/box_cpu.c``), built with the system C compiler at first use.

What they compute (each is the PyTorch code it replaces, on CPU float32 tensors):

* :func:`decode_rows` — :func:`llmquant.lattice.box_lut.decode_flat` (float32 values, optional row scales):
  **bit-identical** (a table lookup and one fp32 product per value).
* :func:`encode` — :func:`llmquant.lattice.box_encode.nearest`: the exact nearest box codeword, **bit-identical**
  (the same fp32 divisions, roundings and the matmul's sequential summation order; ties to the smallest
  ``|C| j + m``).  Inputs beyond about 1e18 times β (whose squared errors overflow) are outside the contract.
* :func:`half_gemv` — ``x @ W^T`` (+ bias) in fp32 from a bfloat16 / float16 weight, upcast on the fly (the
  stored ``lm_head`` of :mod:`llmquant.models.embed_dtype`; a kernel like :func:`gemv`).
* :func:`gemv` — ``x @ W^T`` (+ bias) of a box-coded packed linear, decoding each word once per call, with no
  dense weight anywhere: a *kernel*, not bit-identical to ``F.linear`` on the decoded weight (another
  summation order; fp32-rounding agreement, tested against the reference).  Used by the ``native`` / ``auto``
  backends of :class:`llmquant.quant.linear.LatticeLinear` for few input rows (decode).

The first two are used wherever available (same bits, several times faster per call at decode sizes);
``LLMQUANT_NATIVE=0`` turns all three off, :func:`disabled` does so for a block (tests compare both paths).

Build: ``cc -O3 -march=native -ffp-contract=off -fPIC -shared`` (contraction off: every product and sum is
rounded as PyTorch rounds it), no OpenMP (one thread per call).  The library is cached under
``$LLMQUANT_CACHE_DIR`` (default ``~/.cache/llmquant``)``/native/<hash>/`` keyed by the source, the flags,
the compiler and the CPU model, written atomically; a failed build leaves :func:`available` False with one
warning, and the PyTorch code runs instead.  Nothing is built at import.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "box_cpu.c"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared")

#: input rows up to which the backends ``native`` / ``auto`` run a decode-size GEMV here (:func:`gemv`,
#: :func:`half_gemv`); more rows decode / upcast a weight tile once and use ``F.linear``
GEMV_MAX_ROWS = 8

_LOCK = threading.Lock()
_STATE: dict = {}
_OFF = threading.local()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("LLMQUANT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "llmquant")
    return Path(root) / "native"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        log.warning("llmquant.lattice.native: no C compiler (cc/gcc/clang) found; using the PyTorch code")
        return None
    src = SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = cc
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), version.encode(), _cpu_model().encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    out_dir = _cache_dir() / key
    so = out_dir / "box_cpu.so"
    if not so.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            log.warning("llmquant.lattice.native: building %s failed (%s); using the PyTorch code",
                        SOURCE.name, proc.stderr.strip().splitlines()[-1:] or proc.returncode)
            return None
        os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.box_decode_f32.argtypes = [p, i64, i64, i32, i64, i64, p, p, p, p]
    lib.box_decode_f32.restype = None
    lib.box_gemv_f32.argtypes = [p, i64, i64, i32, i64, i64, p, p, p, p, p, i64, p, i64]
    lib.box_gemv_f32.restype = None
    lib.box_encode_f32.argtypes = [p, i64, i32, i32, i32, p, p, p, i32, p, p, p, p, p, p, p]
    lib.box_encode_f32.restype = None
    lib.box_quantize_rows_f32.argtypes = [p, p, i64, i64, i32, i32, i32, p, p, p, i32, p, p, p, p, p]
    lib.box_quantize_rows_f32.restype = i64
    lib.half_gemv_f32.argtypes = [p, i32, i64, i64, p, p, i64, p, i64]
    lib.half_gemv_f32.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library (built on the first call), or None when disabled (``LLMQUANT_NATIVE=0``, read at the
    first call; :func:`disabled`) or not buildable."""
    if getattr(_OFF, "depth", 0) > 0:
        return None
    lib = _STATE.get("lib", False)
    if lib is not False:
        return lib
    if os.environ.get("LLMQUANT_NATIVE", "1") == "0" or sys.byteorder != "little":
        _STATE["lib"] = None
        return None
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                try:
                    _STATE["lib"] = _build()
                except OSError as exc:
                    log.warning("llmquant.lattice.native: %s; using the PyTorch code", exc)
                    _STATE["lib"] = None
    return _STATE["lib"]


def available() -> bool:
    """Whether the compiled kernels can run here (builds them on the first call)."""
    return library() is not None


def _required() -> ctypes.CDLL:
    """:func:`library`, or a clear error for a caller that did not check :func:`available` first."""
    lib = library()
    if lib is None:
        raise RuntimeError("native kernels are not available (see llmquant.lattice.native.available())")
    return lib


@contextlib.contextmanager
def disabled():
    """Within the block (this thread), :func:`library` is None: the PyTorch code runs."""
    _OFF.depth = getattr(_OFF, "depth", 0) + 1
    try:
        yield
    finally:
        _OFF.depth -= 1


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _decode_tables(codec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KAP uint16-valued int16 [256, 4], PAIRS float32 [*, 2])`` of ``codec`` on the CPU (from
    :func:`llmquant.lattice.box_lut._tables`; ``KAP[t, p] = κ_p(t) << 2b``), cached on the codec."""
    cache = codec.__dict__.setdefault("_native_cache", {})
    hit = cache.get("dec")
    if hit is None:
        from .box_lut import _tables

        keys, pairs = _tables(codec, torch.float32, torch.device("cpu"))
        kap = ((keys[:, None] >> (16 * torch.arange(4))) & 0xFFFF).to(torch.int32).to(torch.int16).contiguous()
        hit = cache["dec"] = (kap, pairs.view(torch.float32).reshape(-1, 2).contiguous())
    return hit


def _stream(words: torch.Tensor, b: int, packed: bool) -> tuple[int, int]:
    """``(row_bytes, word_bytes)`` of a 2-D int32 word tensor: unpacked words (one per int32) or a packed row
    stream (word ``v`` at byte ``(b + 1) v``, :meth:`llmquant.lattice.box.BoxCodec.pack`)."""
    return words.stride(0) * 4, (b + 1) if packed else 4


def _check_words(words: torch.Tensor) -> None:
    if words.dtype != torch.int32 or words.dim() != 2 or words.device.type != "cpu" or words.stride(1) != 1:
        raise ValueError(f"native: words must be a CPU int32 [rows, n] tensor with unit column stride, got "
                         f"{words.dtype} {tuple(words.shape)} on {words.device}")


def decode_rows(codec, words: torch.Tensor, nw: int, out: torch.Tensor, scales: torch.Tensor | None = None,
                packed: bool = False) -> torch.Tensor:
    """``out [rows, 8 nw]`` (float32, contiguous) = the decoded words, times ``scales [rows]`` (float32) when
    given: :func:`llmquant.lattice.box_lut.decode_flat` bit for bit.  ``words``: int32 ``[rows, >= nw]``
    (``packed=False``, one word per element) or ``[rows, stream]`` (``packed=True``, the codec's row stream)."""
    lib = _required()
    _check_words(words)
    rows = words.shape[0]
    if out.dtype != torch.float32 or not out.is_contiguous() or tuple(out.shape) != (rows, 8 * nw):
        raise ValueError(f"native.decode_rows: out must be contiguous float32 {(rows, 8 * nw)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    if scales is not None:
        scales = scales.to(torch.float32).contiguous()
    kap, pairs = _decode_tables(codec)
    rb, wb = _stream(words, codec.b, packed)
    lib.box_decode_f32(_ptr(words), rb, wb, codec.b, rows, nw, _ptr(kap), _ptr(pairs), _ptr(scales), _ptr(out))
    return out


def gemv(codec, words: torch.Tensor, nw: int, scales: torch.Tensor, x: torch.Tensor,
         bias: torch.Tensor | None = None, packed: bool = True) -> torch.Tensor:
    """``y [M, N]`` float32 = ``x [M, 8 nw] @ W^T (+ bias)``, ``W[n] = scales[n] * decode(words[n])``, from the
    packed rows ``words`` int32 ``[N, stream]`` (``packed=True``) without a decoded weight.  fp32 sums in 8
    lanes per row (``csrc/box_cpu.c``): equal to the reference up to fp32 rounding, not bit for bit."""
    lib = _required()
    _check_words(words)
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != 8 * nw:
        raise ValueError(f"native.gemv: x must be float32 [M, {8 * nw}], got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    n = words.shape[0]
    s = scales.to(torch.float32).contiguous()
    bb = None if bias is None else bias.to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    kap, pairs = _decode_tables(codec)
    rb, wb = _stream(words, codec.b, packed)
    lib.box_gemv_f32(_ptr(words), rb, wb, codec.b, n, nw, _ptr(kap), _ptr(pairs), _ptr(s), _ptr(bb), _ptr(x),
                     x.shape[0], _ptr(y), n)
    return y


def _encode_consts(codec) -> tuple:
    cache = codec.__dict__.setdefault("_native_cache", {})
    hit = cache.get("enc")
    if hit is None:
        from .box_encode import _consts

        c = _consts(codec, torch.device("cpu"))
        betas = c.betas.contiguous()
        bsq = betas.square().contiguous()
        H = c.H.to(torch.uint8).contiguous()
        levels = c.levels.to(torch.float32).contiguous()
        mids = None if c.uniform else c.mids.reshape(-1, (1 << codec.b) - 1).contiguous()
        # level mode of the C search: 1 uniform levels, 0 one level table, 2 a table per β (row j at j 2^(b+1))
        mode = 1 if c.uniform else (2 if c.per_beta else 0)
        hit = cache["enc"] = (betas, bsq, H, mode, levels, mids, c.nc)
    return hit


def encode(codec, y: torch.Tensor, want_words: bool = True, want_xhat: bool = True):
    """``(j, m int64 [n], u int64 [n, 8] | None, x_hat float32 [n, 8] | None, words int32 [n] | None)`` of the
    8-vectors ``y`` (float32 ``[n, 8]``, finite): :func:`llmquant.lattice.box_encode.nearest` bit for bit."""
    lib = _required()
    if y.dtype != torch.float32 or y.dim() != 2 or y.shape[1] != 8 or y.device.type != "cpu":
        raise ValueError(f"native.encode: y must be CPU float32 [n, 8], got {y.dtype} {tuple(y.shape)}")
    y = y.contiguous()
    n = y.shape[0]
    betas, bsq, H, uniform, levels, mids, nc = _encode_consts(codec)
    j = torch.empty(n, dtype=torch.int64)
    m = torch.empty(n, dtype=torch.int64)
    u = torch.empty(n, 8, dtype=torch.int64) if want_words else None
    words = torch.empty(n, dtype=torch.int32) if want_words else None
    xh = torch.empty(n, 8, dtype=torch.float32) if want_xhat else None
    lib.box_encode_f32(_ptr(y), n, codec.b, nc, betas.numel(), _ptr(betas), _ptr(bsq), _ptr(H), uniform,
                       _ptr(levels), _ptr(mids), _ptr(j), _ptr(m), _ptr(u), _ptr(words), _ptr(xh))
    return j, m, u, xh, words


def quantize_rows(codec, x: torch.Tensor, want_xhat: bool = True, want_words: bool = False,
                  chunk_rows: int | None = None):
    """``(x_hat float32 [R, K] | None, words int32 [R, K/8] | None, scales float32 [R])`` of rows ``x`` (float32
    ``[..., K]``, ``K % 8 == 0``, ``R`` rows, any strides): :meth:`llmquant.quant.activations.RowQuantizer.quantize_rows` /
    ``encode_rows`` of the box code, bit for bit: the row's RMS is torch's own ``x.pow(2).mean(-1).sqrt()`` (its
    summation order and its sqrt, which is not always the correctly rounded one: measured 1 ulp off on real
    keys, are the spec); the fp16 rounding, the division, the search and the products are done in C.

    ``chunk_rows``: when ``R > chunk_rows``, ``x`` is taken as ``x.reshape(-1, K)`` and processed that many rows
    at a time into outputs allocated once (as the reference's chunked path: the same RMS operands, and no
    temporary larger than one chunk, which keeps the C heap from growing during a long prefill).  A non-finite
    ``x / s`` raises :func:`llmquant.lattice.closest_point.check_finite`'s error."""
    lib = _required()
    if x.dtype != torch.float32 or x.dim() < 1 or x.shape[-1] % 8 or x.device.type != "cpu":
        raise ValueError(f"native.quantize_rows: x must be CPU float32 [..., K], K % 8 == 0, got {x.dtype} "
                         f"{tuple(x.shape)}")
    K = x.shape[-1]
    R = x.numel() // K
    betas, bsq, H, uniform, levels, mids, nc = _encode_consts(codec)
    scales = torch.empty(R, dtype=torch.float32)
    out = torch.empty(R, K, dtype=torch.float32) if want_xhat else None
    words = torch.empty(R, K // 8, dtype=torch.int32) if want_words else None
    if chunk_rows is None or R <= chunk_rows:
        pieces, step = [x], R
    else:
        x2 = x.reshape(-1, K)
        step = int(chunk_rows)
        pieces = (x2[r0:r0 + step] for r0 in range(0, R, step))
    r0 = 0
    for xc in pieces:
        rms = xc.pow(2).mean(dim=-1, keepdim=True).sqrt_().reshape(-1).contiguous()
        xc = xc.reshape(-1, K).contiguous()
        n = xc.shape[0]
        bad = lib.box_quantize_rows_f32(
            _ptr(xc), _ptr(rms), n, K, codec.b, nc, betas.numel(), _ptr(betas), _ptr(bsq), _ptr(H), uniform,
            _ptr(levels), _ptr(mids), _ptr(scales[r0:]), None if out is None else _ptr(out[r0:]),
            None if words is None else _ptr(words[r0:]))
        if bad:
            from .closest_point import check_finite

            check_finite(xc / scales[r0:r0 + n, None])
            raise FloatingPointError(f"native.quantize_rows: {bad} non-finite entries in x / s")
        r0 += n
        del rms, xc
    return out, words, scales


def half_gemv(w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y [M, N]`` float32 = ``x [M, K] @ w.float()^T (+ bias)`` for a contiguous CPU ``w [N, K]`` in bfloat16 or
    float16, read 2 bytes per weight and upcast exactly in registers (no fp32 copy).  fp32 FMA sums in 8 lanes:
    equal to ``F.linear(x, w.float(), bias)`` up to fp32 rounding, not bit for bit."""
    lib = _required()
    if w.dtype not in (torch.bfloat16, torch.float16) or w.dim() != 2 or not w.is_contiguous() or w.device.type != "cpu":
        raise ValueError(f"native.half_gemv: w must be a contiguous CPU bfloat16/float16 [N, K], got {w.dtype} "
                         f"{tuple(w.shape)}")
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"native.half_gemv: x must be float32 [M, {w.shape[1]}], got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous()
    bb = None if bias is None else bias.to(torch.float32).contiguous()
    n = w.shape[0]
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    lib.half_gemv_f32(_ptr(w), int(w.dtype == torch.float16), n, w.shape[1], _ptr(bb), _ptr(x), x.shape[0], _ptr(y), n)
    return y
