"""Box KV-cache decode kernel (kernels/box_kv_decode.py) against its pure-PyTorch reference
``box_lut.decode_flat(codec, unpacked words, float32, scales=scales, out=out)`` (the bits compared exactly), its
dispatch entry ``try_kv_decode``, and an sm_90 compile check (0 spills)."""

from __future__ import annotations

import pytest
import torch
from _kernels_support import kernel_device

from llmquant.lattice import box_lut
from llmquant.lattice.box import pack_word_stream, shipped_box_codec

# extreme fp16 scales overflow the fp16 output to inf on both sides (numpy warns in the interpreter)
pytestmark = [pytest.mark.kernels, pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

#: the box settings the KV cache ships with
SETTINGS = [(3, "int"), (3, "table"), (3, "d8int8"), (1, "lattice"), (2, "lattice")]
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _words(codec, lead: tuple, nv: int, seed: int) -> torch.Tensor:
    """Random words (every bit pattern of ``word_bits``: all β indices, messages and u fields), as int32."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 1 << codec.word_bits, (*lead, nv), generator=g, dtype=torch.int64)
    return (w - (w >> 31 << 32)).to(torch.int32)  # b = 3: two's complement


def _scales(lead: tuple, seed: int) -> torch.Tensor:
    """fp16 row scales over a wide range, with zeros (signed-zero products) and fp16's extremes."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.randn(lead, generator=g) * 3).clamp(max=6e4)
    flat = s.view(-1)
    flat[::7] = 0.0
    flat[3::11] = 6e-8  # fp16's smallest subnormal
    flat[5::13] = 65504.0
    return s.half()


def _reference(codec, packed: torch.Tensor, scales: torch.Tensor, nv: int, dtype: torch.dtype) -> torch.Tensor:
    words = packed if codec.word_bits == 32 else codec.unpack({"words": packed}, nv)
    out = torch.empty(*scales.shape, 8 * nv, dtype=dtype)
    return box_lut.decode_flat(codec, words.contiguous(), torch.float32, scales=scales.contiguous(), out=out)


def _assert_bits_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    a, b = out.cpu().view(_BITS[out.dtype]), ref.view(_BITS[ref.dtype])
    diff = (a != b).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} values differ, first at {diff[0].tolist()}"


@pytest.mark.parametrize("b,variant", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shipped_kv_codecs_bit_identical(dev, b, variant, dtype):
    """The cache's live slice ``[B, H, start:end]`` of a larger buffer (strided rows, read in place), 37 tokens (not a
    multiple of the row block), head_dim 64."""
    from llmquant.kernels.box_kv_decode import box_kv_decode

    codec = shipped_box_codec(b, variant)
    nv, cap, start, end = 8, 45, 3, 40
    packed = pack_word_stream(_words(codec, (2, 3, cap), nv, seed=b), codec.word_bits)
    scales = _scales((2, 3, cap), seed=b + 10)
    live_w, live_s = packed[:, :, start:end], scales[:, :, start:end]
    ref = _reference(codec, live_w, live_s, nv, dtype)
    out = torch.empty(2, 3, end - start, 8 * nv, dtype=dtype, device=dev)
    assert box_kv_decode(codec, live_w.to(dev), live_s.to(dev), out) is out
    _assert_bits_equal(out, ref)


@pytest.mark.parametrize("b,variant,d", [(3, "int", 80), (2, "lattice", 80), (3, "table", 512), (1, "lattice", 512)])
def test_row_lengths_and_blocks(dev, b, variant, d):
    """A row length that is not a power of 2 (10 words: a masked vector block) and one longer than a vector block
    (64 words: two programs per row), with small row blocks (several programs and a masked last block)."""
    from llmquant.kernels.box_kv_decode import box_kv_decode

    codec = shipped_box_codec(b, variant)
    nv = d // 8
    packed = pack_word_stream(_words(codec, (3, 13), nv, seed=d + b), codec.word_bits)
    scales = _scales((3, 13), seed=d)
    ref = _reference(codec, packed, scales, nv, torch.float16)
    out = torch.empty(3, 13, d, dtype=torch.float16, device=dev)
    box_kv_decode(codec, packed.to(dev), scales.to(dev), out, config={"BLOCK_R": 4, "BLOCK_V": 32})
    _assert_bits_equal(out, ref)


def test_encoded_rows_match_the_cache_reference(dev):
    """Words from the encoder (real rows, not random bits): the kernel equals decode_flat, which equals the codec's
    own ``decode_rows`` (the fake-quant values the cache promises)."""
    from llmquant.kernels.box_kv_decode import box_kv_decode

    from llmquant.quant.activations import box_row_scale

    codec = shipped_box_codec(3, "d8int8")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 9, 128, generator=g) * 2.5
    s = box_row_scale(x)
    words = codec.encode((x / s).reshape(2, 4, 9, 16, 8))
    scales = s[..., 0].half()
    ref = codec.decode_rows(words.reshape(-1, 16), scales.reshape(-1)).reshape(2, 4, 9, 128)
    out = torch.empty(2, 4, 9, 128, dtype=torch.float32, device=dev)
    box_kv_decode(codec, codec.pack(words)["words"].to(dev), scales.to(dev), out)
    _assert_bits_equal(out, ref)


