"""W4A16 decode-GEMM for the b=3 √2E8 **box** code: ``y = x @ W^T (+ bias)``, weights as one int32 per 8-vector;
a lattice path (γ = 1) and a level-table path (``box_variant: table``, companded γ; a level table per β,
``box_variant: beta_tables``, with the constexpr ``PER_BETA``) chosen by the constexpr ``TABLE``.

Spec (the truth is :mod:`llmquant.lattice.box`, ``BoxCodec(b=3, code="hamming", gamma=1)`` = ``E8BoxCodec(3)``)
----------------------------------------------------------------------------------------------------------

Shapes: ``x [M, K]`` (fp16 / bf16 / fp32, ``K % 8 == 0``), ``words`` int32 ``[N, K/8]`` (row ``n``'s words
contiguous: ``BoxCodec.encode`` of the row's 8-vectors, = ``BoxCodec.pack(...)["words"]`` for b=3),
``row_scale`` fp16 ``[N]``, ``betas`` fp32 ``[16]``, optional ``bias`` fp32 ``[N]``; returns ``[M, N]`` in x's
dtype.  Word ``w = words[n, v]`` (bits of the uint32):

    bits [3i, 3i+3)   u_i = z_i + 4        (i = 0..7)
    bits [24, 28)     m                    (Hamming message, m_i = bit i of m)
    bits [28, 32)     j                    (β index)

codeword ``h_i = m_i`` (i < 4), ``h_{4+i} = m_i ^ P`` with ``P = popcount(m) & 1``; level ``ℓ_i = 2 u_i + h_i``;

    W[n, 8v + i] = row_scale[n] · betas[j] · (ℓ_i − 7.5)        (= β (h_i + 2 z_i + ½))

exactly :meth:`BoxCodec.decode_rows` (reference: :func:`box_w4a16_reference`).

**Level-table path** (``levels=`` given; constexpr ``TABLE``): the same words of a b=3 Hamming box code whose
levels are not the lattice's ``ℓ − 7.5`` — ``box_variant: table`` (``BoxCodec(levels=...)``: 8 positive levels
``λ_8..λ_15`` ascending, ``λ[ℓ] = −λ[15 − ℓ]``) or a companded γ (``λ[ℓ] = sgn(c)|c|^γ``, ``c = ℓ − 7.5``).
``levels`` is the codec's signed 16-entry table ``BoxCodec.levels`` (fp32, index ``ℓ = 2 u_i + h_i``, ascending),
read as is (the kernel needs no symmetry):

    W[n, 8v + i] = row_scale[n] · betas[j] · levels[2 u_i + h_i]

**Per-β tables** (``PER_BETA``; ``BoxCodec(levels=...)`` with ``levels (16, 8)``, ``codec.per_beta_levels``: the
shipped ``beta_tables`` code): ``levels`` is the codec's ``(16, 16)`` table ``BoxCodec.levels`` flattened row-major
(fp32, 1024 bytes, row ``j`` = the signed table of β_j), and

    W[n, 8v + i] = row_scale[n] · betas[j] · levels[16 j + 2 u_i + h_i]        (= levels[j, 2 u_i + h_i])

exactly :meth:`BoxCodec.decode_rows`.  Word layout, stored bits and encoder are those of the shared table.

* Index decode (integer ops; PTX :data:`_TABLE_WORD_PTX` on CUDA, :func:`_table_levels` in Triton for the
  interpreter and the dequant): ``w3 = w << 3`` puts ``u_i`` at bits ``[3i+3, 3i+6)``; bit ``3i+2`` (the top bit of
  ``u_(i-1)``, or 0) receives ``h_i`` in one of two copies, ``D_even`` (i even: u fields :data:`TAB_U_EVEN`) /
  ``D_odd`` (i odd: :data:`TAB_U_ODD`), by one LOP3 mux each with ``H[m]`` = the codeword of message ``m`` with
  ``h_i`` at bit ``3i+2`` (:func:`hamming_h_table`, 16 int32 loaded per word like β).  Then
  ``4 ℓ_i = (D >> 3i) & 0x3C`` is the byte offset of coordinate ``i``'s level.
* Lookup: the level table (64 bytes, 64-byte aligned: the launcher copies it otherwise) stays in L1; each
  coordinate is one ``ld.global.nc.f32`` at ``(base_lo | 4 ℓ_i, base_hi)`` (the offset ORed into the low word), so
  a word costs 8 level loads + 1 β load + 1 ``H`` load, all from three 64-byte blocks.
* Per-β tables (:data:`_TABLE_BETA_WORD_PTX`): the 16 x 16 table is 1024-byte aligned (:func:`aligned_levels`; the
  dispatcher builds it once per layer, the launcher copies a misaligned one at every call), so per word one LOP3
  ``tj = (t & 0x3C0) | base_lo`` on the ``t = w >> 22`` the ``H`` load already computed (``j`` sits at its bits
  [6, 10)) gives row ``j``'s address, and coordinate ``i`` loads ``(tj | 4 ℓ_i, base_hi)``: one instruction per word
  more than the shared table.  Under the interpreter :func:`_table_levels` returns ``16 j + ℓ_i`` (``j`` ORed in),
  the dequant adds ``16 j`` to the table pointer once per word.  SASS on sm_90 (same :data:`GPU_CONFIG`,
  ``kernels/sass.py``): **6.92 instructions per weight with fp16 x (72 registers), 6.59 with bf16 x (80), 0
  shuffles, 0 spills** (shared table: 6.36 / 6.76).  Per thread and K step (32 words) +31 LOP3 (the row address)
  and +115 ``IMAD.MOV`` with fp16 x (copies of the address's high word next to each offset: register allocation;
  with bf16 x there are 72 fewer than on the shared path); tried and not kept: ``mad.wide`` of ``j`` into a 64-bit
  row address (only 64-byte alignment needed; 6.94 / 6.92), one 64-bit ``or`` per coordinate (6.92, 3 spills with
  bf16 x).  Small-M kernel (``M_BLOCK`` 8): 2.29 per weight and row (shared: 2.27); dequant 12.66 (12.16).
  **Memory side, not timed on a GPU**: the lanes of a warp now read up to 16 different 64-byte blocks (8 128-byte
  lines) of the 1 KB table per level load, one per distinct β index among the warp's 32 words, instead of one, so
  the L1 wavefronts per load may rise up to 16x.  Gaussian rows encoded by the shipped code use β_0..β_15 with
  frequencies 9.2 % .. 2.0 % (512 x 4096, seed 0), i.e. ~13.4 distinct β among 32 words: a prediction of ~8-13
  wavefronts per level load (~70-110 per warp-word against ~14 issue cycles, where the shared table has ~10.4), so
  unlike the shared table this path may well be L1-bound, not issue-bound.
* Arithmetic and rounding: all fp32.  x is read exactly (unlike the lattice path, no rounding to fp16): fp16 and
  bf16 halves are converted to fp32 once per 8-block (a bf16 is a shift or a mask), shared by the rows of a
  thread; fp32 x as is.  Per word ``d = λ_0 x_0``, then 7 FMAs in coordinate order, then ``acc += β_j · d`` (one
  FMA); the epilogue sums the ``BLOCK_G`` partial accumulators and multiplies by the row scale (no
  ``DECODE_SCALE``).  Error = fp32 rounding of these sums only: far below the lattice path's fp16 lanes.
* SASS of the main loop on sm_90 (same :data:`GPU_CONFIG`, ``kernels/sass.py``): **6.36 instructions per weight
  with fp16 x (72 registers), 6.76 with bf16 x (80), 0 shuffles, 0 spills**; per word (counted at the earlier
  6.82, 54.6 instructions, fp16 x):
  12.2 LOP3, 11 IMAD (mostly copies of a table address's high word: every load needs its own 64-bit register
  pair), 10.4 LDG (8 levels + β + H + the word tile), 9 SHF, 9 FFMA/FMUL, 2 for x (HADD2.F32 + R2UR per
  8-block, shared by 8 rows).  The lanes of one warp load all read one 64-byte block (one L1 wavefront each, if
  L1 serves one per clock: ~10.4 wavefronts per warp-word against ~13.7 issue cycles): issue-bound, as the cost
  model assumes (it counts issue only).  **Not timed on a GPU.**
  Measured alternatives (same tool): ``tl.load(levels_ptr + l)`` in plain Triton (64-bit pointer arithmetic per
  coordinate) 8.53 instructions per weight, 255 registers, 21 spills; this PTX with the message spread by
  ``mul.hi`` / ``popc`` instead of the ``H`` load 7.71 (80 registers); with a 64-bit ``add`` for the addresses 8.88.

Kernel design (one int32 word = 8 weights per thread, no cross-lane work in the K loop)
--------------------------------------------------------------------------------------

* The decode of a word is packed fp16 arithmetic on the coordinate pairs ``(p, p+4)``, ``p = 0..3`` (lanes
  lo / hi of a half2).  Pairs ``(p, p+4)`` are 12 bits apart in the word, so **one shift** of the word puts
  ``u_p`` at lane bits [6, 9) and ``u_{p+4}`` at bits [18, 21) (hi-lane bits [2, 5)); the h bit goes right
  below each (bits 5 and 17), so ``lane = (s & 0x001E01E0) ^ (0x54004400 | P << 17)`` is the half2
  ``(4 + ℓ_p/8, 64 + ℓ_{p+4}/8)`` exactly (Marlin-style "OR into the mantissa"; the XOR with the parity
  ``P`` at bit 17 turns ``m_p`` into ``h_{p+4} = m_p ^ P``).  The m bits are written into two copies of
  the word beforehand, ``D_even`` (pairs 0, 2) and ``D_odd`` (pairs 1, 3), in place of the top bits of
  the *other* pairs' u fields, by a mux with ``m`` spread by multiplies: ``mw = w & 0x0F000000``,
  ``{x31, ie} = mw * 0x880880`` (64-bit: ``m_0`` at bit 31 of the low word, ``m_2 -> 5, 17``,
  ``m_0 -> 11`` in the high word), ``io = mulhi(mw, 0x2202200) = m * 0x22022`` (``m_1 -> 2, 14``,
  ``m_3 -> 8, 20``), ``P = popc(mw) & 1``.  Pair 2 needs no shift, pairs 1, 3 a shift by 3, pair 0 a
  funnel shift of ``(D_even : x31)`` by 6.  Then 4 HADD2 (``lane − (4.9375, 64.9375) = (ℓ − 7.5)/8``,
  exact), 4 HFMA2 with the x pairs ``(x_p, x_{p+4})``, one HADD2 of the two lanes, one conversion to fp32
  and ``acc += β_j · partial`` in fp32 (β gathered from the 16-entry table, address ``base + 4 (w >> 28)``
  in the low word only: betas is 64-byte aligned).  Weights are decoded as ``(ℓ − 7.5)/8`` (the 8 is
  folded into the epilogue) so that the fp16 lane sums of 4 products cannot overflow for ``|x| ≲ 17000``.
* SASS of the main loop on sm_90 (``kernels/sass.py``, :data:`GPU_CONFIG`: 4 warps, ``BLOCK_N = 1024``,
  ``BLOCK_G = 4``, i.e. 8 rows x 4 words per thread): **3.94 instructions per weight, 0 shuffles, 0 spills,
  96 registers** with fp16 activations (4.14 with bf16 activations: 8 shift/mask + 4 ``cvt.rn.f16x2.f32``
  per 8 activations instead of 4 PRMT, shared by the 8 rows of a thread).  Per word (31.5 instructions):
  ~14.5 ALU-pipe ops (LOP3 / SHF / LEA / PRMT), 3.6 IMAD, 1 POPC, 10 packed-fp16, 1 FFMA, 1.4 loads; the
  ALU pipe runs at half the issue rate on Hopper, so it is ~90 % busy at the issue bound (the cost model
  counts issue only).  **Not timed on a GPU.**
* On CUDA the word decode + 8-MAC + β-FMA is one ``tl.inline_asm_elementwise`` PTX block (:data:`_WORD_PTX`);
  under ``TRITON_INTERPRET=1`` (CPU tests) the same bit operations run as Triton integer ops
  (:func:`_word_lanes`, checked bit for bit against ``BoxCodec``), and the PTX text itself is checked by a
  small PTX emulator in the tests (``tests/test_kernels_box.py``).
* x is read as fp16 (bf16 / fp32 are converted in the kernel: exact for bf16 values in fp16's normal
  range; |x| ≤ 65504), per 8-block one 16-byte load and 4 PRMTs into the half2 pairs ``(x_p, x_{p+4})``,
  shared by the rows a thread owns.  Accumulation: 4 products per fp16 lane, the two lanes summed in
  fp16, β and everything after in fp32 (error ≈ fp16 rounding of 8-term partial sums).
* Grid ``(cdiv(N, BLOCK_N), SPLIT_K, M)``: one activation row per program (decode GEMV, M = 1; an explicit
  config without ``M_BLOCK`` runs it for any M, re-decoding the word tile per row).  For ``1 < M <=``
  :data:`DEQUANT_MIN_M` the default is the small-M kernel of :mod:`.box_w4a16_rows` (one decode per word for
  ``M_BLOCK`` rows, bit-identical per row), above it (CUDA) :func:`box_dequant` + a dense GEMM.  Split-K partials
  in fp32 ``[SPLIT_K, M, N]`` reduced by one small kernel after the GEMV (:func:`_split_k_reduce_kernel`: split order,
  + bias, cast; deterministic, no atomics; until stop 20 two or three torch kernels), or, with
  ``FUSED_REDUCE`` (off by default: not run on a GPU yet), in the kernel by the last split of an output tile to
  arrive (:func:`_epilogue`: a barrier and one acq_rel atomic per program on a self-resetting per-tile counter, the
  partials summed in split order from L2: deterministic, one kernel per call instead of three); ``SPLIT_K = 1`` fuses row scale,
  bias and the cast.  No host sync, no per-call host work beyond allocating the output (constants are literals
  in the kernel; the SM count and the counters are cached per device): CUDA-graph friendly.
* Prefill dequant (:func:`box_dequant`, :func:`_box_dequant_kernel`): the eight decoded ``[BLOCK_N, BLOCK_G]``
  planes are interleaved into the ``[BLOCK_N, 8 BLOCK_G]`` tile of W and stored once, each thread writing whole
  words (16 bytes in fp16 / bf16).  SASS on sm_90 (64 x 16 words, 4 warps): 12.61 instructions per weight, 8
  ``STG.E.128`` per thread (fp16 / bf16; table path 12.16, per-β tables 12.66), where the former 8 strided scalar
  stores per word took 13.36 and 64 ``STG.E.U16`` (2 bytes each, 16-byte stride across lanes).  **Not timed on a GPU.**
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rows import as_rows

#: u fields of the pairs (0, 4), (2, 6) / (1, 5), (3, 7): kept from the word in D_even / D_odd.
MASK_EVEN = 0x001C71C7
MASK_ODD = 0x00E38E38
#: lane bits (h + u) of a pair register, and the fp16 exponents: lo lane 4.0 (0x4400), hi lane 64.0 (0x5400).
LANE_MASK = 0x001E01E0
LANE_BASE = 0x54004400
#: -(4 + 7.5/8) lo, -(64 + 7.5/8) hi as fp16 bits: lane + this = (l - 7.5) / 8 exactly.
LANE_OFFSET = 0xD40FC4F0
#: decoded weights are (l - 7.5) / 8: the epilogue multiplies by this.
DECODE_SCALE = 8.0


def _i32(v: int) -> int:
    """A uint32 bit pattern as the int32 Triton literal with the same bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


