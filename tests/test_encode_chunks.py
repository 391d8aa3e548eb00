"""Chunked box encodes are bit-identical to the unchunked ones and keep their temporaries small: the
multi-chunk search of :func:`llmquant.lattice.box_encode.nearest` (outputs allocated once), the row chunks of
:class:`llmquant.quant.activations.RowQuantizer` (``quantize_rows`` / ``encode_rows``) and of the packed KV
store's long-prefill encode (:class:`llmquant.quant.kv_cache.PackedRows`)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.lattice import box_encode
from llmquant.lattice.box import BoxCodec, box_nearest, load_box_setting
from llmquant.quant import activations
from llmquant.quant.activations import RowQuantizer, box_chunk_rows, box_row_scale


def _codec(b: int = 3, variant: str = "int") -> BoxCodec:
    st = load_box_setting(b, variant)
    return BoxCodec(b, st["betas"], st["code"], st.get("gamma", 1.0), st.get("levels"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype])


def _acts(shape, seed: int) -> torch.Tensor:
    """Heavy-tailed rows (some tokens 6x larger, a few outlier columns), some exact zeros and a zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * (1 + 5 * (torch.rand(*shape[:-1], 1, generator=g) > 0.8))
    x[..., :3] *= 8
    x.view(-1, shape[-1])[1] = 0.0
    x.view(-1, shape[-1])[2, ::5] = 0.0
    return x


def _reference_fake_quant(codec: BoxCodec, x: torch.Tensor) -> torch.Tensor:
    """``quantize_rows`` of the box code written out with the reference search (:func:`box_nearest`)."""
    xf = x.to(torch.float32)
    s = box_row_scale(xf)
    _, xh = codec.quantize_reference((xf / s).reshape(*xf.shape[:-1], -1, 8))
    return (xh.reshape(xf.shape) * s).to(x.dtype)


