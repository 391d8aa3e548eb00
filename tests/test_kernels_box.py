"""Box-code W4A16 decode-GEMM (kernels/box_w4a16.py) against BoxCodec (TRITON_INTERPRET=1 on CPU).

* the kernel's lane decode (the Triton integer ops the interpreter runs) is bit-identical to
  ``BoxCodec.decode_rows`` for encoded words and for random words covering every (m, j) top byte;
* the PTX block the GPU runs (``_WORD_PTX``) is executed by a small PTX emulator here (no GPU needed) and
  checked lane by lane against the same decode, and its 8-MAC against an fp64 dot;
* the GEMM (split-K or not, bias on/off, odd shapes, M = 1, 3, 17, fp16 / fp32 / bf16 activations) is within
  the fp16-rounding bound of the fp32 reference (the kernel reads x as fp16);
* the level-table path (``levels=codec.levels``: the shipped ``box_variant: table`` code, a companded γ, and the
  shipped ``beta_tables`` code with a level table per β, ``levels (16, 16)``): its dequant is bit-identical to
  ``decode_rows``, its PTX (emulator) reads ``betas[j] * levels[(j,) l_i]`` exactly, its GEMM (GEMV, split-K, GPU
  tile, dequant prefill) within the same bound;
* the small-M kernel (``kernels/box_w4a16_rows.py``, one decode per word for M_BLOCK rows) equals the one-row kernel
  bit for bit (both paths, fp16 / bf16 / fp32 x, split-K, bias, masked rows, the GPU tiles), and its PTX blocks
  (decode, then per row) equal ``_WORD_PTX`` bit for bit in the emulator;
* ``FUSED_REDUCE`` (split-K reduced in the kernel by the last split of a tile) equals the host reduction bit for bit
  and leaves its counters at zero.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch
from _kernels_support import kernel_device

from llmquant.lattice.box import BoxCodec, E8BoxCodec, load_box_setting, shipped_box_codec

pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _to_i32(w64: torch.Tensor) -> torch.Tensor:
    return torch.where(w64 >= 2**31, w64 - 2**32, w64).to(torch.int32)


def _random_words(n: int, kw: int, seed: int) -> torch.Tensor:
    """Uniformly random words: every u field, message and β index (all 256 top bytes appear)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 1 << 24, (n, kw), generator=g)
    top = torch.randint(0, 256, (n, kw), generator=g)
    top.view(-1)[:256] = torch.arange(256)[: top.numel()]
    return _to_i32((top << 24) | low)


def _table_codec() -> BoxCodec:
    """The shipped level-table code of ``box_variant: table`` (b = 3, Hamming, 16 β, 8 positive levels)."""
    st = load_box_setting(3, "table")
    return BoxCodec(3, st["betas"], st["code"], levels=st["levels"])


def _beta_tables_codec() -> BoxCodec:
    """The shipped code with a level table per β (``box_variant: beta_tables``: b = 3, Hamming, 16 β, levels
    ``(16, 16)``)."""
    codec = shipped_box_codec(3, "beta_tables")
    assert codec.per_beta_levels and codec.levels.shape == (16, 16)
    return codec


def _levels_arg(codec: BoxCodec):
    """What the dispatcher passes: None for the γ = 1 lattice code, else the 16 signed levels (per-β tables: the
    ``(16, 16)`` table; the dispatcher flattens it, the launcher reads either)."""
    return None if codec.gamma == 1.0 and codec.level_table is None else codec.levels


def _encoded_words(n: int, kw: int, seed: int, codec: BoxCodec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Words of the nearest codewords of a Gaussian W, and fp16 row scales (how LatticeLinear stores them)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 8 * kw, generator=g)
    scale = (w.pow(2).mean(1).sqrt()).half()
    words = (codec or E8BoxCodec(3)).encode((w / scale.float()[:, None]).reshape(n, kw, 8))
    return words, scale


# ---------------------------------------------------------------------------------------------------- decode


@pytest.mark.parametrize("kind", ["random", "encoded"])
def test_dequant_bit_identical_to_decode_rows(dev, kind):
    from llmquant.kernels.box_w4a16 import box_dequant

    codec = E8BoxCodec(3)
    if kind == "random":
        words = _random_words(40, 24, seed=1)
        scale = (torch.rand(40, generator=torch.Generator().manual_seed(2)) + 0.25).half()
    else:
        words, scale = _encoded_words(33, 17, seed=3)
    w = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev))
    ref = codec.decode_rows(words, scale.float())
    assert torch.equal(w.cpu(), ref)
    # the prefill path's dequant into the activation dtype: the fp32 decode, cast
    w16 = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev), dtype=torch.float16)
    assert w16.dtype == torch.float16 and torch.equal(w16.cpu(), ref.half())


# ------------------------------------------------------------------------------------- PTX emulator (GPU code)


def _f16(bits: int) -> float:
    return float(np.array([bits & 0xFFFF], np.uint16).view(np.float16)[0])