# the same constants as Triton constexprs (int32 bit patterns) for the jit functions
_MASK_EVEN = tl.constexpr(MASK_EVEN)
_NOT_MASK_EVEN = tl.constexpr(_i32(~MASK_EVEN & 0xFFFFFFFF))
_MASK_ODD = tl.constexpr(MASK_ODD)
_NOT_MASK_ODD = tl.constexpr(_i32(~MASK_ODD & 0xFFFFFFFF))
_LANE_MASK = tl.constexpr(LANE_MASK)
_LANE_BASE = tl.constexpr(LANE_BASE)
_DECODE_SCALE = tl.constexpr(DECODE_SCALE)
#: table path: u fields of the even / odd coordinates in ``w << 3`` (bits [3i+3, 3i+6)); h_i goes to bit 3i+2
TAB_U_EVEN = 0x00E38E38
TAB_U_ODD = 0x071C71C0
_TAB_U_EVEN = tl.constexpr(TAB_U_EVEN)
_TAB_NOT_U_EVEN = tl.constexpr(_i32(~TAB_U_EVEN & 0xFFFFFFFF))
_TAB_U_ODD = tl.constexpr(TAB_U_ODD)
_TAB_NOT_U_ODD = tl.constexpr(_i32(~TAB_U_ODD & 0xFFFFFFFF))


def hamming_h_table() -> list[int]:
    """``H[m] = sum_i h_i(m) << (3i + 2)`` for the 16 messages of the extended Hamming code (``h`` as in the module
    docstring): the codeword bits at the positions the table path muxes them into ``w << 3``."""
    out = []
    for m in range(16):
        par = m.bit_count() & 1
        h = [(m >> i) & 1 for i in range(4)] + [((m >> i) & 1) ^ par for i in range(4)]
        out.append(sum(b << (3 * i + 2) for i, b in enumerate(h)))
    return out


#: register declarations of :func:`_table_index_lines` and :func:`_table_level_lines` (per-β tables: + ``tj``)
_TABLE_REGS = [".reg .b32 t, e, w3, de, dd, tlo, thi, hlo, hhi, blo, bhi, s, o;", ".reg .b64 a;"]
_TABLE_BETA_REGS = _TABLE_REGS + [".reg .b32 tj;"]