@pytest.mark.parametrize("r", [8, 24, 64, 576, 1536, 4096, 11008, 8 * 4097])
def test_row_chunks_hold_whole_search_chunks(r):
    rows = box_chunk_rows(r)
    assert rows >= 1 and (rows * r // 8) % box_encode.CHUNK == 0
    unit = box_encode.CHUNK // math.gcd(r // 8, box_encode.CHUNK)
    assert rows % unit == 0 and (rows == unit or rows * r // 8 <= activations.ENCODE_VECTORS)


@pytest.mark.parametrize("n", [4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("variant", ["int", "table"])
def test_multi_chunk_nearest_equals_box_nearest(n, variant):
    codec = _codec(3, variant)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 8, generator=g) * (0.2 + 3 * torch.rand(n, 1, generator=g))
    x[: n // 5] = torch.round(x[: n // 5] * 4) / 4  # level midpoints and tie planes
    j0, m0, u0, xh0 = box_nearest(x, codec.b, codec.betas, codec.code, codec.gamma, levels=codec.level_table)
    w_ref, _ = codec.quantize_reference(x)
    j1, m1, u1, xh1, w1 = box_encode.nearest(codec, x)
    assert torch.equal(j0, j1) and torch.equal(m0, m1) and torch.equal(u0, u1)
    assert torch.equal(_bits(xh0), _bits(xh1)) and w1.dtype == torch.int32 and torch.equal(w1, w_ref)
    _, _, u2, xh2, w2 = box_encode.nearest(codec, x.reshape(1, n, 8), want_xhat=False)
    assert xh2 is None and w2.shape == (1, n) and torch.equal(w2[0], w_ref) and torch.equal(u2[0], u0)
    _, _, u3, xh3, w3 = box_encode.nearest(codec, x.to(torch.bfloat16), want_words=False)
    assert u3 is None and w3 is None and xh3.dtype == torch.bfloat16
    assert torch.equal(_bits(xh3), _bits(codec.quantize_reference(x.to(torch.bfloat16))[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(200, 1536), (2, 700, 576), (3, 5, 300, 64)], ids=["down", "qkv", "kv"])
def test_chunked_quantize_rows_equals_unchunked_and_the_reference(shape, dtype, monkeypatch):
    codec = _codec(3, "int")
    q = RowQuantizer("box", codec=codec)
    x = _acts(shape, seed=len(shape)).to(dtype)
    r = shape[-1]
    assert x.numel() > box_chunk_rows(r) * r  # the chunked path runs
    got = q.quantize_rows(x)
    assert got.dtype == dtype and got.shape == x.shape
    monkeypatch.setattr(activations, "box_chunk_rows", lambda r: 1 << 40)  # one chunk: the unchunked path
    whole = q.quantize_rows(x)
    assert torch.equal(_bits(got), _bits(whole))
    assert torch.equal(_bits(got), _bits(_reference_fake_quant(codec, x)))


def test_chunked_encode_rows_equals_unchunked_and_decodes_to_quantize_rows(monkeypatch):
    codec = _codec(3, "int")
    x = _acts((2, 150, 1536), seed=7)
    words, scales = RowQuantizer("box", codec=codec).encode_rows(x)
    assert words.shape == (2, 150, 192) and words.dtype == torch.int32 and scales.shape == (2, 150)
    fq = RowQuantizer("box", codec=codec).quantize_rows(x)
    assert torch.equal(scales[..., None] * codec.decode(words).reshape(2, 150, 1536), fq)
    monkeypatch.setattr(activations, "box_chunk_rows", lambda r: 1 << 40)
    w0, s0 = RowQuantizer("box", codec=codec).encode_rows(x)
    assert torch.equal(words, w0) and torch.equal(scales, s0)
    with pytest.raises(ValueError, match="not divisible by 8"):
        RowQuantizer("box", codec=codec).encode_rows(torch.zeros(3, 12))


def test_packed_kv_store_encodes_a_long_prefill_in_chunks_exactly(monkeypatch):
    from llmquant.quant.kv_cache import PackedRows

    codec = _codec(3, "int")
    quant = RowQuantizer("box", codec=codec)
    x = _acts((1, 3, 2100, 64), seed=3)  # 6300 rows of 64: 4 row chunks of 2048
    assert x.numel() > box_chunk_rows(64) * 64
    store = PackedRows(quant)
    store.append(x[:, :, :2099])  # chunked prefill
    store.append(x[:, :, 2099:])  # one decode token
    ref = _reference_fake_quant(codec, x)
    assert torch.equal(store.decoded(torch.float32), ref)
    monkeypatch.setattr(activations, "box_chunk_rows", lambda r: 1 << 40)
    whole = PackedRows(quant)
    whole.append(x[:, :, :2099])
    whole.append(x[:, :, 2099:])
    for name in store.t:
        a, b = store.t[name][:, :, :2100], whole.t[name][:, :, :2100]
        assert torch.equal(a.view(torch.int16) if a.dtype == torch.float16 else a,
                           b.view(torch.int16) if b.dtype == torch.float16 else b)


class _Allocations(TorchDispatchMode):
    """Records the bytes of every new storage an op returns (views of an argument are not counted)."""

    def __init__(self):
        super().__init__()
        self.nbytes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {a.untyped_storage().data_ptr() for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.nbytes.append(t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("what", ["quantize_rows", "encode_rows"])
def test_long_encode_allocates_nothing_that_scales_with_the_tokens_but_its_outputs(what):
    """A 4096-token, 1536-wide input (25 MB): the only allocations above 1/4 of it are the outputs, each made once
    (quantize_rows: the rows; encode_rows: nothing, the words are 1/8 of it); every temporary is one chunk of
    rows or one search chunk's working set (``(k, 2, 8, 4096)`` float32: 4 MiB), whatever the token count."""
    codec = _codec(3, "int")
    x = _acts((4096, 1536), seed=11)
    xbytes = x.numel() * 4
    q = RowQuantizer("box", codec=codec)
    with _Allocations() as rec:
        out = getattr(q, what)(x)
    big = [n for n in rec.nbytes if n > xbytes // 4]
    assert big == ([xbytes] if what == "quantize_rows" else [])
    small = [n for n in rec.nbytes if n <= xbytes // 4]
    search = box_encode.CHUNK * 8 * 2 * codec.betas.numel() * 4
    per_chunk_rows = box_chunk_rows(1536) * 1536 * 8  # int64 u of one chunk of rows
    assert max(small) <= max(search, per_chunk_rows) and max(small) < xbytes // 5
    if what == "encode_rows":
        assert out[0].numel() == x.numel() // 8


def test_equal_codecs_share_their_search_and_decode_tables():
    """One table set per codec value, not per quantizer (a model holds one codec object per linear / KV slot):
    the search grid of a chunk size is cached once for all codecs."""
    from llmquant.lattice import box_lut

    a, b, other = _codec(3, "int"), _codec(3, "int"), _codec(3, "table")
    assert a is not b
    assert box_encode._consts(a, "cpu") is box_encode._consts(b, "cpu")
    assert box_encode._consts(a, "cpu") is not box_encode._consts(other, "cpu")
    assert box_lut._tables(a, torch.float32, "cpu")[1] is box_lut._tables(b, torch.float32, "cpu")[1]
    assert not torch.equal(box_lut._tables(a, torch.float32, "cpu")[1], box_lut._tables(other, torch.float32, "cpu")[1])
    ga = box_encode._consts(a, "cpu").grid(4096)[0]
    assert ga is box_encode._consts(other, "cpu").grid(4096)[0]
    x = _acts((3, 64), seed=1).reshape(3, 8, 8)
    assert torch.equal(a.encode(x), b.encode(x)) and torch.equal(a.encode(x), a.quantize_reference(x)[0])