def _f16_bits(v: float) -> int:
    return int(np.array([v], np.float16).view(np.uint16)[0])


def _f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def _f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def _h2(fn, a: int, *rest: int) -> int:
    """Apply ``fn`` to the lo and hi fp16 lanes (values computed in fp64, rounded once to fp16)."""
    out = 0
    for sh in (0, 16):
        vals = [_f16(x >> sh) for x in (a, *rest)]
        out |= _f16_bits(fn(*vals)) << sh
    return out


def run_word_ptx(ptx: str, args: dict, memory: dict, outputs: int = 0):
    """Execute the straight-line PTX of ``_WORD_PTX`` (the subset it uses) on Python ints.

    ``args``: ``{"$1": word, ...}`` (u32 / u64 bit patterns); ``memory``: address -> u32 for ``ld.global``.
    Returns the u32 written to ``$0`` (``outputs > 0``: the list of ``$0 .. $(outputs-1)``).  fp16 ops round once
    from the exact value (fp64 holds it here).
    """
    regs: dict = dict(args)
    m32 = 0xFFFFFFFF

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return int(tok, 0) & m32

    for raw in ptx.splitlines():
        line = raw.strip()
        if not line or line in ("{", "}") or line.startswith(".reg"):
            continue
        m = re.fullmatch(r"([a-z0-9.]+)\s+(.*);", line)
        assert m, line
        op, rest = m.group(1), m.group(2)
        if op == "mov.b64" and rest.startswith("{"):  # split a u64 into {lo, hi}
            lo, hi, src = re.fullmatch(r"\{(\w+),\s*(\w+)\},\s*(\S+)", rest).groups()
            v = val(src) if src in regs else int(src, 0)
            regs[lo], regs[hi] = v & m32, v >> 32
            continue
        if op == "mov.b64":  # {lo, hi} -> u64
            dst, lo, hi = re.fullmatch(r"(\w+),\s*\{(\w+),\s*(\w+)\}", rest).groups()
            regs[dst] = val(lo) | (val(hi) << 32)
            continue
        if op == "mov.b32" and "{" in rest:  # u32 -> {lo16, hi16}
            lo, hi, src = re.fullmatch(r"\{(\w+),\s*(\w+)\},\s*(\S+)", rest).groups()
            v = val(src)
            regs[lo], regs[hi] = v & 0xFFFF, v >> 16
            continue
        dst, *ops = [t.strip() for t in rest.split(",")]
        if op in ("ld.global.nc.f32", "ld.global.nc.u32"):
            regs[dst] = memory[val(ops[0].strip("[]"))]
            continue
        a = [val(o) for o in ops]
        if op == "mov.b32":
            r = a[0]
        elif op == "shr.u32":
            r = a[0] >> min(a[1], 32)
        elif op == "shr.s32":
            r = ((a[0] - ((a[0] >> 31) << 32)) >> min(a[1], 31)) & m32
        elif op == "shl.b32":
            r = (a[0] << min(a[1], 32)) & m32
        elif op == "and.b32":
            r = a[0] & a[1]
        elif op == "popc.b32":
            r = a[0].bit_count()
        elif op == "mad.lo.u32":
            r = (a[0] * a[1] + a[2]) & m32
        elif op == "mul.wide.u32":
            r = a[0] * a[1]
        elif op == "mul.hi.u32":
            r = (a[0] * a[1]) >> 32
        elif op == "mad.hi.u32":
            r = (((a[0] * a[1]) >> 32) + a[2]) & m32
        elif op == "lop3.b32":
            lut = a[3]
            r = 0
            for bit in range(32):
                idx = (((a[0] >> bit) & 1) << 2) | (((a[1] >> bit) & 1) << 1) | ((a[2] >> bit) & 1)
                r |= ((lut >> idx) & 1) << bit
        elif op == "shf.l.wrap.b32":  # upper word of (b:a) << (c mod 32)
            r = ((((a[1] << 32) | a[0]) << (a[2] & 31)) >> 32) & m32
        elif op == "add.rn.f16x2":
            r = _h2(lambda x, y: x + y, a[0], a[1])
        elif op == "mul.rn.f16x2":
            r = _h2(lambda x, y: x * y, a[0], a[1])
        elif op == "fma.rn.f16x2":
            r = _h2(lambda x, y, z: x * y + z, a[0], a[1], a[2])
        elif op == "add.rn.f16":
            r = _f16_bits(_f16(a[0]) + _f16(a[1]))
        elif op == "cvt.f32.f16":
            r = _f32_bits(_f16(a[0]))
        elif op == "cvt.rn.f16x2.f32":  # d = {hi: a, lo: b}
            r = (_f16_bits(_f32(a[0])) << 16) | _f16_bits(_f32(a[1]))
        elif op == "prmt.b32":  # default mode, selector without sign replication
            pool = a[0] | (a[1] << 32)
            r = sum(((pool >> (8 * ((a[2] >> (4 * k)) & 7))) & 0xFF) << (8 * k) for k in range(4))
        elif op == "mul.rn.f32":
            r = _f32_bits(float(np.float32(np.float64(_f32(a[0])) * _f32(a[1]))))
        elif op == "fma.rn.f32":
            r = _f32_bits(float(np.float32(np.float64(_f32(a[0])) * _f32(a[1]) + _f32(a[2]))))
        else:
            raise AssertionError(f"PTX op not emulated: {op}")
        regs[dst] = r
    if outputs:
        return [regs[f"${i}"] for i in range(outputs)]
    return regs["$0"]


