"""Box codes (llmquant.lattice.box) and the codec protocol (llmquant.lattice.codec): lattice facts,
exact encoder, bit layout, stored bits = counted bits, Voronoi adapter."""

import itertools

import pytest
import torch

from llmquant.lattice import NestedLatticeQuantizer, load_beta_set
from llmquant.lattice.box import (
    BoxCodec,
    E8BoxCodec,
    box_levels,
    codewords,
    construction_a_points,
    load_box_setting,
    pack_word_stream,
    unpack_word_stream,
)
from llmquant.lattice.codec import LatticeCodec, VoronoiNibbleCodec, codec_from_dict, packed_bits

GEOM16 = torch.logspace(-0.9, -0.2, 16)


def _betas(b, code):
    k = 16 if code == "hamming" else 2
    return torch.logspace(-0.8, -0.1, k) * 8 / 2**b


def test_hamming_code_and_construction_a_is_sqrt2_e8():
    C = codewords("hamming")
    assert C.shape == (16, 8)
    w = C.sum(1).sort().values.tolist()
    assert w == [0] + [4] * 14 + [8]
    # linear: closed under xor
    keys = set((C << torch.arange(8)).sum(1).tolist())
    for a, b in itertools.product(C.tolist(), repeat=2):
        assert sum(((x ^ y) << i) for i, (x, y) in enumerate(zip(a, b))) in keys
    pts = construction_a_points(4)
    norms = pts.square().sum(1)
    assert int((norms == 0).sum()) == 1 and int((norms == 4).sum()) == 240 and int(((norms > 0) & (norms < 4)).sum()) == 0
    # basis: systematic rows (e_i + parity part) for i < 4 and 2 e_{4+i}; volume 16; Gram/2 even unimodular -> E8
    basis = torch.cat([C[[1, 2, 4, 8]], 2 * torch.eye(8, dtype=torch.int64)[4:]]).double()
    assert abs(torch.linalg.det(basis).abs().item() - 16.0) < 1e-9
    gram = basis @ basis.T / 2
    assert torch.equal(gram, gram.round()) and (gram.diagonal() % 2 == 0).all()
    assert abs(torch.linalg.det(gram).item() - 1.0) < 1e-9


def test_parity_code_is_d8():
    C = codewords("parity")
    assert C.shape == (128, 8) and (C.sum(1) % 2 == 0).all() and len({tuple(r) for r in C.tolist()}) == 128
    pts = construction_a_points(2, "parity")
    norms = pts.square().sum(1)
    assert int((norms == 2).sum()) == 112  # D8 kissing number


def test_levels_gamma_one_is_the_shifted_lattice():
    for b in (1, 2, 3):
        lv = box_levels(b)
        assert torch.equal(2 * lv, torch.arange(-(2 ** (b + 1)) + 1, 2 ** (b + 1), 2).float())
        assert torch.equal(box_levels(b, 1.3), -box_levels(b, 1.3).flip(0))


def _brute(x, b, betas, code, gamma):
    """Reference nearest codeword by explicit enumeration: every β, every codeword h, and per coordinate
    every level of the right parity (coordinates are independent given (h, β))."""
    lv = box_levels(b, gamma).double()
    C = codewords(code)
    best = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for beta in betas.double().tolist():
        cand = beta * lv  # (L,)
        d = (x.double()[:, :, None] - cand).square()  # (n, 8, L)
        e0 = d[..., 0::2].min(-1).values
        e1 = d[..., 1::2].min(-1).values
        E = e0 @ (1 - C.double()).T + e1 @ C.double().T  # (n, |C|)
        best = torch.minimum(best, E.min(1).values)
    return best


def _full_codebook(b, betas, code):
    """Every point of the code (b = 1 only: 2^(8b) z-patterns x |C| codewords x k scales), float64."""
    lv = box_levels(b).double()
    C = codewords(code)
    us = torch.cartesian_prod(*([torch.arange(2**b)] * 8))  # (2^(8b), 8)
    pts = lv[2 * us[None] + C[:, None]]  # (|C|, 2^(8b), 8)
    return torch.cat([beta * pts.reshape(-1, 8) for beta in betas.double().tolist()])