def _table_index_lines(word: str, beta_load: str, per_beta: bool = False) -> list[str]:
    """The table path's PTX index decode of the word register ``word`` (also used by :mod:`.box_w4a16_rows`): the
    β load ``beta_load`` (e.g. ``"ld.global.nc.f32 beta"``) from the β table ``$12``, the codeword bits from the
    table ``$11`` (:func:`hamming_h_table`) and the muxed level-index fields ``de`` / ``dd``; the addresses
    (u64, each 64-byte aligned: an offset < 64 is ORed into the low word).  Needs :data:`_TABLE_REGS`.

    ``per_beta`` (a level table per β, ``$10`` = the 16 x 16 fp32 table, 1024-byte aligned): also the low word of
    the address of row ``j``, ``tj = tlo | (j << 6)`` (one LOP3 on ``t = w >> 22``, which holds ``j`` at bits
    [6, 10) next to ``m << 2``); needs :data:`_TABLE_BETA_REGS`."""
    return [
        "mov.b64 {tlo, thi}, $10;",
        "mov.b64 {hlo, hhi}, $11;",
        "mov.b64 {blo, bhi}, $12;",
        f"shr.u32 t, {word}, 26;",
        "lop3.b32 o, t, 0x3C, blo, 0xEA;",  # (j << 2) | blo
        "mov.b64 a, {o, bhi};",
        f"{beta_load}, [a];",
        f"shr.u32 t, {word}, 22;",
        "lop3.b32 o, t, 0x3C, hlo, 0xEA;",  # (m << 2) | hlo
        "mov.b64 a, {o, hhi};",
        "ld.global.nc.u32 e, [a];",  # h_i at bits 3i + 2
    ] + (["lop3.b32 tj, t, 0x3C0, tlo, 0xEA;"] if per_beta else []) + [  # (j << 6) | tlo: row j of the tables
        f"shl.b32 w3, {word}, 3;",
        f"lop3.b32 de, w3, {TAB_U_EVEN}, e, 0xE2;",  # mux: u fields from w3, h bits from e
        f"lop3.b32 dd, w3, {TAB_U_ODD}, e, 0xE2;",
    ]


def _table_level_lines(i: int, dst: str, ty: str = "f32", per_beta: bool = False) -> list[str]:
    """PTX of coordinate ``i``'s level load into ``dst`` (``ld.global.nc.<ty>``; after :func:`_table_index_lines`):
    ``4 l_i`` ORed into the level table's address ``$10`` (``per_beta``: into row ``j``'s, ``tj``)."""
    src = "de" if i % 2 == 0 else "dd"
    lines = []
    if i:
        lines.append(f"shr.u32 s, {src}, {3 * i};")
        src = "s"
    base = "tj" if per_beta else "tlo"
    return lines + [f"lop3.b32 o, {src}, 0x3C, {base}, 0xEA;",  # 4 l_i | table (row) address
                    "mov.b64 a, {o, thi};",
                    f"ld.global.nc.{ty} {dst}, [a];"]


def _table_word_ptx(per_beta: bool = False) -> str:
    """PTX of one word on the table path (see the module docstring): ``$0`` (out, f32 bits) = ``$13 + betas[j] *
    sum_i levels[l_i] * x_i`` for the word ``$1``, the fp32 activations ``$2..$9`` (``x_0..x_7``, f32 bits), the
    addresses (u64, each 64-byte aligned) of the level table ``$10``, the codeword-bit table :func:`hamming_h_table`
    ``$11`` and the β table ``$12``, and the accumulator ``$13`` (f32 bits).  fp32 products and sums, coordinate
    order 0..7.  ``per_beta``: ``$10`` is the 16 x 16 table (1024-byte aligned) and coordinate ``i`` reads
    ``levels[j, l_i]`` (one more LOP3 per word)."""
    regs = _TABLE_BETA_REGS if per_beta else _TABLE_REGS
    lines = ["{"] + regs + [".reg .f32 beta, v, d, x, acc;"] + _table_index_lines("$1", "ld.global.nc.f32 beta",
                                                                                   per_beta)
    for i in range(8):
        lines += _table_level_lines(i, "v", per_beta=per_beta) + [
            f"mov.b32 x, ${2 + i};", "mul.rn.f32 d, v, x;" if i == 0 else "fma.rn.f32 d, v, x, d;"]
    lines += ["mov.b32 acc, $13;", "fma.rn.f32 acc, beta, d, acc;", "mov.b32 $0, acc;", "}"]
    return "\n".join(lines) + "\n"


_TABLE_WORD_PTX = _table_word_ptx()
_TABLE_WORD_ASM = tl.constexpr(_TABLE_WORD_PTX)
#: the same for a level table per β (``PER_BETA``)
_TABLE_BETA_WORD_PTX = _table_word_ptx(per_beta=True)
_TABLE_BETA_WORD_ASM = tl.constexpr(_TABLE_BETA_WORD_PTX)


def _word_decode_lines(word: str, beta_load: str, outs: tuple[str, str, str, str]) -> list[str]:
    """The PTX lines that decode one box word (also used by :mod:`.box_w4a16_rows`): the constants, the β load
    ``beta_load`` (e.g. ``"ld.global.nc.f32 beta"``) from ``betas[j]`` at the u64 address ``$6`` (formed in 32 bits:
    low word + 4 j, high word unchanged; the launcher guarantees betas is 64-byte aligned, so the low word cannot
    carry), and the four half2 lane pairs ``outs`` (``(l_p - 7.5)/8, (l_{p+4} - 7.5)/8``) of the word register
    ``word``.  Needs the registers declared in :data:`_WORD_REGS`."""
    return [
        f"mov.b32 kme, {MASK_EVEN};",
        f"mov.b32 kmo, {MASK_ODD};",
        f"mov.b32 klm, {LANE_MASK};",
        f"mov.b32 klb, {LANE_BASE};",
        f"mov.b32 koff, {_i32(LANE_OFFSET)};",
        "mov.b64 {blo, bhi}, $6;",
        f"shr.u32 j, {word}, 28;",
        "mad.lo.u32 alo, j, 4, blo;",
        "mov.b64 addr, {alo, bhi};",
        f"{beta_load}, [addr];",
        f"and.b32 mw, {word}, 0x0F000000;",
        "popc.b32 pc, mw;",
        "shl.b32 pc, pc, 17;",
        "lop3.b32 lbp, pc, 0x20000, klb, 0xEA;",
        "mul.wide.u32 prod, mw, 0x880880;",
        "mov.b64 {x31, ie}, prod;",
        "mul.hi.u32 io, mw, 0x2202200;",
        f"lop3.b32 de, {word}, kme, ie, 0xE2;",
        f"lop3.b32 dd, {word}, kmo, io, 0xE2;",
        "shf.l.wrap.b32 s0, x31, de, 6;",
        "shl.b32 s1, dd, 3;",
        "shr.u32 s3, dd, 3;",
        "lop3.b32 r0, s0, klm, lbp, 0x6A;",
        "lop3.b32 r1, s1, klm, lbp, 0x6A;",
        "lop3.b32 r2, de, klm, lbp, 0x6A;",
        "lop3.b32 r3, s3, klm, lbp, 0x6A;",
    ] + [f"add.rn.f16x2 {o}, r{p}, koff;" for p, o in enumerate(outs)]


#: register declarations of :func:`_word_decode_lines`
_WORD_REGS = [".reg .b32 mw, x31, pc, lbp, ie, io, de, dd, s0, s1, s3, r0, r1, r2, r3, j, blo, bhi, alo;",
              ".reg .b32 kme, kmo, klm, klb, koff;",
              ".reg .b64 addr, prod;"]


def _word_mac_lines(vs, xs, acc_in: str, out: str) -> list[str]:
    """The PTX lines of one word's dot: ``out`` (f32 bits) = ``acc_in`` + β · fp16-sum of the 8 products of the lane
    pairs ``vs`` and the x pairs ``xs`` (the register ``beta`` holds β as f32).  Needs :data:`_MAC_REGS`."""
    return [f"mul.rn.f16x2 a, {vs[0]}, {xs[0]};"] + [
        f"fma.rn.f16x2 a, {v}, {x}, a;" for v, x in zip(vs[1:], xs[1:])] + [
        "mov.b32 {lo, hi}, a;",
        "add.rn.f16 hs, lo, hi;",
        "cvt.f32.f16 fs, hs;",
        f"mov.b32 accin, {acc_in};",
        "fma.rn.f32 accout, beta, fs, accin;",
        f"mov.b32 {out}, accout;",
    ]


#: register declarations of :func:`_word_mac_lines`
_MAC_REGS = [".reg .b32 a;", ".reg .b16 lo, hi, hs;", ".reg .f32 fs, beta, accin, accout;"]

# PTX of one word: $0 (out, f32 bits) = $7 + betas[j] * sum_i ((l_i - 7.5)/8) * x_i for the word $1, the x pairs
# $2..$5 (half2 (x_p, x_{p+4})), the address $6 of betas (u64) and the accumulator $7 (f32 bits).
_WORD_PTX = "\n".join(
    ["", "{"] + _WORD_REGS + [".reg .b32 v0, v1, v2, v3;"] + _MAC_REGS
    + _word_decode_lines("$1", "ld.global.nc.f32 beta", ("v0", "v1", "v2", "v3"))
    + _word_mac_lines(("v0", "v1", "v2", "v3"), ("$2", "$3", "$4", "$5"), "$7", "$0")
    + ["}", ""])