def test_word_ptx_matches_box_decode():
    """The GPU's PTX, run by the emulator: decoded lanes exact, the 8-MAC + β-FMA within fp16 rounding."""
    from llmquant.kernels import box_w4a16 as K

    codec = E8BoxCodec(3)
    base = 0x7F00_0000_1000  # 64-byte aligned, as the launcher guarantees
    memory = {base + 4 * j: _f32_bits(float(b)) for j, b in enumerate(codec.betas.tolist())}
    words = _random_words(1, 300, seed=5)[0].tolist() + _encoded_words(1, 40, seed=6)[0][0].tolist()
    # lane check: x pairs of powers of two isolate each coordinate exactly
    lane_ptx = K._WORD_PTX
    g = torch.Generator().manual_seed(7)
    for w in words:
        u = w & 0xFFFFFFFF
        dec = (codec.decode(torch.tensor([w]), torch.float64) / codec.betas.double()[u >> 28]).flatten().tolist()
        for i in range(8):
            x = [0.0] * 8
            x[i] = 1.0
            pairs = [_f16_bits(x[p]) | (_f16_bits(x[p + 4]) << 16) for p in range(4)]
            out = run_word_ptx(lane_ptx, {"$1": u, "$2": pairs[0], "$3": pairs[1], "$4": pairs[2], "$5": pairs[3],
                                          "$6": base, "$7": _f32_bits(0.0)}, memory)
            beta = float(codec.betas[u >> 28])
            assert _f32(out) == pytest.approx(beta * dec[i] / K.DECODE_SCALE, rel=1e-6, abs=0), (hex(u), i)
        # a random x: the fp16 8-MAC within fp16 rounding of the exact dot
        xs = (torch.randn(8, generator=g) * 3).half().float().tolist()
        pairs = [_f16_bits(xs[p]) | (_f16_bits(xs[p + 4]) << 16) for p in range(4)]
        acc0 = 0.25
        out = run_word_ptx(lane_ptx, {"$1": u, "$2": pairs[0], "$3": pairs[1], "$4": pairs[2], "$5": pairs[3],
                                      "$6": base, "$7": _f32_bits(acc0)}, memory)
        beta = float(codec.betas[u >> 28])
        exact = acc0 + beta * sum(d * x for d, x in zip(dec, xs)) / K.DECODE_SCALE
        bound = beta * sum(abs(d * x) for d, x in zip(dec, xs)) / K.DECODE_SCALE * 8 * 2**-11 + 1e-6
        assert abs(_f32(out) - exact) <= bound, (hex(u), _f32(out), exact)