@pytest.mark.parametrize("code", ["hamming", "parity"])
def test_encoder_is_exact_against_the_full_codebook_b1(code):
    betas = _betas(1, code)
    codec = BoxCodec(1, betas, code)
    book = _full_codebook(1, codec.betas, code)
    assert book.shape[0] == 2 ** (8 + 4 + 4)
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(1)) * 1.3
    x_hat = codec.fake_quant(x)
    err = (x.double() - x_hat.double()).square().sum(1)
    ref = torch.cdist(x.double(), book).square().min(1).values
    assert torch.allclose(err, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b,code,gamma", [(2, "hamming", 1.0), (3, "hamming", 1.0), (2, "parity", 1.0),
                                          (3, "hamming", 1.3), (2, "parity", 1.35), (1, "hamming", 1.2)])
def test_encoder_is_exact_on_random_samples(b, code, gamma):
    codec = BoxCodec(b, _betas(b, code), code, gamma)
    gen = torch.Generator().manual_seed(b)
    x = torch.cat([torch.randn(2000, 8, generator=gen), 3 * torch.randn(200, 8, generator=gen)])
    words, x_hat = codec.quantize(x)
    err = (x.double() - x_hat.double()).square().sum(1)
    ref = _brute(x, b, codec.betas, code, gamma)
    assert torch.allclose(err, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(codec.decode(words), x_hat)


@pytest.mark.parametrize("b,code,gamma", [(1, "hamming", 1.0), (2, "hamming", 1.0), (3, "hamming", 1.0),
                                          (1, "parity", 1.0), (3, "hamming", 1.3)])
def test_decode_encode_is_idempotent_and_fields_are_in_range(b, code, gamma):
    codec = BoxCodec(b, _betas(b, code), code, gamma)
    x = torch.randn(4, 33, 8, generator=torch.Generator().manual_seed(7))
    words = codec.encode(x)
    assert words.shape == (4, 33) and words.dtype == torch.int32
    x_hat = codec.decode(words)
    assert torch.equal(codec.encode(x_hat), words)
    assert torch.equal(codec.fake_quant(x_hat), x_hat)
    u, m, j = codec.fields(words)
    assert int(u.max()) < 2**b and int(m.max()) < 2**codec.m_bits and int(j.max()) < 2**codec.k_bits
    # the word has exactly word_bits = 8b + 8 significant bits
    assert codec.word_bits == 8 * b + 8
    assert int((words.to(torch.int64) & 0xFFFFFFFF).max()) < 2**codec.word_bits


def test_word_layout_by_hand():
    codec = E8BoxCodec(3, GEOM16)
    # u = (0..7), m = 5, j = 9 -> value betas[9] * (2u + h - 8 + .5)
    u = torch.arange(8)
    w = int((u << (3 * torch.arange(8))).sum()) | (5 << 24) | (9 << 28)
    word = torch.tensor([w - 2**32 if w >= 2**31 else w], dtype=torch.int32)
    h = codewords("hamming")[5]
    assert h.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]  # m = 0b0101, parity 0
    expect = GEOM16[9] * (2 * u + h - 8 + 0.5).float()
    assert torch.allclose(codec.decode(word)[0], expect)
    lay = codec.kernel_layout
    assert lay["word_bits"] == 32 and lay["message"] == {"shift": 24, "bits": 4}
    assert lay["beta_index"] == {"shift": 28, "bits": 4} and lay["u_fields"]["shift"][7] == 21