_WORD_ASM = tl.constexpr(_WORD_PTX)

# two bf16 pairs (a = (a0, a1), b = (b0, b1)) -> half2 (a0, b0) / (a1, b1), rounded to nearest
_BF16_LO_PAIR = tl.constexpr("""
{
.reg .b32 a, b;
shl.b32 a, $1, 16;
shl.b32 b, $2, 16;
cvt.rn.f16x2.f32 $0, b, a;
}
""")
_BF16_HI_PAIR = tl.constexpr("""
{
.reg .b32 a, b;
and.b32 a, $1, -65536;
and.b32 b, $2, -65536;
cvt.rn.f16x2.f32 $0, b, a;
}
""")


@triton.jit
def _word_lanes(w):
    """The four half2 lane registers (int32 bits) of words ``w``: pair p = (4 + l_p/8, 64 + l_{p+4}/8).

    Same operations as :data:`_WORD_PTX` (integer part), in Triton; also used by the dequant kernel.
    """
    m = (w >> 24) & 15
    # parity P of m (the PTX uses popc); lbp = lane base with P at bit 17 (flips the hi-lane h bits)
    pc = (m & 1) + ((m >> 1) & 1) + ((m >> 2) & 1) + ((m >> 3) & 1)
    lbp = ((pc << 17) & 0x20000) | _LANE_BASE
    # PTX: {x31, ie} = (w & 0x0F000000) * 0x880880 (64-bit), io = its high word for 0x2202200
    x31 = m << 31  # m_0 at bit 31 (low word of the 64-bit product)
    ie = m * 0x8808 + (m >> 1)  # m_2 -> 5, 17; m_0 -> 11 (copies at 3, 11, 15; m >> 1 lands in u_0's bits)
    io = m * 0x22022  # m_1 -> 2, 14; m_3 -> 8, 20 (copies at 1, 5, 13, 17)
    de = (w & _MASK_EVEN) | (ie & _NOT_MASK_EVEN)
    dd = (w & _MASK_ODD) | (io & _NOT_MASK_ODD)
    s0 = (de << 6) | ((x31 >> 26) & 63)  # funnel shift of (de : x31) left by 6
    s1 = dd << 3
    s3 = (dd >> 3) & 0x1FFFFFFF
    r0 = (s0 & _LANE_MASK) ^ lbp
    r1 = (s1 & _LANE_MASK) ^ lbp
    r2 = (de & _LANE_MASK) ^ lbp
    r3 = (s3 & _LANE_MASK) ^ lbp
    return r0, r1, r2, r3


@triton.jit
def _table_levels(w, htab_ptr, PER_BETA: tl.constexpr = False):
    """The eight level indices ``l_i = 2 u_i + h_i`` (int32, in [0, 16)) of words ``w`` (table path; the same bit
    operations as :data:`_TABLE_WORD_PTX`, see the module docstring); ``PER_BETA``: the indices ``16 j + l_i`` into
    the flattened 16 x 16 per-β table (``j = w >> 28``, ORed in as :data:`_TABLE_BETA_WORD_PTX` does)."""
    e = tl.load(htab_ptr + ((w >> 24) & 15))
    w3 = w << 3
    de = (w3 & _TAB_U_EVEN) | (e & _TAB_NOT_U_EVEN)
    dd = (w3 & _TAB_U_ODD) | (e & _TAB_NOT_U_ODD)
    if PER_BETA:
        jo = (w >> 24) & 0xF0  # 16 j
    else:
        jo = 0
    return (((de >> 2) & 15) | jo, ((dd >> 5) & 15) | jo, ((de >> 8) & 15) | jo, ((dd >> 11) & 15) | jo,
            ((de >> 14) & 15) | jo, ((dd >> 17) & 15) | jo, ((de >> 20) & 15) | jo, ((dd >> 23) & 15) | jo)


@triton.jit
def _half_lo(p):
    """fp32 value of the fp16 in the low 16 bits of int32 ``p``."""
    return (p & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _half_hi(p):
    """fp32 value of the fp16 in the high 16 bits of int32 ``p``."""
    return ((p >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _bx(v, words):
    """fp32 ``v [BG]`` as int32 bits broadcast to the word tile ``[BN, BG]`` (an asm operand)."""
    return tl.broadcast_to(v.to(tl.int32, bitcast=True)[None, :], words.shape)


@triton.jit
def _table_dot(words, levels_ptr, htab_ptr, x0, x1, x2, x3, x4, x5, x6, x7, PER_BETA: tl.constexpr = False):
    """fp32 ``sum_i levels[l_i] x_i`` of words ``[BN, BG]`` and the fp32 activations ``x_i`` ``[1, BG]`` (table path
    in Triton, for the interpreter): a product and seven FMAs in coordinate order 0..7, as the PTX (``PER_BETA``:
    ``levels[j, l_i]``)."""
    l0, l1, l2, l3, l4, l5, l6, l7 = _table_levels(words, htab_ptr, PER_BETA)
    d = tl.load(levels_ptr + l0) * x0
    d = tl.fma(tl.load(levels_ptr + l1), x1, d)
    d = tl.fma(tl.load(levels_ptr + l2), x2, d)
    d = tl.fma(tl.load(levels_ptr + l3), x3, d)
    d = tl.fma(tl.load(levels_ptr + l4), x4, d)
    d = tl.fma(tl.load(levels_ptr + l5), x5, d)
    d = tl.fma(tl.load(levels_ptr + l6), x6, d)
    return tl.fma(tl.load(levels_ptr + l7), x7, d)


@triton.jit
def _lane_values(r):
    """(lo, hi) fp32 values (l - 7.5)/8 of a lane register ``r`` (exact; the fp16 subtraction is exact)."""
    lo = (r & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) - 4.9375
    hi = ((r >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) - 64.9375
    return lo, hi


@triton.jit
def _half_bits(x):
    """fp16 bits of ``x`` (any float dtype) in the low 16 bits of an int32."""
    return x.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _bf16_pair_to_half(v):
    """int32 holding two bf16 (lo, hi) -> (fp16 bits of lo, fp16 bits of hi) as int32 in the low 16 bits."""
    lo = (v << 16).to(tl.float32, bitcast=True)
    hi = (v & -65536).to(tl.float32, bitcast=True)
    return _half_bits(lo), _half_bits(hi)


@triton.jit
def _x_int32_words(x_ptr, row, stride_xm, offs_g, g_ok, EVEN_G: tl.constexpr):
    """The 16 bytes of 8 half-precision activations ``x[8g .. 8g+8)`` (fp16 or bf16 viewed as int32) of the
    8-blocks ``offs_g``, one 16-byte load per block, as four ``[BLOCK_G]`` int32 words ``q_k = (x_2k, x_2k+1)``."""
    xb = x_ptr + row.to(tl.int64) * stride_xm + offs_g[:, None] * 4 + tl.arange(0, 4)[None, :]
    if EVEN_G:
        q = tl.load(xb)
    else:
        q = tl.load(xb, mask=g_ok[:, None], other=0)
    qa, qb = tl.split(tl.reshape(q, (q.shape[0], 2, 2)))  # q[4g + 2a + b]: qa = b=0, qb = b=1
    q0, q2 = tl.split(qa)
    q1, q3 = tl.split(qb)
    return q0, q1, q2, q3


@triton.jit
def _pairs_from_f32(x0, x1, x2, x3, x4, x5, x6, x7):
    """The half2 pairs ``(x_p, x_{p+4})`` (int32 bits, x rounded to fp16) of eight float activations."""
    p0 = _half_bits(x0) | (_half_bits(x4) << 16)
    p1 = _half_bits(x1) | (_half_bits(x5) << 16)
    p2 = _half_bits(x2) | (_half_bits(x6) << 16)
    p3 = _half_bits(x3) | (_half_bits(x7) << 16)
    return p0, p1, p2, p3


@triton.jit
def _pairs_from_words(q0, q1, q2, q3, X_MODE: tl.constexpr, USE_ASM: tl.constexpr):
    """The half2 pairs ``(x_p, x_{p+4})`` from the four int32 words ``q_k = (x_2k, x_2k+1)`` of an 8-block
    (:func:`_x_int32_words`; X_MODE 0: fp16, 1: bf16, rounded to fp16), any shape."""
    if X_MODE == 0 and USE_ASM:  # one PRMT per pair
        p0 = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x5410;", "=r,r,r", [q0, q2], dtype=tl.int32,
                                       is_pure=True, pack=1)
        p1 = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7632;", "=r,r,r", [q0, q2], dtype=tl.int32,
                                       is_pure=True, pack=1)
        p2 = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x5410;", "=r,r,r", [q1, q3], dtype=tl.int32,
                                       is_pure=True, pack=1)
        p3 = tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x7632;", "=r,r,r", [q1, q3], dtype=tl.int32,
                                       is_pure=True, pack=1)
    elif X_MODE == 1 and USE_ASM:  # bf16 -> f32 (a shift or a mask), two f32 -> f16x2 in one cvt
        p0 = tl.inline_asm_elementwise(_BF16_LO_PAIR, "=r,r,r", [q0, q2], dtype=tl.int32, is_pure=True, pack=1)
        p1 = tl.inline_asm_elementwise(_BF16_HI_PAIR, "=r,r,r", [q0, q2], dtype=tl.int32, is_pure=True, pack=1)
        p2 = tl.inline_asm_elementwise(_BF16_LO_PAIR, "=r,r,r", [q1, q3], dtype=tl.int32, is_pure=True, pack=1)
        p3 = tl.inline_asm_elementwise(_BF16_HI_PAIR, "=r,r,r", [q1, q3], dtype=tl.int32, is_pure=True, pack=1)
    elif X_MODE == 0:  # q0 = (x0, x1), q1 = (x2, x3), q2 = (x4, x5), q3 = (x6, x7)
        p0 = (q0 & 0xFFFF) | (q2 << 16)
        p1 = ((q0 >> 16) & 0xFFFF) | (q2 & -65536)
        p2 = (q1 & 0xFFFF) | (q3 << 16)
        p3 = ((q1 >> 16) & 0xFFFF) | (q3 & -65536)
    else:
        h0, h1 = _bf16_pair_to_half(q0)
        h2, h3 = _bf16_pair_to_half(q1)
        h4, h5 = _bf16_pair_to_half(q2)
        h6, h7 = _bf16_pair_to_half(q3)
        p0 = h0 | (h4 << 16)
        p1 = h1 | (h5 << 16)
        p2 = h2 | (h6 << 16)
        p3 = h3 | (h7 << 16)
    return p0, p1, p2, p3