def test_x_pair_ptx():
    """The x-pair PTX (fp16: PRMT; bf16: shift / mask to f32 and one cvt.rn.f16x2.f32) builds (x_p, x_{p+4})."""
    from llmquant.kernels import box_w4a16 as K

    g = torch.Generator().manual_seed(8)
    for dtype in (torch.float16, torch.bfloat16):
        x = (torch.randn(8, generator=g) * 10).to(dtype)
        q = [int(v) & 0xFFFFFFFF for v in x.view(torch.int32).tolist()]  # q[i] = (x[2i], x[2i+1])
        if dtype == torch.float16:
            progs = ["prmt.b32 $0, $1, $2, 0x5410;", "prmt.b32 $0, $1, $2, 0x7632;"]
        else:
            progs = [K._BF16_LO_PAIR.value, K._BF16_HI_PAIR.value]
        for p in range(4):
            src = progs[p % 2]
            out = run_word_ptx(src, {"$1": q[p // 2], "$2": q[2 + p // 2]}, {})
            want = x[[p, p + 4]].to(torch.float16).view(torch.int16).tolist()
            assert out == (want[0] & 0xFFFF) | ((want[1] & 0xFFFF) << 16), (dtype, p)


# ------------------------------------------------------------------------------------------------------ GEMM


def _check_gemm(dev, m, n, kw, dtype, bias, config=None, seed=0, codec=None):
    from llmquant.kernels.box_w4a16 import box_w4a16_matmul, box_w4a16_reference

    codec = codec or E8BoxCodec(3)
    levels = _levels_arg(codec)
    words, scale = _encoded_words(n, kw, seed=seed, codec=codec)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(m, 8 * kw, generator=g).to(dtype)
    b = torch.randn(n, generator=g) if bias else None
    out = box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev),
                           None if b is None else b.to(dev), config=config,
                           levels=None if levels is None else levels.to(dev))
    assert out.shape == (m, n) and out.dtype == dtype
    W = codec.decode_rows(words, scale.float()).double()
    exact = x.double() @ W.T + (0 if b is None else b.double())
    # the kernel's rounding: x to fp16 (exact for these values unless fp32), fp16 products / lane sums of the
    # 8 terms of a word (table path: x exact, fp32 products and sums); bound by 2^-9 of the sum of |terms| (+ the
    # output dtype's rounding)
    xh = x.to(torch.float16).double()
    mag = xh.abs() @ W.abs().T
    out_eps = {torch.float16: 2**-11, torch.bfloat16: 2**-8, torch.float32: 2**-24}[dtype]
    tol = mag * 2**-9 + exact.abs() * out_eps + (xh - x.double()).abs() @ W.abs().T + 1e-5
    err = (out.double().cpu() - exact).abs()
    assert (err <= tol).all(), f"max err {err.max():.3g}, worst excess {(err - tol).max():.3g}"
    ref = box_w4a16_reference(x, words, scale, codec.betas, b, levels=levels)
    assert ref.shape == out.shape


@pytest.mark.parametrize("m", [1, 3, 17])
def test_gemm_fp16_shapes(dev, m):
    _check_gemm(dev, m, 37, 13, torch.float16, bias=False, seed=m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_gemm_dtypes_bias(dev, dtype):
    _check_gemm(dev, 2, 48, 16, dtype, bias=True, seed=11)


def test_gemm_split_k_and_even_tiles(dev):
    # EVEN_N / EVEN_G (unmasked loads) and the split-K partial sums, with and without bias
    _check_gemm(dev, 1, 32, 32, torch.float16, bias=True, config={"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": 2})
    _check_gemm(dev, 3, 33, 21, torch.float16, bias=False, config={"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": 3})


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gemm_dequant_prefill_path(dev, dtype):
    """Prefill (M > DEQUANT_MIN_M on CUDA; forced here): dequant once into x's dtype, then one dense GEMM."""
    _check_gemm(dev, 19, 40, 12, dtype, bias=True, config={"DEQUANT": True})
    _check_gemm(dev, 5, 24, 9, dtype, bias=False, config={"DEQUANT": True})


def test_gemm_gpu_tile_config(dev):
    """The GPU tile (BLOCK_N = 1024, BLOCK_G = 4, the SASS benchmark's config) on a small, masked shape."""
    from llmquant.kernels.box_w4a16 import GPU_CONFIG

    _check_gemm(dev, 1, 40, 12, torch.float16, bias=True, config=dict(GPU_CONFIG, SPLIT_K=2))


def test_gemm_leading_dims_and_errors(dev):
    from llmquant.kernels.box_w4a16 import box_w4a16_matmul

    codec = E8BoxCodec(3)
    words, scale = _encoded_words(16, 4, seed=4)
    x = torch.randn(2, 3, 32).half()
    out = box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev))
    assert out.shape == (2, 3, 16)
    W = codec.decode_rows(words, scale.float())
    assert torch.allclose(out.float().cpu(), (x.float() @ W.T), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="K = 8"):
        box_w4a16_matmul(torch.randn(1, 40).half().to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev))
    with pytest.raises(ValueError, match="16 box-code scales"):
        box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas[:8].to(dev))


# ------------------------------------------------------------------------------------------ level-table path


def _gamma_codec() -> BoxCodec:
    """A companded (γ = 1.3) Hamming box code: no level table, but levels sgn(c)|c|^γ (the same table path)."""
    return BoxCodec(3, E8BoxCodec(3).betas, "hamming", gamma=1.3)


def _which_codec(which: str) -> BoxCodec:
    return {"table": _table_codec, "gamma": _gamma_codec, "beta_tables": _beta_tables_codec}[which]()


@pytest.mark.parametrize("which", ["table", "gamma", "beta_tables"])
@pytest.mark.parametrize("kind", ["random", "encoded"])
def test_table_dequant_bit_identical_to_decode_rows(dev, which, kind):
    """The table path's index decode (l_i = 2 u_i + h_i) and ``scale * (beta * levels[l])`` in fp32, bit for bit
    (per-β tables: ``levels[j, l]``)."""
    from llmquant.kernels.box_w4a16 import box_dequant

    codec = _which_codec(which)
    assert codec.levels.numel() == (256 if which == "beta_tables" else 16) and codec.gamma != 1.0
    if kind == "random":
        words = _random_words(40, 24, seed=21)  # every top byte (m, j) appears
        scale = (torch.rand(40, generator=torch.Generator().manual_seed(22)) + 0.25).half()
    else:
        words, scale = _encoded_words(33, 17, seed=23, codec=codec)
    lv = codec.levels.to(dev)
    w = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev), levels=lv)
    ref = codec.decode_rows(words, scale.float())
    assert torch.equal(w.cpu(), ref)
    # the definition (fields, codeword table, level and β lookups), independently of box_lut
    spec = (codec.decode_reference(words) * scale.float()[:, None, None]).reshape(ref.shape)
    assert torch.equal(w.cpu(), spec)
    w16 = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev), dtype=torch.float16, levels=lv)
    assert w16.dtype == torch.float16 and torch.equal(w16.cpu(), ref.half())
    # a wrong table gives a different W: the kernel really reads it
    w_uni = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev))
    assert not torch.equal(w_uni.cpu(), ref)
    if which == "beta_tables":
        # ... and really reads row j: one row for every β gives a different W; the flattened table the same one
        w_row = box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev), levels=lv[5].contiguous())
        assert not torch.equal(w_row.cpu(), ref)
        assert torch.equal(box_dequant(words.to(dev), scale.to(dev), codec.betas.to(dev), levels=lv.flatten()).cpu(),
                           ref)