def test_dispatch_try_kv_decode(dev):
    from llmquant.kernels.dispatch import try_kv_decode

    codec = shipped_box_codec(2, "lattice")
    packed = pack_word_stream(_words(codec, (2, 5), 8, seed=3), codec.word_bits)
    scales = _scales((2, 5), seed=4)
    ref = _reference(codec, packed, scales, 8, torch.bfloat16)
    out = torch.empty(2, 5, 64, dtype=torch.bfloat16, device=dev)
    allow = dev.type == "cpu"
    assert try_kv_decode(codec, packed.to(dev), scales.to(dev), out, allow_interpreter=allow) is out
    _assert_bits_equal(out, ref)
    if dev.type == "cpu":  # the interpreter only on request; unsupported dtypes -> None (the reference path)
        assert try_kv_decode(codec, packed, scales, out) is None
    assert try_kv_decode(codec, packed.to(dev), scales.float().to(dev), out, allow_interpreter=allow) is None
    assert try_kv_decode(codec, packed.to(dev), scales.to(dev), out.double(), allow_interpreter=allow) is None


def test_bad_inputs_are_one_line_errors(dev):
    from llmquant.kernels.box_kv_decode import box_kv_decode

    codec = shipped_box_codec(3, "int")
    words = torch.zeros(2, 4, 8, dtype=torch.int32, device=dev)
    scales = torch.ones(2, 4, dtype=torch.float16, device=dev)
    out = torch.empty(2, 4, 64, device=dev)
    with pytest.raises(ValueError, match="need 8 int32 per row"):
        box_kv_decode(codec, words[..., :7], scales, out)
    with pytest.raises(ValueError, match="scales must be fp16"):
        box_kv_decode(codec, words, scales.float(), out)
    with pytest.raises(ValueError, match="contiguous out"):
        box_kv_decode(codec, words, scales, out[:, :3])
    with pytest.raises(ValueError, match="output dtype"):
        box_kv_decode(codec, words, scales, out.to(torch.int32))
    with pytest.raises(ValueError) as info:
        box_kv_decode(codec, words.long(), scales, out)
    assert "\n" not in str(info.value) and "int32" in str(info.value)


def test_kv_decode_compiles_for_sm90_without_spills():
    """The GPU build (sm_90, no GPU needed): the b = 3 lattice path with fp16 output (the shipped `int` / `d8int8`
    caches) and the level-table path (`table`) with fp32 output (two 16-byte stores per word); 0 spills, no shared
    memory (no layout conversion through it), and few instructions per decoded value (at the time of
    writing: 14.75 / 16.22)."""
    pytest.importorskip("triton")
    from llmquant.kernels.sass import _run_jobs, sass_tools_available

    reason = sass_tools_available()
    if reason is not None:
        pytest.skip(f"static SASS analysis unavailable: {reason}")
    sig = {"words_ptr": "*i32", "scales_ptr": "*fp16", "tab_ptr": "*fp32", "T": "i32", "NV": "i32",
           "stride_wo": "i32", "stride_wt": "i32", "stride_wv": "i32", "stride_so": "i32", "stride_st": "i32"}
    jobs = []
    for lattice, out in ((True, "*fp16"), (False, "*fp32")):
        jobs.append({"kernel_ref": "llmquant.kernels.box_kv_decode:_box_kv_decode_kernel",
                     "signature": dict(sig, out_ptr=out),
                     "constexprs": {"B": 3, "M_BITS": 4, "PARITY": False, "LATTICE": lattice, "BF16_BITS": False,
                                    "BLOCK_R": 32, "BLOCK_V": 16},
                     "weights_per_iter": 32 * 16 * 8, "arch": "sm_90", "num_warps": 4, "num_stages": 3,
                     "divisible_by_16": ["NV", "stride_wo", "stride_wt"], "keep_sass": False})
    rows = _run_jobs(jobs)
    for r in rows:
        assert r["spills"] == 0 and r["shuffles"] == 0, r
        assert r.get("shared_bytes", 0) == 0, r
        assert 0 < r["instructions_per_weight"] < 20, r


@pytest.mark.parametrize("b,variant", [(3, "d8int8"), (2, "lattice")])
def test_packed_rows_live_slice(dev, b, variant):
    """The cache's own store (``PackedRows`` with a box ``RowQuantizer``), after appends, growth and ``keep_last``
    (start > 0: the live rows are a strided slice of the buffer): the kernel on its live tensors, in place, equals the
    store's decoded rows (``_decoded_box``'s table path on CPU), which equal the fake-quant rows."""
    from llmquant.kernels.dispatch import try_kv_decode

    from llmquant.quant.activations import RowQuantizer
    from llmquant.quant.kv_cache import PackedRows

    quant = RowQuantizer("box", codec=shipped_box_codec(b, variant))
    g = torch.Generator().manual_seed(b)
    x = torch.randn(2, 2, 30, 64, generator=g) * 3
    store = PackedRows(quant)
    for t0 in range(0, 30, 6):
        store.append(x[:, :, t0:t0 + 6])
        store.keep_last(17)
    assert store.start > 0
    live = {n: t[:, :, store.start:store.end] for n, t in store.t.items()}
    ref = store.decoded(torch.bfloat16)
    assert torch.equal(ref, quant.quantize_rows(x[:, :, -17:]).to(torch.bfloat16))
    out = torch.empty(2, 2, 17, 64, dtype=torch.bfloat16, device=dev)
    assert try_kv_decode(quant.codec, live["words"].to(dev), live["scale"].to(dev), out,
                         allow_interpreter=dev.type == "cpu") is out
    _assert_bits_equal(out, ref)
