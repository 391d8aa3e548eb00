"""Bit packers round-trip bit-exactly, follow the documented layouts, and count bits exactly."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmquant.lattice import (
    mixed_radix_bits,
    pack_bits,
    pack_codes,
    pack_mixed_radix,
    pack_nested_stream,
    stream_bits,
    unpack_bits,
    unpack_codes,
    unpack_mixed_radix,
    unpack_nested_stream,
)


@pytest.mark.parametrize("q", range(2, 17))
def test_pack_codes_round_trip_every_q(q):
    gen = torch.Generator().manual_seed(q)
    codes = torch.randint(0, q, (3, 50, 8), generator=gen).to(torch.uint8)
    codes[0, 0] = q - 1  # extremes, including a negative int32 word when q > 8
    codes[0, 1] = 0
    words = pack_codes(codes, q)
    assert words.dtype == torch.int32 and words.shape == (3, 50)
    assert torch.equal(unpack_codes(words), codes)


def test_pack_codes_layout():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    word = int(pack_codes(codes, 16)[0]) & 0xFFFFFFFF
    assert word == sum(c << (4 * j) for j, c in enumerate([1, 2, 3, 4, 5, 6, 7, 15]))
    assert int(pack_codes(codes, 16)[0]) < 0, "code 7 >= 8 sets bit 31"


@pytest.mark.parametrize("width", range(1, 17))
def test_pack_bits_round_trip_every_width(width):
    gen = torch.Generator().manual_seed(width)
    for n in (0, 1, 31, 32, 33, 1000):
        v = torch.randint(0, 1 << width, (n,), generator=gen)
        if n:
            v[0] = (1 << width) - 1
        words = pack_bits(v, width)
        assert words.dtype == torch.int32 and words.numel() == math.ceil(n * width / 32)
        assert torch.equal(unpack_bits(words, width, n), v)


def test_pack_bits_layout_little_endian_stream():
    words = pack_bits(torch.tensor([5, 1, 7]), 3)
    assert int(words[0]) == 5 | (1 << 3) | (7 << 6)
    # a value straddling two words: 11 values of width 3 -> value 10 sits in bits 30..32
    v = torch.full((11,), 7)
    w = pack_bits(v, 3)
    assert w.numel() == 2 and (int(w[0]) & 0xFFFFFFFF) == (1 << 32) - 1 and int(w[1]) == 1


@settings(max_examples=50, deadline=None)
@given(width=st.integers(1, 16), data=st.data())
def test_pack_bits_property(width, data):
    vals = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=200))
    v = torch.tensor(vals, dtype=torch.int64)
    assert torch.equal(unpack_bits(pack_bits(v, width), width, len(vals)), v)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_mixed_radix_property(data):
    radices = data.draw(st.lists(st.integers(1, 300), max_size=300))
    digits = [data.draw(st.integers(0, r - 1)) for r in radices]
    blob, n_bits = pack_mixed_radix(digits, radices)
    assert n_bits == mixed_radix_bits(radices)
    assert len(blob) == math.ceil(n_bits / 8)
    assert unpack_mixed_radix(blob, radices).tolist() == digits


@pytest.mark.parametrize("n,q,k", [(4096, 14, 4), (1024, 16, 1), (512, 4, 2), (2048, 12, 5)])
def test_stream_rate_equals_packed_bits(n, q, k):
    gen = torch.Generator().manual_seed(n + q + k)
    codes = torch.randint(0, q, (n // 8, 8), generator=gen).to(torch.uint8)
    idx = torch.randint(0, k, (n // 8,), generator=gen).to(torch.uint8)
    codes[-1] = q - 1
    idx[-1] = k - 1
    blob, n_bits = pack_nested_stream(codes, idx, q, k)
    assert stream_bits(n, q, k, side_bits=16) == n_bits + 16
    assert n_bits == math.ceil(n * math.log2(q) + n / 8 * math.log2(k) - 1e-9)
    assert len(blob) == math.ceil(n_bits / 8)
    c2, i2 = unpack_nested_stream(blob, n // 8, q, k)
    assert torch.equal(c2, codes) and torch.equal(i2, idx)


def test_nibble_stream_bits_equal_words():
    n, k = 4096, 4
    codes = torch.randint(0, 14, (n // 8, 8)).to(torch.uint8)
    idx = torch.randint(0, k, (n // 8,))
    stored = 32 * (pack_codes(codes, 14).numel() + pack_bits(idx, 2).numel())
    assert stream_bits(n, 14, k, side_bits=0, packer="nibble") == stored
    assert stored / n == 4 + 2 / 8


def test_packer_errors():
    with pytest.raises(ValueError, match=r"\[0, 14\)"):
        pack_codes(torch.full((1, 8), 14), 14)
    with pytest.raises(ValueError, match="q must be"):
        pack_codes(torch.zeros(1, 8, dtype=torch.long), 17)
    with pytest.raises(ValueError, match="width"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(TypeError, match="integer"):
        pack_bits(torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match="outside"):
        pack_mixed_radix([3], [3])
    blob, _ = pack_mixed_radix([2, 2], [3, 3])
    with pytest.raises(ValueError, match="bytes"):
        unpack_mixed_radix(blob + b"\0", [3, 3])