def test_table_level_indices_match_fields():
    """The table path's constants: the u-field masks of ``w << 3`` and the codeword-bit table (``h_i`` of message
    ``m`` at bit ``3i + 2``) against the Hamming codewords (the whole index decode is checked bit for bit by the
    dequant and PTX tests)."""
    from llmquant.kernels import box_w4a16 as K

    from llmquant.lattice.box import codewords

    assert K.TAB_U_EVEN == sum(0b111 << (3 * i + 3) for i in (0, 2, 4, 6))
    assert K.TAB_U_ODD == sum(0b111 << (3 * i + 3) for i in (1, 3, 5, 7))
    H = K.hamming_h_table()
    assert len(H) == 16
    # the mux keeps each copy's own u fields and takes the h bit just below each of them from H
    assert all(not (K.TAB_U_EVEN >> (3 * i + 2)) & 1 for i in (0, 2, 4, 6))
    assert all(not (K.TAB_U_ODD >> (3 * i + 2)) & 1 for i in (1, 3, 5, 7))
    for mm in range(16):
        assert [(H[mm] >> (3 * i + 2)) & 1 for i in range(8)] == codewords("hamming")[mm].tolist()


def _table_memory(codec: BoxCodec) -> tuple[dict, int, int, int]:
    """The emulator's memory for the table PTX: ``(memory, tbase, hbase, bbase)``, the level table (per-β: the
    flattened 16 x 16 table, 1024-byte aligned), the codeword-bit table and betas (64-byte aligned), as the
    launcher lays them out."""
    from llmquant.kernels import box_w4a16 as K

    tbase, hbase, bbase = 0x7F00_0000_2400, 0x7F00_0000_3040, 0x7F00_0000_1000
    memory = {bbase + 4 * j: _f32_bits(float(b)) for j, b in enumerate(codec.betas.tolist())}
    memory.update({tbase + 4 * i: _f32_bits(float(v)) for i, v in enumerate(codec.levels.flatten().tolist())})
    memory.update({hbase + 4 * m: e for m, e in enumerate(K.hamming_h_table())})
    return memory, tbase, hbase, bbase


def _level_values(codec: BoxCodec, w: int) -> list[float]:
    """The 8 fp32 levels ``levels[(j,) 2 u_i + h_i]`` of one word (from ``BoxCodec.fields``)."""
    lv = codec.levels[(w & 0xFFFFFFFF) >> 28] if codec.per_beta_levels else codec.levels
    return [float(lv[i]) for i in _level_indices(codec, w)]


@pytest.mark.parametrize("which", ["table", "gamma", "beta_tables"])
def test_table_word_ptx_matches_box_decode(which):
    """The GPU's table-path PTX (``_TABLE_WORD_PTX``; per-β tables ``_TABLE_BETA_WORD_PTX``), run by the emulator:
    each coordinate's level (one-hot x) exactly ``betas[j] * levels[(j,) l_i]``, and a random x's 8-MAC + β-FMA
    equal to the fp32 computation in coordinate order (the same roundings: a product, seven FMAs, one FMA with β)."""
    from llmquant.kernels import box_w4a16 as K

    codec = _which_codec(which)
    ptx = K._TABLE_BETA_WORD_PTX if codec.per_beta_levels else K._TABLE_WORD_PTX
    memory, tbase, hbase, bbase = _table_memory(codec)
    words = _random_words(1, 300, seed=25)[0].tolist() + _encoded_words(1, 40, seed=26, codec=codec)[0][0].tolist()
    g = torch.Generator().manual_seed(27)
    f32 = np.float32
    for w in words:
        u = w & 0xFFFFFFFF
        dec = codec.decode_reference(torch.tensor([w]))[0].tolist()  # fp32 beta * level
        beta = f32(codec.betas[u >> 28])
        for i in range(8):
            x = [0.0] * 8
            x[i] = 1.0
            args = {"$1": u, **{f"${2 + k}": _f32_bits(x[k]) for k in range(8)}, "$10": tbase, "$11": hbase,
                    "$12": bbase, "$13": _f32_bits(0.0)}
            assert _f32(run_word_ptx(ptx, args, memory)) == dec[i], (hex(u), i)
        xs = (torch.randn(8, generator=g) * 3).half().float().tolist()
        acc0 = 0.25
        args = {"$1": u, **{f"${2 + k}": _f32_bits(xs[k]) for k in range(8)}, "$10": tbase, "$11": hbase,
                "$12": bbase, "$13": _f32_bits(acc0)}
        lv = [f32(v) for v in _level_values(codec, w)]
        d = f32(lv[0] * f32(xs[0]))
        for k in range(1, 8):
            d = f32(np.float64(lv[k]) * xs[k] + np.float64(d))
        want = f32(np.float64(beta) * np.float64(d) + acc0)
        assert _f32(run_word_ptx(ptx, args, memory)) == float(want), hex(u)