@triton.jit
def _x_pairs(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE: tl.constexpr, EVEN_G: tl.constexpr,
             USE_ASM: tl.constexpr):
    """The half2 pairs (x_p, x_{p+4}) of the 8-blocks ``offs_g`` of activation row ``row`` as int32 [BLOCK_G].

    X_MODE 0: x_ptr is fp16 viewed as int32 (stride in int32); 1: bf16 viewed as int32; 2: any float (8 loads).
    """
    if X_MODE == 2:
        xb = x_ptr + row.to(tl.int64) * stride_xm + offs_g * 8
        if EVEN_G:
            x0 = tl.load(xb + 0)
            x1 = tl.load(xb + 1)
            x2 = tl.load(xb + 2)
            x3 = tl.load(xb + 3)
            x4 = tl.load(xb + 4)
            x5 = tl.load(xb + 5)
            x6 = tl.load(xb + 6)
            x7 = tl.load(xb + 7)
        else:
            x0 = tl.load(xb + 0, mask=g_ok, other=0.0)
            x1 = tl.load(xb + 1, mask=g_ok, other=0.0)
            x2 = tl.load(xb + 2, mask=g_ok, other=0.0)
            x3 = tl.load(xb + 3, mask=g_ok, other=0.0)
            x4 = tl.load(xb + 4, mask=g_ok, other=0.0)
            x5 = tl.load(xb + 5, mask=g_ok, other=0.0)
            x6 = tl.load(xb + 6, mask=g_ok, other=0.0)
            x7 = tl.load(xb + 7, mask=g_ok, other=0.0)
        p0, p1, p2, p3 = _pairs_from_f32(x0, x1, x2, x3, x4, x5, x6, x7)
    else:
        q0, q1, q2, q3 = _x_int32_words(x_ptr, row, stride_xm, offs_g, g_ok, EVEN_G)
        p0, p1, p2, p3 = _pairs_from_words(q0, q1, q2, q3, X_MODE, USE_ASM)
    return p0, p1, p2, p3


