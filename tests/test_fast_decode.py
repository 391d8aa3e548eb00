"""Fast CPU paths of the box code against their references, bit for bit: the pair-table decoder
(:mod:`llmquant.lattice.box_lut`), the few-op encoder (:mod:`llmquant.lattice.box_encode`), the one-word-per-int32
pack/unpack shortcuts, the packed linear's decode into its work buffer and the packed box KV cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.lattice import box_encode, box_lut
from llmquant.lattice.box import BoxCodec, box_nearest, load_box_setting, pack_word_stream, unpack_word_stream

SETTINGS = [(b, v) for b in (1, 2, 3) for v in ("lattice", "best", "int", "table")]


def _codec(b: int, variant: str) -> BoxCodec:
    st = load_box_setting(b, variant)
    return BoxCodec(b, st["betas"], st["code"], st.get("gamma", 1.0), st.get("levels"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of a float tensor: equality of bits (tells -0.0 from +0.0)."""
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def _words(shape, seed=0) -> torch.Tensor:
    """Random int32 words over the whole 32-bit range (bits above word_bits must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**31, 2**31 - 1, shape, generator=g, dtype=torch.int64).to(torch.int32)


@pytest.mark.parametrize("b,variant", SETTINGS, ids=[f"b{b}-{v}" for b, v in SETTINGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_table_decode_equals_the_reference_decode(b, variant, dtype, monkeypatch):
    monkeypatch.setattr(box_lut, "CHUNK_WORDS", 7)  # several chunks, rows split across none of them
    codec = _codec(b, variant)
    w = _words((3, 5, 6), seed=b)
    ref = codec.decode_reference(w, dtype)
    assert torch.equal(_bits(codec.decode(w, dtype)), _bits(ref))
    got = box_lut.decode_flat(codec, w, dtype)
    assert got.shape == (3, 5, 48) and torch.equal(_bits(got), _bits(ref.reshape(3, 5, 48)))
    s = (torch.rand(3, 5) * 4).half()
    scaled = box_lut.decode_flat(codec, w, dtype, scales=s)
    assert torch.equal(_bits(scaled), _bits(s.to(dtype)[..., None] * ref.reshape(3, 5, 48)))
    out = torch.empty(3, 5, 48, dtype=torch.bfloat16)
    box_lut.decode_flat(codec, w, dtype, scales=s, out=out)
    assert torch.equal(_bits(out), _bits((s.to(dtype)[..., None] * ref.reshape(3, 5, 48)).to(torch.bfloat16)))
    w2 = w.reshape(15, 6)
    assert torch.equal(_bits(codec.decode_rows(w2, s.reshape(15), dtype)),
                       _bits((s.reshape(15).to(dtype)[:, None, None] * codec.decode_reference(w2, dtype)).reshape(15, 48)))


def test_table_decode_reads_int64_words_without_changing_them_and_handles_odd_shapes():
    codec = _codec(3, "int")
    w = _words((4, 9)).to(torch.int64)
    keep = w.clone()
    assert torch.equal(codec.decode(w), codec.decode_reference(w))
    assert torch.equal(w, keep)
    assert torch.equal(codec.decode(w[:, 1::2]), codec.decode_reference(w[:, 1::2]))  # non-contiguous
    assert torch.equal(codec.decode(w[0, 0]), codec.decode_reference(w[0, 0]))  # one word, 0-dim
    assert codec.decode(w[:0]).shape == (0, 9, 8)
    with pytest.raises(ValueError, match="no pair table"):
        box_lut.decode_flat(codec, w, torch.float64)
    assert codec.decode(w, torch.float64).dtype == torch.float64  # falls back to the reference


@pytest.mark.parametrize("width", [16, 32])
def test_one_word_per_int32_pack_and_unpack_shortcuts_match_the_generic_stream(width):
    w = _words((3, 10), seed=width)
    mask = (1 << width) - 1
    # the generic path runs for int64 input; the shortcuts for int32
    assert torch.equal(pack_word_stream(w, width), pack_word_stream(w.to(torch.int64), width))
    stream = pack_word_stream(w, width)
    generic = unpack_word_stream(stream.to(torch.int64), width, 10)  # the generic path (int64 stream)
    assert torch.equal(unpack_word_stream(stream, width, 10), generic)
    assert torch.equal(unpack_word_stream(stream, width, 10).to(torch.int64) & mask, w.to(torch.int64) & mask)
    assert unpack_word_stream(stream, width, 10).data_ptr() != stream.data_ptr()  # a copy, never the buffer


def _inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) * (0.2 + 3 * torch.rand(n, 1, generator=g))
    x[: n // 4] = torch.round(x[: n // 4] * 4) / 4  # on level midpoints and tie planes
    x[n // 4: n // 4 + 2] = 0.0
    return x


@pytest.mark.parametrize("b,variant", SETTINGS, ids=[f"b{b}-{v}" for b, v in SETTINGS])
def test_fast_encoder_equals_box_nearest(b, variant):
    codec = _codec(b, variant)
    for n, seed in ((1, 0), (24, 1), (192, 2), (4100, 3)):  # 4100: two search chunks
        x = _inputs(n, seed)
        j0, m0, u0, xh0 = box_nearest(x, codec.b, codec.betas, codec.code, codec.gamma, levels=codec.level_table)
        j1, m1, u1, xh1, w1 = box_encode.nearest(codec, x)
        assert torch.equal(j0, j1) and torch.equal(m0, m1) and torch.equal(u0, u1)
        assert torch.equal(_bits(xh0), _bits(xh1))
        w_ref, xh_ref = codec.quantize_reference(x)
        assert w1.dtype == torch.int32 and torch.equal(w1, w_ref)
        assert torch.equal(codec.encode(x), w_ref) and torch.equal(_bits(codec.fake_quant(x)), _bits(xh_ref))
    xb = _inputs(40, 9).reshape(2, 5, 4, 8).to(torch.bfloat16)
    w_ref, xh_ref = codec.quantize_reference(xb)
    w, xh = codec.quantize(xb)
    assert w.shape == (2, 5, 4) and torch.equal(w, w_ref) and torch.equal(_bits(xh), _bits(xh_ref))
    w, xh = codec.quantize(torch.zeros(0, 3, 8))
    assert w.shape == (0, 3) and w.dtype == torch.int32 and xh.shape == (0, 3, 8)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((2, 8), float("nan")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_box_linear_decodes_into_its_work_buffer_exactly(dtype):
    from llmquant.quant.linear import LatticeLinear, set_weight_cache

    codec = _codec(3, "table")
    layer = LatticeLinear(64, 40, codec=codec, bias=True)
    g = torch.Generator().manual_seed(0)
    layer.set_words(_words((40, 8), seed=3), torch.rand(40, generator=g) + 0.5, torch.randn(40, generator=g))
    ref_w = (layer.row_scale.float()[:, None, None] * codec.decode_reference(layer.unpacked_words())).reshape(40, 64)
    assert torch.equal(layer.decode_rows(0, 40), ref_w)
    out = torch.empty(40, 64, dtype=dtype)
    layer.decode_rows_into(0, 40, out)
    assert torch.equal(_bits(out), _bits(ref_w.to(dtype)))
    assert torch.equal(layer.decode_weight(), ref_w)
    x = torch.randn(3, 64, generator=g).to(dtype)
    ref_y = torch.nn.functional.linear(x, ref_w.to(dtype), layer.bias.to(dtype))
    assert torch.equal(_bits(layer(x)), _bits(ref_y))
    set_weight_cache(layer, "decoded")
    assert torch.equal(_bits(layer(x)), _bits(ref_y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_packed_box_kv_rows_equal_the_reference_fake_quant(dtype, monkeypatch):
    from llmquant.quant.activations import RowQuantizer, box_row_scale
    from llmquant.quant.kv_cache import PackedRows

    monkeypatch.setattr(box_lut, "CHUNK_WORDS", 13)
    codec = _codec(3, "int")
    quant = RowQuantizer("box", codec=codec)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 11, 64, generator=g) * (1 + 5 * (torch.rand(2, 3, 11, 1, generator=g) > 0.7))
    store = PackedRows(quant)
    for a, b in ((0, 7), (7, 8), (8, 11)):  # a prefill, then token by token
        store.append(x[:, :, a:b])
    s = box_row_scale(x)
    _, xh = codec.quantize_reference((x / s).reshape(2, 3, 11, 8, 8))
    ref = xh.reshape(x.shape) * s  # RowQuantizer.quantize_rows, written out with the reference encoder
    assert torch.equal(store.decoded(torch.float32), ref)
    assert torch.equal(_bits(store.decoded(dtype)), _bits(ref.to(dtype)))
    assert torch.equal(quant.quantize_rows(x), ref)
    store.keep_last(5)
    assert torch.equal(store.decoded(torch.float32), ref[:, :, -5:])