@pytest.mark.parametrize("width", [1, 7, 8, 16, 24, 31, 32])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 33])
def test_word_stream_round_trip(width, n):
    gen = torch.Generator().manual_seed(width * 100 + n)
    w = torch.randint(0, 2**width, (3, 2, n), generator=gen, dtype=torch.int64)
    s = pack_word_stream(w, width)
    assert s.dtype == torch.int32 and s.shape == (3, 2, -(-width * n // 32))
    back = unpack_word_stream(s, width, n).to(torch.int64) & (2**width - 1)
    assert torch.equal(back, w)


@pytest.mark.parametrize("b,code", [(1, "hamming"), (2, "hamming"), (3, "hamming"), (1, "parity"), (2, "parity")])
@pytest.mark.parametrize("n_cols", [8, 24, 64, 4096])
def test_pack_round_trip_and_stored_bits_from_tensor_sizes(b, code, n_cols):
    codec = BoxCodec(b, _betas(b, code), code)
    rows = 3
    x = torch.randn(rows, n_cols // 8, 8, generator=torch.Generator().manual_seed(n_cols))
    words = codec.encode(x)
    packed = codec.pack(words)
    assert torch.equal(codec.unpack(packed, n_cols // 8), words)
    bits_per_row = packed_bits(packed) / rows
    assert codec.stored_bits_per_entry(n_cols) == (bits_per_row + 16) / n_cols
    assert codec.stored_bits_per_entry() == b + 1
    if (n_cols // 8) * codec.word_bits % 32 == 0:
        assert bits_per_row == n_cols * (b + 1)  # no padding: exactly b + 1 bits per entry


def test_decode_rows_and_serialisation():
    codec = BoxCodec(2, _betas(2, "hamming"), "hamming", 1.2)
    assert isinstance(codec, LatticeCodec)
    W = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    s = W.norm(dim=1) / 8
    words = codec.encode((W / s[:, None]).reshape(5, 8, 8))
    Wh = codec.decode_rows(words, s)
    assert Wh.shape == (5, 64)
    assert torch.allclose(Wh, (s[:, None, None] * codec.decode(words)).reshape(5, 64))
    d = codec.to_dict()
    again = codec_from_dict(d)
    assert isinstance(again, BoxCodec) and torch.equal(again.decode(words), codec.decode(words))
    with pytest.raises(ValueError, match="version"):
        codec_from_dict({**d, "version": 99})
    with pytest.raises(ValueError, match="betas"):
        BoxCodec(2, torch.ones(16), "hamming")
    with pytest.raises(ValueError, match="16 betas"):
        BoxCodec(2, torch.ones(4), "hamming")


@pytest.mark.parametrize("variant", ["lattice", "best", "int", "table"])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_shipped_settings_load_and_build(variant, b):
    s = load_box_setting(b, variant)
    codec = BoxCodec(b, s["betas"], s["code"], s.get("gamma"), s.get("levels"))
    assert codec.stored_bits_per_entry() == b + 1
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(b))
    xh = codec.fake_quant(x).double()
    g = (x.double() * xh).sum() / xh.square().sum()
    mse = float((x.double() - g * xh).square().mean())
    assert mse == pytest.approx(s["mse"], rel=0.1)
    if variant == "lattice":
        assert s["code"] == "hamming" and s["gamma"] == 1.0
        assert torch.equal(BoxCodec(b).betas, codec.betas)
    if variant == "table":
        assert codec.gamma is None and len(s["levels"]) == 2**b
        assert torch.equal(codec_from_dict(codec.to_dict()).levels, codec.levels)
    if variant == "int":
        r = torch.tensor(s["ratios"], dtype=torch.float64)
        assert torch.allclose(codec.betas.double(), s["c"] * r, rtol=1e-6)


@pytest.mark.parametrize("q,k", [(14, 2), (8, 1), (16, 4)])
def test_voronoi_adapter_is_honest_and_matches_the_quantizer(q, k):
    betas = load_beta_set("E8", q, k)
    nq = NestedLatticeQuantizer("E8", q, betas)
    codec = VoronoiNibbleCodec(nq)
    assert isinstance(codec, LatticeCodec)
    x = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(q))
    words, x_hat = codec.quantize(x)
    assert torch.equal(x_hat, nq.fake_quant(x))
    assert torch.equal(codec.decode(words), x_hat)
    packed = codec.pack(words)
    assert torch.equal(codec.unpack(packed, 40), words)
    assert codec.stored_bits_per_entry(320) == (packed_bits(packed) / 3 + 16) / 320
    w = 0 if k == 1 else (k - 1).bit_length()
    assert codec.stored_bits_per_entry() == 4 + w / 8
    again = codec_from_dict(codec.to_dict())
    assert torch.equal(again.decode(words), x_hat)
    with pytest.raises(ValueError, match="q <= 16"):
        VoronoiNibbleCodec(NestedLatticeQuantizer("E8", 32, load_beta_set("E8", 32, 1)))


def test_encoder_handles_many_vectors():
    codec = BoxCodec(3, _betas(3, "hamming"))
    x = torch.randn(100_000, 8, generator=torch.Generator().manual_seed(0))
    words = codec.encode(x)
    assert words.shape == (100_000,)
    assert torch.equal(codec.encode(codec.decode(words)), words)