@triton.jit
def _x_f32(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE: tl.constexpr, EVEN_G: tl.constexpr):
    """The eight fp32 activations ``x[8g + i]``, ``i = 0..7``, of the 8-blocks ``offs_g`` as ``[BLOCK_G]`` vectors
    (table path: exact for every input dtype).  X_MODE 0: x_ptr is fp16 viewed as int32; 1: bf16 viewed as int32
    (a bf16 is the high half of its fp32); 2: any float (8 loads)."""
    # one return at the end: Triton compiles every statement after a constexpr ``if ...: return`` for every
    # specialization (fp32 x would reach the int32 shifts below: a compile error the interpreter does not see)
    if X_MODE == 2:
        xb = x_ptr + row.to(tl.int64) * stride_xm + offs_g * 8
        if EVEN_G:
            x0 = tl.load(xb + 0).to(tl.float32)
            x1 = tl.load(xb + 1).to(tl.float32)
            x2 = tl.load(xb + 2).to(tl.float32)
            x3 = tl.load(xb + 3).to(tl.float32)
            x4 = tl.load(xb + 4).to(tl.float32)
            x5 = tl.load(xb + 5).to(tl.float32)
            x6 = tl.load(xb + 6).to(tl.float32)
            x7 = tl.load(xb + 7).to(tl.float32)
        else:
            x0 = tl.load(xb + 0, mask=g_ok, other=0.0).to(tl.float32)
            x1 = tl.load(xb + 1, mask=g_ok, other=0.0).to(tl.float32)
            x2 = tl.load(xb + 2, mask=g_ok, other=0.0).to(tl.float32)
            x3 = tl.load(xb + 3, mask=g_ok, other=0.0).to(tl.float32)
            x4 = tl.load(xb + 4, mask=g_ok, other=0.0).to(tl.float32)
            x5 = tl.load(xb + 5, mask=g_ok, other=0.0).to(tl.float32)
            x6 = tl.load(xb + 6, mask=g_ok, other=0.0).to(tl.float32)
            x7 = tl.load(xb + 7, mask=g_ok, other=0.0).to(tl.float32)
    else:
        q0, q1, q2, q3 = _x_int32_words(x_ptr, row, stride_xm, offs_g, g_ok, EVEN_G)  # q_k = (x_2k, x_2k+1)
        x0, x1, x2, x3, x4, x5, x6, x7 = _f32_from_words(q0, q1, q2, q3, X_MODE)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _f32_from_words(q0, q1, q2, q3, X_MODE: tl.constexpr):
    """The eight fp32 activations (exact) of an 8-block from its int32 words ``q_k = (x_2k, x_2k+1)``; X_MODE 0:
    fp16, 1: bf16 (a bf16 is the high half of its fp32); any shape."""
    if X_MODE == 0:
        x0, x1, x2, x3 = _half_lo(q0), _half_hi(q0), _half_lo(q1), _half_hi(q1)
        x4, x5, x6, x7 = _half_lo(q2), _half_hi(q2), _half_lo(q3), _half_hi(q3)
    else:
        x0, x1 = (q0 << 16).to(tl.float32, bitcast=True), (q0 & -65536).to(tl.float32, bitcast=True)
        x2, x3 = (q1 << 16).to(tl.float32, bitcast=True), (q1 & -65536).to(tl.float32, bitcast=True)
        x4, x5 = (q2 << 16).to(tl.float32, bitcast=True), (q2 & -65536).to(tl.float32, bitcast=True)
        x6, x7 = (q3 << 16).to(tl.float32, bitcast=True), (q3 & -65536).to(tl.float32, bitcast=True)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _pair_dot(r, p):
    """fp32 sum of the two lane products of lane register ``r`` and x pair ``p`` (interpreter path)."""
    a, b = _lane_values(r)
    xa = (p & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    xb = ((p >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return a * xa + b * xb


@triton.jit
def _load_word_tile(w_rows, offs_g, n_ok, g_ok, EVEN_N: tl.constexpr, EVEN_G: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_G]`` int32 words at row pointers ``w_rows [BLOCK_N, 1]`` and word offsets ``offs_g``
    (masked, zero-filled, unless the tile is known to be whole)."""
    if EVEN_N and EVEN_G:
        words = tl.load(w_rows + offs_g[None, :])
    else:
        words = tl.load(w_rows + offs_g[None, :], mask=n_ok[:, None] & g_ok[None, :], other=0)
    return words


@triton.jit
def _box_w4a16_kernel(
    x_ptr, w_ptr, scale_ptr, betas_ptr, levels_ptr, htab_ptr, bias_ptr, out_ptr, part_ptr, cnt_ptr,
    M, N, KW, stride_xm, stride_om, KW_PER_SPLIT,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, USE_ASM: tl.constexpr, X_MODE: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    TABLE: tl.constexpr = False, FUSED_REDUCE: tl.constexpr = False, PER_BETA: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * KW
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    g_begin = pid_k * KW_PER_SPLIT
    for g0 in range(g_begin, g_begin + KW_PER_SPLIT, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        g_ok = offs_g < KW
        words = _load_word_tile(w_rows, offs_g, n_ok, g_ok, EVEN_N, EVEN_G)
        if TABLE and USE_ASM:
            # level table: one PTX block per word (index decode, 8 table loads from L1, fp32 FMAs, β)
            x0, x1, x2, x3, x4, x5, x6, x7 = _x_f32(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE, EVEN_G)
            acc = tl.inline_asm_elementwise(
                _TABLE_BETA_WORD_ASM if PER_BETA else _TABLE_WORD_ASM, "=r,r,r,r,r,r,r,r,r,r,l,l,l,r",
                [words, _bx(x0, words), _bx(x1, words), _bx(x2, words), _bx(x3, words), _bx(x4, words),
                 _bx(x5, words), _bx(x6, words), _bx(x7, words),
                 tl.zeros(words.shape, tl.int64) + levels_ptr.to(tl.int64),
                 tl.zeros(words.shape, tl.int64) + htab_ptr.to(tl.int64),
                 tl.zeros(words.shape, tl.int64) + betas_ptr.to(tl.int64), acc.to(tl.int32, bitcast=True)],
                dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
        elif TABLE:
            # interpreter: the same index decode and fp32 arithmetic in Triton
            x0, x1, x2, x3, x4, x5, x6, x7 = _x_f32(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE, EVEN_G)
            beta = tl.load(betas_ptr + ((words >> 28) & 15))
            acc += beta * _table_dot(words, levels_ptr, htab_ptr, x0[None, :], x1[None, :], x2[None, :], x3[None, :],
                                     x4[None, :], x5[None, :], x6[None, :], x7[None, :], PER_BETA)
        elif USE_ASM:
            p0, p1, p2, p3 = _x_pairs(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE, EVEN_G, USE_ASM)
            acc = tl.inline_asm_elementwise(
                _WORD_ASM, "=r,r,r,r,r,r,l,r",
                [words, tl.broadcast_to(p0[None, :], words.shape), tl.broadcast_to(p1[None, :], words.shape),
                 tl.broadcast_to(p2[None, :], words.shape), tl.broadcast_to(p3[None, :], words.shape),
                 tl.zeros(words.shape, tl.int64) + betas_ptr.to(tl.int64), acc.to(tl.int32, bitcast=True)],
                dtype=tl.int32, is_pure=True, pack=1).to(tl.float32, bitcast=True)
        else:
            # interpreter: the same lanes; products and sums in fp32 of the fp16 x
            p0, p1, p2, p3 = _x_pairs(x_ptr, row, stride_xm, offs_g, g_ok, X_MODE, EVEN_G, USE_ASM)
            beta = tl.load(betas_ptr + ((words >> 28) & 15))
            r0, r1, r2, r3 = _word_lanes(words)
            part = (_pair_dot(r0, p0[None, :]) + _pair_dot(r1, p1[None, :]) + _pair_dot(r2, p2[None, :])
                    + _pair_dot(r3, p3[None, :]))
            acc += beta * part

    if TABLE:
        y = tl.sum(acc, axis=1)
    else:
        y = tl.sum(acc, axis=1) * _DECODE_SCALE
    y = y * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    _epilogue(y, n_ok, row, offs_n, n_ok, pid_k, row * tl.num_programs(0) + pid_n, M, N, stride_om, bias_ptr,
              out_ptr, part_ptr, cnt_ptr, HAS_BIAS, SPLIT_K, FUSED_REDUCE)


@triton.jit
def _epilogue(y, ok, rows, offs_n, n_ok, pid_k, tile, M, N, stride_om, bias_ptr, out_ptr, part_ptr, cnt_ptr,
              HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, FUSED_REDUCE: tl.constexpr):
    """Store the fp32 sums ``y`` of rows ``rows`` (scalar, or ``[M_BLOCK, 1]``) and columns ``offs_n`` (``[BLOCK_N]``,
    or ``[1, BLOCK_N]``), valid where ``ok``; ``tile`` numbers the program's output tile (same for its K splits).

    ``SPLIT_K == 1``: ``+ bias``, cast, into ``out``.  Else into the fp32 partials ``part [SPLIT_K, M, N]`` (summed on
    the host), or with ``FUSED_REDUCE`` reduced here (serial split-K, as CUTLASS's semaphore): after storing its
    partial, the program synchronizes its threads and increments the tile's counter ``cnt[tile]`` (int32, zero
    between calls) with one acq_rel atomic; the program that sees ``SPLIT_K - 1`` (the last split of the tile to
    arrive: every other split's partial stores precede its release increment) sums the ``SPLIT_K`` partials in split
    order 0, 1, ... from L2 (``.cg``; deterministic), adds the bias, casts, stores, and resets the counter to 0 for the
    next call (no host work, no memset: CUDA-graph friendly; calls sharing the counters must not run concurrently,
    i.e. one stream)."""
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows.to(tl.int64) * stride_om + offs_n, y.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(part_ptr + (pid_k * M + rows).to(tl.int64) * N + offs_n, y, mask=ok)
        if FUSED_REDUCE:
            tl.debug_barrier()  # every thread's partial stores before the (one-thread) release increment
            seen = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if seen == SPLIT_K - 1:
                _reduce_splits(part_ptr, bias_ptr, out_ptr, rows, offs_n, ok, n_ok, M, N, stride_om, HAS_BIAS,
                               SPLIT_K, ".cg")
                tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _reduce_splits(part_ptr, bias_ptr, out_ptr, rows, offs_n, ok, n_ok, M, N, stride_om, HAS_BIAS: tl.constexpr,
                   SPLIT_K: tl.constexpr, CACHE: tl.constexpr):
    """``out[rows, offs_n] = cast(((part[0] + part[1]) + ... + part[SPLIT_K - 1]) + bias)``: the fp32 partials
    ``part [SPLIT_K, M, N]`` summed in split order (what ``part.sum(0)`` does on the CPU, then ``+ bias`` and the
    cast: bit-identical to the host reduction there)."""
    tot = tl.load(part_ptr + rows.to(tl.int64) * N + offs_n, mask=ok, other=0.0, cache_modifier=CACHE)
    for s in tl.static_range(1, SPLIT_K):
        tot += tl.load(part_ptr + (s * M + rows).to(tl.int64) * N + offs_n, mask=ok, other=0.0, cache_modifier=CACHE)
    if HAS_BIAS:
        tot += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64) * stride_om + offs_n, tot.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _split_k_reduce_kernel(part_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS: tl.constexpr,
                           SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """The split-K reduction as one kernel after the GEMV (the default; ``FUSED_REDUCE`` does it inside the GEMV):
    row ``program_id(1)``, columns ``program_id(0) * BLOCK + [0, BLOCK)``, by :func:`_reduce_splits`.  One launch
    where ``part.sum(0)``, ``+ bias`` and the cast were two or three torch kernels."""
    row = tl.program_id(1)
    offs_n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n_ok = offs_n < N
    _reduce_splits(part_ptr, bias_ptr, out_ptr, row, offs_n, n_ok, n_ok, M, N, stride_om, HAS_BIAS, SPLIT_K, "")


@triton.jit
def _interleave8(v0, v1, v2, v3, v4, v5, v6, v7):
    """``[BN, BG]`` x 8 -> ``[BN, BG * 8]`` with element ``(n, 8 g + i) = v_i[n, g]`` (joins, then one reshape):
    the 8 weights of a word contiguous, so that a thread's values of one word are one vector store."""
    p = tl.join(tl.join(v0, v4), tl.join(v2, v6))  # [BN, BG, c, b] = v_(4c + 2b)
    q = tl.join(tl.join(v1, v5), tl.join(v3, v7))  # v_(4c + 2b + 1)
    t = tl.join(p, q)  # [BN, BG, c, b, a] = v_(4c + 2b + a)
    return tl.reshape(t, (t.shape[0], t.shape[1] * 8))


@triton.jit
def _box_dequant_kernel(w_ptr, scale_ptr, betas_ptr, levels_ptr, htab_ptr, out_ptr, N, KW,
                        BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, TABLE: tl.constexpr = False,
                        PER_BETA: tl.constexpr = False):
    """``W [N, K]`` (out's dtype: the fp32 decode, cast) from the words with the kernel's lane decode (``TABLE``:
    the level-table decode, ``scale * (beta * levels[l])`` in fp32; ``PER_BETA``: ``levels[j, l]`` of the flattened
    16 x 16 table).

    The eight decoded ``[BLOCK_N, BLOCK_G]`` planes are interleaved into the ``[BLOCK_N, 8 BLOCK_G]`` tile of ``W``
    (:func:`_interleave8`) and written by one ``tl.store``: each thread stores whole words (16 bytes of fp16), a warp
    a contiguous row segment (coalesced; 8 strided scalar stores per word before)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = (offs_n[:, None] < N) & (offs_g[None, :] < KW)
    words = tl.load(w_ptr + offs_n[:, None] * KW + offs_g[None, :], mask=mask, other=0)
    b = tl.load(betas_ptr + ((words >> 28) & 15))
    s = tl.load(scale_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
    if TABLE:
        # out[n, 8g + i] = scale[n] * (betas[j] * levels[l_i]) in fp32 (the order of BoxCodec.decode_rows)
        l0, l1, l2, l3, l4, l5, l6, l7 = _table_levels(words, htab_ptr)
        if PER_BETA:
            lp = levels_ptr + ((words >> 24) & 0xF0)  # row j of the 16 x 16 table, once per word
        else:
            lp = levels_ptr
        v0 = s * (b * tl.load(lp + l0))
        v1 = s * (b * tl.load(lp + l1))
        v2 = s * (b * tl.load(lp + l2))
        v3 = s * (b * tl.load(lp + l3))
        v4 = s * (b * tl.load(lp + l4))
        v5 = s * (b * tl.load(lp + l5))
        v6 = s * (b * tl.load(lp + l6))
        v7 = s * (b * tl.load(lp + l7))
    else:
        r0, r1, r2, r3 = _word_lanes(words)
        a0, b0 = _lane_values(r0)
        a1, b1 = _lane_values(r1)
        a2, b2 = _lane_values(r2)
        a3, b3 = _lane_values(r3)
        # (l - 7.5)/8 * 8 is exact; then the reference's order: scale * (beta * level), in fp32, cast on store
        v0 = s * (b * (a0 * 8.0))
        v1 = s * (b * (a1 * 8.0))
        v2 = s * (b * (a2 * 8.0))
        v3 = s * (b * (a3 * 8.0))
        v4 = s * (b * (b0 * 8.0))
        v5 = s * (b * (b1 * 8.0))
        v6 = s * (b * (b2 * 8.0))
        v7 = s * (b * (b3 * 8.0))
    ty = out_ptr.dtype.element_ty
    tile = _interleave8(v0.to(ty), v1.to(ty), v2.to(ty), v3.to(ty), v4.to(ty), v5.to(ty), v6.to(ty), v7.to(ty))
    offs_k = tl.program_id(1) * (BLOCK_G * 8) + tl.arange(0, BLOCK_G * 8)
    tl.store(out_ptr + offs_n.to(tl.int64)[:, None] * (KW * 8) + offs_k[None, :], tile,
             mask=(offs_n[:, None] < N) & (offs_k[None, :] < KW * 8))


# ---------------------------------------------------------------------------------------------- host side

#: GPU default config (also the SASS benchmark's): 4 warps, 8 rows x 4 words (one 16-byte load) per thread.
#: Chosen on the static SASS count only (no GPU timing yet).
GPU_CONFIG = {"BLOCK_N": 1024, "BLOCK_G": 4, "num_warps": 4}
#: above this many activation rows the GEMV kernel (one program per row, the weight decoded once per row) loses to
#: decoding the weight once (:func:`box_dequant`, into a transient dense weight in x's dtype) + a dense matmul:
#: at M rows the kernel issues M x 3.94 instructions per weight, the dequant path ~1 decode + 2 B written/read
#: per weight plus a tensor-core GEMM.  Seen on an H200 (2026-11-30): prefill of 128 tokens through the GEMV
#: kernel took 2.7x FP16's time on a Llama-3.2-1B-shaped model; the threshold itself is not tuned on a GPU.
#: Static costs (sm_90, predictions): the small-M kernel issues 12.31 instructions per weight per 8-row block
#: (M = 16: 24.6, ~0.82 ps/weight at 3e13/s), the dequant route ~12.6 instructions + 2.5 B per weight then a BF16
#: GEMM reading 2 B (~0.94 ps/weight on an H200): the kernel stays ahead up to 16 rows, not at 24.
DEQUANT_MIN_M = 16


def _check(words: torch.Tensor, row_scale: torch.Tensor, betas: torch.Tensor, bias, levels=None) -> None:
    if words.dtype != torch.int32 or words.dim() != 2:
        raise ValueError(f"words must be int32 [N, K/8], got {words.dtype} {tuple(words.shape)}")
    n = words.shape[0]
    if row_scale.shape != (n,):
        raise ValueError(f"row_scale must be [N] = [{n}], got {tuple(row_scale.shape)}")
    if betas.numel() != 16:
        raise ValueError(f"betas must hold the 16 box-code scales, got {betas.numel()}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [N] = [{n}], got {tuple(bias.shape)}")
    if levels is not None and levels.numel() not in (16, 256):
        raise ValueError(f"levels must hold the 16 signed levels of a b=3 box code (BoxCodec.levels), or 16 rows of "
                         f"them for per-β tables (256 values), got {levels.numel()}")


_H_TABLE: dict = {}


def _h_table(dev: torch.device) -> torch.Tensor:
    """:func:`hamming_h_table` as int32 ``[16]`` on ``dev`` (a fresh allocation: 64-byte aligned), cached."""
    key = str(dev)
    if key not in _H_TABLE:
        _H_TABLE[key] = torch.tensor(hamming_h_table(), dtype=torch.int32, device=dev)
    return _H_TABLE[key]


def level_table_alignment(levels: torch.Tensor) -> int:
    """Byte alignment the table path needs for ``levels``: 64 for one 16-entry table, 1024 for 16 x 16 per-β tables
    (the PTX ORs ``4 l`` resp. ``64 j + 4 l`` into the low word of the address)."""
    return 1024 if levels.numel() == 256 else 64


def aligned_levels(levels: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``levels`` flattened as a contiguous fp32 tensor on ``device`` (default: its own), starting at a multiple of
    :func:`level_table_alignment` bytes: a view into a fresh buffer with that much slack (the CUDA caching
    allocator only guarantees 512-byte alignment).  Build it once (e.g. per layer, as the dispatcher does): a table
    that is not aligned is copied by the launcher at every call."""
    flat = levels.detach().to(device=device or levels.device, dtype=torch.float32).reshape(-1)
    align = level_table_alignment(flat)
    buf = torch.empty(flat.numel() + align // 4, dtype=torch.float32, device=flat.device)
    off = (-buf.data_ptr() % align) // 4
    out = buf[off:off + flat.numel()]
    out.copy_(flat)
    return out


def _table_arg(levels: torch.Tensor | None, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    """``(levels_ptr, htab_ptr arguments, TABLE, PER_BETA)``: the fp32 contiguous level table (16 entries, or the
    flattened 16 x 16 per-β tables) and the codeword-bit table, or (unused) betas for the lattice path."""
    if levels is None:
        return betas, betas, False, False
    if (levels.dtype != torch.float32 or not levels.is_contiguous()
            or levels.data_ptr() % level_table_alignment(levels)):
        # the PTX ORs the offset (4 l, or 64 j + 4 l) into the low word of the address: fp32, contiguous, aligned
        levels = aligned_levels(levels)
    return levels, _h_table(levels.device), True, levels.numel() == 256


#: small-M configs (2 <= M <= DEQUANT_MIN_M, :mod:`.box_w4a16_rows`: one decode per word for M_BLOCK rows), by
#: M_BLOCK; chosen on the static SASS count only (sm_90, fp16 x, instructions per weight per row: 2.89 / 1.96 / 1.54
#: against the one-row kernel's 3.94; 96 / 126 / 128 registers, 0 spills).  M > 8 runs cdiv(M, 8) row blocks.
ROWS_CONFIGS = {2: {"BLOCK_N": 256, "BLOCK_G": 4, "num_warps": 4, "M_BLOCK": 2},
                4: {"BLOCK_N": 256, "BLOCK_G": 4, "num_warps": 4, "M_BLOCK": 4},
                8: {"BLOCK_N": 128, "BLOCK_G": 4, "num_warps": 4, "M_BLOCK": 8}}


def _rows_block(m: int) -> int:
    """M_BLOCK for ``m`` activation rows: the smallest of 2, 4, 8 holding them (8 above 8)."""
    return 2 if m <= 2 else 4 if m <= 4 else 8


def choose_config(m: int, n: int, kw: int, *, on_gpu: bool, sm_count: int = 132) -> dict:
    """Tile config: fixed small tiles in the interpreter; on GPU ``GPU_CONFIG`` (M = 1) or ``ROWS_CONFIGS`` (M > 1,
    the small-M kernel), ``BLOCK_N`` no wider than N rounded up to a power of two (>= 128: a thread owns >= 1 row;
    a 1024-row tile on N = 512 left half the threads masked), and a split-K that puts about two CTAs per SM
    (``sm_count``) while keeping >= 4 K iterations per split."""
    mb = _rows_block(m) if m > 1 else 1
    if not on_gpu:
        bg = 16 if kw >= 16 else 8
        cfg = {"BLOCK_N": 32 if n > 16 else 16, "BLOCK_G": bg, "SPLIT_K": 1}
        if mb > 1:
            cfg["M_BLOCK"] = mb
        return cfg
    cfg = dict(GPU_CONFIG) if mb == 1 else dict(ROWS_CONFIGS[mb])
    cfg["BLOCK_N"] = min(cfg["BLOCK_N"], max(128, triton.next_power_of_2(max(1, n))))
    tiles = triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(max(1, m), mb)
    split = 1
    while tiles * split < 2 * sm_count and kw // (cfg["BLOCK_G"] * split * 2) >= 4:
        split *= 2
    cfg["SPLIT_K"] = split
    return cfg


_SM_COUNT: dict = {}
_COUNTERS: dict = {}


def _counters(dev: torch.device, size: int) -> torch.Tensor:
    """The zeroed int32 split-K arrival counters of ``FUSED_REDUCE`` (one per output tile; at least ``size``),
    cached per device: the kernel leaves them at zero, so they are allocated (and zeroed) only when a larger call
    first needs them (make that call outside a CUDA-graph capture: a warm-up)."""
    key = str(dev)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < size:
        buf = torch.zeros(max(size, 4096), dtype=torch.int32, device=dev)
        _COUNTERS[key] = buf
    return buf


def _sm_count(dev: torch.device) -> int:
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def box_w4a16_matmul(x: torch.Tensor, words: torch.Tensor, row_scale: torch.Tensor, betas: torch.Tensor,
                     bias: torch.Tensor | None = None, config: dict | None = None,
                     levels: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T (+ bias)`` with ``W = BoxCodec(3, betas).decode_rows(words, row_scale)`` (module docstring).

    ``levels``: None for the √2E8 lattice variant (γ = 1); else the code's 16 signed levels ``BoxCodec.levels``
    (fp32 ``[16]``, level table / companded codes): ``W = row_scale · betas[j] · levels[2 u_i + h_i]`` by the
    table path (module docstring); or a level table per β, ``BoxCodec.levels`` ``(16, 16)`` (or flattened,
    ``[256]``): ``W = row_scale · betas[j] · levels[j, 2 u_i + h_i]`` (``PER_BETA``; pass it 1024-byte aligned,
    :func:`aligned_levels`, or it is copied at every call).

    ``x [..., K]`` fp16 / bf16 / fp32 (read as fp16 by the lattice path, exactly by the table path), ``words``
    int32 ``[N, K/8]``, ``row_scale`` ``[N]`` (fp16), ``betas`` fp32 ``[16]``, ``bias`` ``[N]`` or None; returns
    ``[..., N]`` in ``x.dtype``.
    All tensors on the same device (CUDA, or CPU under ``TRITON_INTERPRET=1``).  ``config`` overrides
    ``BLOCK_N``, ``BLOCK_G``, ``SPLIT_K``, ``num_warps``, ``FUSED_REDUCE`` (split-K reduced in the kernel by the
    last split to arrive, :func:`_epilogue`; off by default: not run on a GPU yet), ``M_BLOCK`` (> 1: the small-M
    kernel of
    :mod:`.box_w4a16_rows`, the default for ``1 < M <=`` :data:`DEQUANT_MIN_M`; absent or 1: one program per row);
    ``{"DEQUANT": True}`` forces the prefill path (taken by
    default on CUDA for ``M >`` :data:`DEQUANT_MIN_M`): :func:`box_dequant` into x's dtype + ``F.linear``.
    """
    _check(words, row_scale, betas, bias, levels)
    n, kw = words.shape
    k = 8 * kw
    x2, lead = as_rows(x, k, "words")
    m = x2.shape[0]
    dev = x.device
    on_gpu = dev.type == "cuda"
    if (config or {}).get("DEQUANT", config is None and on_gpu and m > DEQUANT_MIN_M):
        # prefill: decode the weight once into x's dtype, then one dense GEMM (the tensor cores)
        w = box_dequant(words, row_scale, betas, dtype=x2.dtype, levels=levels)
        out = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(x2.dtype))
        return out.reshape(*lead, n)
    cfg = dict(config) if config is not None else choose_config(
        m, n, kw, on_gpu=on_gpu, sm_count=_sm_count(dev) if on_gpu else 132)
    split = int(cfg.get("SPLIT_K", 1))
    bg = int(cfg["BLOCK_G"])
    if betas.dtype != torch.float32 or not betas.is_contiguous() or betas.data_ptr() % 64:
        # the kernel forms the β address in 32 bits: betas must be fp32, contiguous and 64-byte aligned
        # (every fresh torch allocation is; a slice of another tensor may not be)
        betas = betas.to(torch.float32).contiguous().clone()
    kw_per_split = triton.cdiv(triton.cdiv(kw, split), bg) * bg
    out = torch.empty((m, n), device=dev, dtype=x.dtype)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    part = torch.empty((split, m, n), device=dev, dtype=torch.float32) if split > 1 else out
    words = words if words.is_contiguous() else words.contiguous()
    if x2.dtype in (torch.float16, torch.bfloat16):
        x_mode = 0 if x2.dtype == torch.float16 else 1
        if x2.stride(0) % 2 or x2.storage_offset() % 2:
            x2 = x2.contiguous()
        x_arg, x_stride = x2.view(torch.int32), x2.stride(0) // 2
    else:
        x_mode, x_arg, x_stride = 2, x2, x2.stride(0)
    bn = cfg["BLOCK_N"]
    extra = {"num_warps": cfg["num_warps"]} if "num_warps" in cfg else {}
    lv, ht, table, per_beta = _table_arg(levels, betas)
    fused = split > 1 and bool(cfg.get("FUSED_REDUCE", False))
    cnt = _counters(dev, triton.cdiv(n, bn) * (triton.cdiv(m, int(cfg.get("M_BLOCK", 1))))) if fused else part
    args = (x_arg, words, row_scale, betas, lv, ht, bias if bias is not None else row_scale, out, part, cnt,
            m, n, kw, x_stride, out.stride(0), kw_per_split)
    consts = dict(HAS_BIAS=bias is not None, SPLIT_K=split, USE_ASM=on_gpu, X_MODE=x_mode,
                  EVEN_N=n % bn == 0, EVEN_G=kw_per_split * split == kw, BLOCK_N=bn, BLOCK_G=bg, TABLE=table,
                  FUSED_REDUCE=fused, PER_BETA=per_beta, **extra)
    mb = int(cfg.get("M_BLOCK", 1))
    if mb > 1:
        # small M: one decode per word for mb rows (kernels/box_w4a16_rows.py), bit-identical per row
        from .box_w4a16_rows import _box_w4a16_rows_kernel

        _box_w4a16_rows_kernel[(triton.cdiv(n, bn), split, triton.cdiv(m, mb))](*args, M_BLOCK=mb, **consts)
    else:
        _box_w4a16_kernel[(triton.cdiv(n, bn), split, m)](*args, **consts)
    if split > 1 and not fused:
        # the fp32 partials summed in split order, + bias, cast: one kernel
        rb = 1024 if on_gpu else 128
        _split_k_reduce_kernel[(triton.cdiv(n, rb), m)](part, bias if bias is not None else part, out, m, n,
                                                        out.stride(0), HAS_BIAS=bias is not None, SPLIT_K=split,
                                                        BLOCK=rb)
    return out.reshape(*lead, n)


def box_dequant(words: torch.Tensor, row_scale: torch.Tensor, betas: torch.Tensor,
                dtype: torch.dtype = torch.float32, levels: torch.Tensor | None = None) -> torch.Tensor:
    """``W [N, K]`` decoded by the kernel's lane arithmetic in fp32 (``levels`` given: the table path,
    ``row_scale · (betas[j] · levels[l])``), stored in ``dtype`` (tests: the fp32 result equals ``decode_rows`` bit
    for bit; other dtypes equal its cast)."""
    _check(words, row_scale, betas, None, levels)
    n, kw = words.shape
    if betas.dtype != torch.float32 or not betas.is_contiguous():
        betas = betas.to(torch.float32).contiguous()
    out = torch.empty((n, 8 * kw), device=words.device, dtype=dtype)
    bn, bg = (16, 8) if words.device.type != "cuda" else (64, 16)
    lv, ht, table, per_beta = _table_arg(levels, betas)
    _box_dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(kw, bg))](
        words.contiguous(), row_scale, betas, lv, ht, out, n, kw, BLOCK_N=bn, BLOCK_G=bg, TABLE=table,
        PER_BETA=per_beta)
    return out


def box_w4a16_reference(x: torch.Tensor, words: torch.Tensor, row_scale: torch.Tensor, betas: torch.Tensor,
                        bias: torch.Tensor | None = None, levels: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-PyTorch spec: ``x @ BoxCodec(3, betas).decode_rows(words, row_scale)^T (+ bias)`` in fp32, cast to
    ``x.dtype``; with ``levels`` (16 signed levels, antisymmetric: ``levels[15 - l] = -levels[l]``) the codec is
    ``BoxCodec(3, betas, levels=levels[8:])``; with 16 x 16 per-β levels (each row antisymmetric)
    ``BoxCodec(3, betas, levels=levels[:, 8:])``."""
    from llmquant.lattice.box import BoxCodec

    _check(words, row_scale, betas, bias, levels)
    if levels is None:
        codec = BoxCodec(3, betas.detach().float().cpu(), "hamming", 1.0)
    else:
        lv = levels.detach().float().cpu().reshape(-1, 16)
        if not torch.equal(lv[:, :8], -lv[:, 8:].flip(1)):
            raise ValueError(f"levels must be antisymmetric (levels[15 - l] = -levels[l], per row), got {lv.tolist()}")
        codec = BoxCodec(3, betas.detach().float().cpu(), "hamming", levels=lv[:, 8:] if lv.shape[0] > 1 else lv[0, 8:])
    w = codec.decode_rows(words.cpu(), row_scale.float().cpu())
    y = x.float() @ w.to(x.device).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