def _level_indices(codec: BoxCodec, w: int) -> list[int]:
    """Level indices ``2 u_i + h_i`` of one word, from ``BoxCodec.fields`` and the codeword table."""
    from llmquant.lattice.box import codewords

    u, m, _ = codec.fields(torch.tensor([w]))
    return (2 * u[0] + codewords(codec.code)[m[0]]).tolist()


@pytest.mark.parametrize("which", ["table", "beta_tables"])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_table_gemm_fp16_shapes(dev, m, which):
    _check_gemm(dev, m, 37, 13, torch.float16, bias=False, seed=30 + m, codec=_which_codec(which))


@pytest.mark.parametrize("which", ["table", "beta_tables"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_table_gemm_dtypes_bias(dev, dtype, which):
    _check_gemm(dev, 2, 48, 16, dtype, bias=True, seed=41, codec=_which_codec(which))


@pytest.mark.parametrize("which", ["table", "beta_tables"])
def test_table_gemm_split_k_gpu_tile_gamma(dev, which):
    from llmquant.kernels.box_w4a16 import GPU_CONFIG

    codec = _which_codec(which)
    _check_gemm(dev, 1, 32, 32, torch.float16, bias=True, config={"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": 2},
                codec=codec)
    _check_gemm(dev, 3, 33, 21, torch.float16, bias=False, config={"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": 3},
                codec=codec)
    _check_gemm(dev, 1, 40, 12, torch.float16, bias=True, config=dict(GPU_CONFIG, SPLIT_K=2), codec=codec)
    if which == "table":
        _check_gemm(dev, 2, 24, 9, torch.float16, bias=True, codec=_gamma_codec())


@pytest.mark.parametrize("which", ["table", "beta_tables"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_table_gemm_dequant_prefill_path(dev, dtype, which):
    _check_gemm(dev, 19, 40, 12, dtype, bias=True, config={"DEQUANT": True}, codec=_which_codec(which))


@pytest.mark.parametrize("which", ["table", "beta_tables"])
def test_table_gemm_fp32_accumulation_is_tight(dev, which):
    """The table path reads x exactly and multiplies and sums in fp32: the error is at fp32 level (n u |terms|,
    u = 2^-24), far inside the fp16 lanes' 2^-9 (the lattice path could not pass this: it rounds x to fp16)."""
    from llmquant.kernels.box_w4a16 import box_w4a16_matmul

    codec = _which_codec(which)
    kw = 16
    words, scale = _encoded_words(24, kw, seed=51, codec=codec)
    x = torch.randn(2, 8 * kw, generator=torch.Generator().manual_seed(52))
    out = box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev), levels=codec.levels.to(dev),
                           config={"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": 1})
    W = codec.decode_rows(words, scale.float()).double()
    exact = x.double() @ W.T
    bound = (x.double().abs() @ W.abs().T) * (8 * kw + 16) * 2**-24 + 1e-30
    err = (out.double().cpu() - exact).abs()
    assert (err <= bound).all(), f"max err {err.max():.3g}, worst excess {(err - bound).max():.3g}"


def test_table_errors(dev):
    from llmquant.kernels.box_w4a16 import box_w4a16_matmul, box_w4a16_reference

    codec = _table_codec()
    words, scale = _encoded_words(16, 4, seed=61, codec=codec)
    x = torch.randn(1, 32).half()
    with pytest.raises(ValueError, match="16 signed levels"):
        box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev), levels=codec.levels[:8].to(dev))
    bad = codec.levels.clone()
    bad[0] = 1.0
    with pytest.raises(ValueError, match="antisymmetric"):
        box_w4a16_reference(x, words, scale, codec.betas, levels=bad)
    per_beta = _beta_tables_codec().levels
    with pytest.raises(ValueError, match="16 rows of them"):
        box_w4a16_matmul(x.to(dev), words.to(dev), scale.to(dev), codec.betas.to(dev), levels=per_beta[:15].to(dev))
    bad = per_beta.clone()
    bad[3, 0] = 1.0
    with pytest.raises(ValueError, match="antisymmetric"):
        box_w4a16_reference(x, words, scale, codec.betas, levels=bad)


