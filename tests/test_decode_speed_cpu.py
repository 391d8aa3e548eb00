"""The faster exact CPU paths of one decode step, bit for bit against the forms they replace: the pair-table
indices built in reused scratch buffers (:func:`llmquant.lattice.box_lut._indices`, int32 words read in place,
int64 words, non-contiguous words, growing and shrinking chunk sizes, several threads) and the one-op-per-stage
Hadamard butterfly (:func:`llmquant.rotation.fwht._butterfly`, signed zeros included)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.lattice import box_lut
from llmquant.lattice.box import BoxCodec, load_box_setting

SETTINGS = [(b, v) for b in (1, 2, 3) for v in ("int", "table")]


def _codec(b: int, variant: str) -> BoxCodec:
    st = load_box_setting(b, variant)
    return BoxCodec(b, st["betas"], st["code"], st.get("gamma", 1.0), st.get("levels"))


def _words(shape, seed=0, dtype=torch.int32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-2**31, 2**31 - 1, shape, generator=g, dtype=torch.int64)
    return w.to(dtype) if dtype == torch.int32 else w | (torch.randint(0, 2**20, shape, generator=g) << 40)


def _swar_indices(w: torch.Tensor, b: int, keys: torch.Tensor) -> torch.Tensor:
    """The allocation-per-op SWAR of the module docstring, written out (the form the scratch version replaces)."""
    wl = w.to(torch.int64)
    m4, m2 = (1 << 4 * b) - 1, ((1 << 2 * b) - 1) * (1 + (1 << 32))
    w2 = (wl & m4) | (((wl >> 4 * b) & m4) << 32)
    w4 = (w2 & m2) | (((w2 >> 2 * b) & m2) << 16)
    w4 = w4 | keys[(wl >> 8 * b) & 0xFF]
    return w4.view(torch.int16).to(torch.int32)


@pytest.mark.parametrize("b,variant", SETTINGS, ids=[f"b{b}-{v}" for b, v in SETTINGS])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_scratch_indices_equal_the_written_out_swar(b, variant, dtype):
    codec = _codec(b, variant)
    keys, _ = box_lut._tables(codec, torch.float32, "cpu")
    for shape, seed in (((5, 9), 0), ((1, 1), 1), ((40, 72), 2), ((3, 4), 3)):  # grows, then shrinks
        w = _words(shape, seed, dtype)
        keep = w.clone()
        got = box_lut._indices(w, b, keys)
        assert got.shape == (shape[0], 4 * shape[1]) and got.dtype == torch.int32
        assert torch.equal(got, _swar_indices(w, b, keys).reshape(got.shape))
        assert torch.equal(w, keep)  # words are read, never written
    w = _words((6, 20), 4, dtype)[:, ::2]  # non-contiguous
    assert torch.equal(box_lut._indices(w, b, keys), _swar_indices(w, b, keys).reshape(6, 40))


@pytest.mark.parametrize("variant", ["int", "table"])
def test_decode_flat_with_scratch_equals_the_reference_across_calls_and_threads(variant, monkeypatch):
    monkeypatch.setattr(box_lut, "CHUNK_WORDS", 50)  # several chunks per call, scratch reused between them
    codec = _codec(3, variant)
    cases = [(_words((7, 24), s), (torch.rand(7) + 0.5).half()) for s in range(4)]
    refs = [(s.float()[:, None] * codec.decode_reference(w).reshape(7, 192)) for w, s in cases]
    for (w, s), ref in zip(cases, refs):
        assert torch.equal(box_lut.decode_flat(codec, w, torch.float32, scales=s), ref)
    errors: list = []

    def work(i):
        try:
            for _ in range(20):
                w, s = cases[i]
                if not torch.equal(box_lut.decode_flat(codec, w, torch.float32, scales=s), refs[i]):
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _butterfly_stack(x: torch.Tensor) -> torch.Tensor:
    """The three-op stage ``stack((a + b, a - b))`` the one-op stage replaces."""
    n, lead, h = x.shape[-1], x.shape[:-1], 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


@pytest.mark.parametrize("shape", [(1, 9, 1, 64), (3, 1536), (2, 5, 96), (4, 1), (2, 40), (6, 12), (2, 3, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_op_butterfly_equals_the_stack_form(shape, dtype):
    import importlib

    fw = importlib.import_module("llmquant.rotation.fwht")
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64) * 50
    x.view(-1)[::7] = 0.0
    x.view(-1)[::11] = -0.0
    x.view(-1)[::13] = x.view(-1)[::13].round()  # exact cancellations: a - b = +-0
    x = x.to(dtype)
    from llmquant.rotation.constructions import split_order

    m, k = split_order(shape[-1])
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y = xf.reshape(*shape[:-1], m, 2**k)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[xf.dtype]
    assert torch.equal(fw._butterfly(y).view(bits), _butterfly_stack(y).view(bits))
    # and through fwht (the matmul part and the normalization are unchanged)
    for tr in (False, True):
        ref_y = _butterfly_stack(y)
        if m > 1:
            from llmquant.rotation.constructions import hadamard_order_matrix

            hm = hadamard_order_matrix(m).to(dtype=xf.dtype)
            ref_y = torch.matmul(ref_y.transpose(-1, -2), hm.T if tr else hm).transpose(-1, -2)
        ref = (ref_y.reshape(xf.shape) / (shape[-1] ** 0.5)).to(dtype)
        got = fw.fwht(x, transpose=tr)
        ib = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}[dtype]
        assert got.dtype == dtype and torch.equal(got.view(ib), ref.view(ib))


@pytest.mark.parametrize("shape", [(700, 1536), (1, 9, 600, 64), (3, 2000, 96), (30000, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_row_chunked_fwht_equals_one_piece(shape, dtype, monkeypatch):
    """Inputs over CHUNK_ELEMS entries run a chunk of rows at a time into one output: the same values."""
    import importlib

    fw = importlib.import_module("llmquant.rotation.fwht")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[-1])).to(dtype)
    assert x.numel() > fw.CHUNK_ELEMS
    ib = torch.int32 if dtype == torch.float32 else torch.int16
    for tr in (False, True):
        got = fw.fwht(x, transpose=tr)
        monkeypatch.setattr(fw, "CHUNK_ELEMS", 1 << 40)
        whole = fw.fwht(x, transpose=tr)
        monkeypatch.undo()
        assert got.shape == x.shape and torch.equal(got.view(ib), whole.view(ib))