def test_level_table_alignment():
    """The launcher's table argument: 64-byte aligned for one table, 1024-byte aligned for the 16 x 16 per-β tables
    (the PTX ORs ``64 j + 4 l`` into the address's low word); a misaligned per-β table is copied to an aligned one
    with the same values (``aligned_levels``, what the dispatcher caches per layer)."""
    from llmquant.kernels.box_w4a16 import _table_arg, aligned_levels

    per_beta = _beta_tables_codec().levels
    betas = torch.ones(16)
    for lv in (per_beta, _table_codec().levels):
        align = 1024 if lv.numel() == 256 else 64
        a = aligned_levels(lv)
        assert a.shape == (lv.numel(),) and a.data_ptr() % align == 0 and torch.equal(a, lv.flatten())
        buf = torch.empty(lv.numel() + 512)
        off = next(o for o in range(1, 512) if (buf.data_ptr() + 4 * o) % align)  # a misaligned copy
        mis = buf[off:off + lv.numel()]
        mis.copy_(lv.flatten())
        t, _, table, per = _table_arg(mis, betas)
        assert table and per == (lv.numel() == 256) and t.data_ptr() % align == 0 and torch.equal(t, lv.flatten())
        assert _table_arg(a, betas)[0] is a  # aligned: passed as is


# ------------------------------------------------------------------------------ small-M kernel (box_w4a16_rows)


def test_rows_ptx_equals_word_ptx():
    """The small-M kernel's GPU code, run by the emulator: the decode block (5 outputs) then the per-row block give
    the one-row ``_WORD_PTX`` result bit for bit (random words, random x and accumulators)."""
    from llmquant.kernels import box_w4a16 as K
    from llmquant.kernels import box_w4a16_rows as R

    codec = E8BoxCodec(3)
    base = 0x7F00_0000_1000
    memory = {base + 4 * j: _f32_bits(float(b)) for j, b in enumerate(codec.betas.tolist())}
    words = _random_words(1, 256, seed=71)[0].tolist() + _encoded_words(1, 40, seed=72)[0][0].tolist()
    g = torch.Generator().manual_seed(73)
    for w in words:
        u = w & 0xFFFFFFFF
        v = run_word_ptx(R._DECODE_PTX, {"$5": u, "$6": base}, memory, outputs=5)
        for _ in range(3):  # three rows share the decode
            xs = (torch.randn(8, generator=g) * 3).half().float().tolist()
            pairs = [_f16_bits(xs[p]) | (_f16_bits(xs[p + 4]) << 16) for p in range(4)]
            acc = _f32_bits(float(torch.randn(1, generator=g)))
            want = run_word_ptx(K._WORD_PTX, {"$1": u, "$2": pairs[0], "$3": pairs[1], "$4": pairs[2],
                                              "$5": pairs[3], "$6": base, "$7": acc}, memory)
            got = run_word_ptx(R._ROW_PTX, {"$1": v[0], "$2": v[1], "$3": v[2], "$4": v[3], "$5": pairs[0],
                                            "$6": pairs[1], "$7": pairs[2], "$8": pairs[3], "$9": v[4],
                                            "$10": acc}, memory)
            assert got == want, hex(u)


@pytest.mark.parametrize("which", ["table", "gamma", "beta_tables"])
def test_rows_table_decode_ptx(which):
    """The small-M kernel's table decode block: the 8 levels ``levels[(j,) l_i]`` and ``betas[j]`` of every word (the
    per-row MACs are Triton fp32 ops in the order of ``_TABLE_WORD_PTX``: a product, seven FMAs, one β FMA)."""
    from llmquant.kernels import box_w4a16_rows as R

    codec = _which_codec(which)
    ptx = R._TABLE_BETA_DECODE_PTX if codec.per_beta_levels else R._TABLE_DECODE_PTX
    memory, tbase, hbase, bbase = _table_memory(codec)
    for w in _random_words(1, 300, seed=74)[0].tolist():
        u = w & 0xFFFFFFFF
        out = run_word_ptx(ptx, {"$9": u, "$10": tbase, "$11": hbase, "$12": bbase}, memory, outputs=9)
        want = [_f32_bits(v) for v in _level_values(codec, w)]
        assert out[:8] == want and out[8] == _f32_bits(float(codec.betas[u >> 28])), hex(u)


@pytest.mark.parametrize("which", ["lattice", "table", "beta_tables"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rows_kernel_bit_identical_to_one_row_kernel(dev, which, dtype):
    """M = 2..11 through the small-M kernel (M_BLOCK 2, 4, 8; masked rows, split-K, bias) equals the one-row kernel
    (one program per row, the same tiles) bit for bit, and the default config takes it for 1 < M."""
    from llmquant.kernels.box_w4a16 import box_w4a16_matmul, choose_config

    codec = E8BoxCodec(3) if which == "lattice" else _which_codec(which)
    levels = _levels_arg(codec)
    words, scale = _encoded_words(37, 21, seed=81, codec=codec)
    g = torch.Generator().manual_seed(82)
    bias = torch.randn(37, generator=g)
    args = (words.to(dev), scale.to(dev), codec.betas.to(dev))
    lv = None if levels is None else levels.to(dev)
    for m, mb, split, b in ((2, 2, 1, None), (3, 4, 2, bias), (11, 8, 3, bias)):
        x = (torch.randn(m, 8 * 21, generator=g) * 2).to(dtype).to(dev)
        bb = None if b is None else b.to(dev)
        cfg = {"BLOCK_N": 16, "BLOCK_G": 8, "SPLIT_K": split}
        one = box_w4a16_matmul(x, *args, bb, config=cfg, levels=lv)
        rows = box_w4a16_matmul(x, *args, bb, config=dict(cfg, M_BLOCK=mb), levels=lv)
        assert torch.equal(rows, one), (m, mb, split)
    # and a row alone (M = 1) gives the same bits
    assert torch.equal(box_w4a16_matmul(x[m - 1:], *args, bb, config=cfg, levels=lv), one[m - 1:])
    assert choose_config(3, 37, 21, on_gpu=False)["M_BLOCK"] == 4 and "M_BLOCK" not in choose_config(
        1, 37, 21, on_gpu=False)
    gpu = choose_config(16, 4096, 512, on_gpu=True)
    assert gpu["M_BLOCK"] == 8 and gpu["SPLIT_K"] >= 1


@pytest.mark.parametrize("rows", [1, 3])
def test_fused_split_k_reduction(dev, rows):
    """``FUSED_REDUCE``: the last split of an output tile to arrive sums the fp32 partials in split order, adds the
    bias and casts, in the kernel (no host reduction); it equals the host reduction (``part.sum(0)``, + bias, cast)
    bit for bit, and leaves the arrival counters at zero for the next call (run twice)."""
    from llmquant.kernels import box_w4a16 as K

    codec = E8BoxCodec(3)
    words, scale = _encoded_words(40, 24, seed=91)
    g = torch.Generator().manual_seed(92)
    x = torch.randn(rows, 8 * 24, generator=g).half().to(dev)
    b = torch.randn(40, generator=g).to(dev)
    args = (x, words.to(dev), scale.to(dev), codec.betas.to(dev), b)
    cfg = {"BLOCK_N": 16, "BLOCK_G": 4, "SPLIT_K": 3}
    if rows > 1:
        cfg["M_BLOCK"] = 4
    fused = [K.box_w4a16_matmul(*args, config=dict(cfg, FUSED_REDUCE=True)) for _ in range(2)]
    assert int(K._COUNTERS[str(torch.device(dev))].abs().sum()) == 0
    host = K.box_w4a16_matmul(*args, config=cfg)
    assert torch.equal(fused[0], host) and torch.equal(fused[1], host)


@pytest.mark.parametrize("split,bias,dtype", [(2, False, torch.float16), (5, True, torch.float16),
                                              (3, True, torch.float32), (4, True, torch.bfloat16)])
def test_split_k_reduce_kernel_is_the_host_reduction(dev, split, bias, dtype):
    """The default split-K reduction (one kernel after the GEMV): ``part.sum(0)`` (+ bias in fp32), cast, bit for bit
    (masked column tail: N not a multiple of the block; two rows).  bf16 on the GPU only: the interpreter's
    fp32 -> bf16 cast truncates where the GPU's (and torch's) rounds to nearest even."""
    from llmquant.kernels.box_w4a16 import _split_k_reduce_kernel

    if dtype == torch.bfloat16 and dev.type != "cuda":
        pytest.skip("the Triton interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest even)")

    g = torch.Generator().manual_seed(97 + split)
    m, n = 2, 300
    part = (torch.randn(split, m, n, generator=g) * 1e3).to(dev)
    b = torch.randn(n, generator=g).to(dev) if bias else None
    out = torch.empty(m, n, dtype=dtype, device=dev)
    _split_k_reduce_kernel[(3, m)](part, b if bias else part, out, m, n, out.stride(0), HAS_BIAS=bias,
                                   SPLIT_K=split, BLOCK=128)
    want = part.sum(0) + (b if bias else 0.0)
    assert torch.equal(out.cpu(), want.to(dtype).cpu())


def test_rows_kernel_gpu_tiles(dev):
    """The GPU's small-M tiles (``ROWS_CONFIGS``: BLOCK_N 256 / 128, BLOCK_G 4, M_BLOCK 2 / 4 / 8) on a masked shape
    with split-K and bias: equal to the one-row kernel with the same tile, bit for bit."""
    from llmquant.kernels.box_w4a16 import ROWS_CONFIGS, box_w4a16_matmul

    codec = E8BoxCodec(3)
    words, scale = _encoded_words(40, 12, seed=95)
    g = torch.Generator().manual_seed(96)
    bias = torch.randn(40, generator=g).to(dev)
    args = (words.to(dev), scale.to(dev), codec.betas.to(dev), bias)
    for mb, m in ((2, 2), (4, 3), (8, 11)):
        x = torch.randn(m, 96, generator=g).half().to(dev)
        cfg = dict(ROWS_CONFIGS[mb], SPLIT_K=2)
        one = {k: v for k, v in cfg.items() if k != "M_BLOCK"}
        assert torch.equal(box_w4a16_matmul(x, *args, config=cfg), box_w4a16_matmul(x, *args, config=one)), mb
