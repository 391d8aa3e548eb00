"""Compiled CPU kernels of the box code (llmquant/lattice/native.py, csrc/box_cpu.c) against the PyTorch code.

Encode, decode and the fused row quantizer must be bit-identical to the PyTorch paths they replace (they are
used wherever they can run); the decode-GEMV is a kernel: fp32-rounding agreement with ``F.linear`` on the
decoded weight."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmquant.lattice import box_encode, box_lut, native
from llmquant.lattice.box import BoxCodec, shipped_box_codec
from llmquant.quant.activations import RowQuantizer

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels cannot be built")

SETTINGS = [(3, "int"), (3, "table"), (3, "d8int8"), (3, "lattice"), (3, "best"), (2, "lattice"), (2, "table"),
            (1, "lattice"), (1, "table")]


def _codec(b, variant):
    return shipped_box_codec(b, variant)


def _hard_vectors(codec: BoxCodec, n: int, seed: int = 0) -> torch.Tensor:
    """Gaussian 8-vectors plus ties (points on level midpoints of several β), zeros, huge and tiny entries."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 8, generator=g) * torch.rand(n, 1, generator=g) * 3
    k = codec.betas.numel()
    lv = codec.levels
    mids = 0.5 * (lv[1:] + lv[:-1])
    t = n // 5
    pick = torch.randint(0, mids.numel(), (t, 8), generator=g)
    beta = codec.betas[torch.randint(0, k, (t, 1), generator=g)]
    y[:t] = mids[pick] * beta  # exactly representable ties up to the fp32 product
    y[t:t + 50] = 0.0
    y[t + 50:t + 100] = 1e4 * torch.randn(50, 8, generator=g)
    y[t + 100:t + 150] = 1e-30 * torch.randn(50, 8, generator=g)
    y[t + 150:t + 200, :4] = -y[t + 150:t + 200, 4:]
    return y


@pytest.mark.parametrize("b,variant", SETTINGS)
def test_encode_bit_identical(b, variant):
    codec = _codec(b, variant)
    y = _hard_vectors(codec, 20000, seed=b)
    with native.disabled():
        ref = box_encode.nearest(codec, y)
    out = native.encode(codec, y)
    for r, o in zip(ref, out):
        assert r is not None and o is not None
        assert torch.equal(r.view(torch.int32) if r.is_floating_point() else r,
                           o.view(torch.int32) if o.is_floating_point() else o)
    # and through the dispatching entry point
    assert torch.equal(box_encode.nearest(codec, y)[4], ref[4])


@pytest.mark.parametrize("b,variant", SETTINGS)
def test_decode_bit_identical_unpacked_and_packed(b, variant):
    codec = _codec(b, variant)
    words = codec.encode(_hard_vectors(codec, 60 * 24, seed=10 + b)).view(60, 24)
    scales = torch.rand(60).half().float()
    with native.disabled():
        ref = box_lut.decode_flat(codec, words, torch.float32, scales=scales)
        ref_plain = box_lut.decode_flat(codec, words, torch.float32)
    out = torch.empty_like(ref)
    native.decode_rows(codec, words, 24, out, scales)
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
    native.decode_rows(codec, words, 24, out)
    assert torch.equal(out.view(torch.int32), ref_plain.view(torch.int32))
    packed = codec.pack(words)["words"]  # the row stream: word v at byte (b + 1) v
    native.decode_rows(codec, packed, 24, out, scales, packed=True)
    assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
    # the dispatching entry point
    assert torch.equal(box_lut.decode_flat(codec, words, torch.float32, scales=scales), ref)


@pytest.mark.parametrize("variant", ["int", "table", "d8int8"])
@pytest.mark.parametrize("shape,dtype,contig", [((1, 1, 576), torch.float32, True), ((3, 1536), torch.float32, True),
                                                ((2, 7, 64), torch.bfloat16, True), ((130, 576), torch.float16, True),
                                                ((1, 3, 700, 64), torch.float32, False),
                                                ((2500, 64), torch.float32, True)])
def test_row_quantizer_bit_identical(variant, shape, dtype, contig):
    codec = shipped_box_codec(3, variant)
    q = RowQuantizer("box", codec=codec)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 5)
    if not contig:  # keys as attention hands them over: [B, H, T, D] viewed from [B, T, H, D]
        x = x.reshape(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2)
    x = x.to(dtype)
    x[..., :3] = 0
    x[(0,) * (x.dim() - 1)] = 0  # a zero row: scale 1
    with native.disabled():
        r1 = q.quantize_rows(x)
        q.clear_memo()
        w1, s1 = q.encode_rows(x)
        q.clear_memo()
    r2 = q.quantize_rows(x)
    q.clear_memo()
    w2, s2 = q.encode_rows(x)
    q.clear_memo()
    assert r2.dtype == r1.dtype and r2.shape == r1.shape
    assert torch.equal(r1.float().view(torch.int32), r2.float().view(torch.int32))
    assert torch.equal(w1, w2) and w1.shape == w2.shape
    assert torch.equal(s1, s2) and s1.shape == s2.shape


def test_row_scale_uses_torch_sqrt():
    """A row whose mean square (1.0225869...) torch's sqrt rounds 1 ulp below the correctly rounded root, and
    the fp16 scale flips with it: the compiled path must take torch's root (found on real SmolLM2 keys)."""
    c = float(np.float32(2.8601916))
    x = torch.zeros(1, 8)
    x[0, 0] = c
    q = RowQuantizer("box", codec=shipped_box_codec(3, "int"))
    with native.disabled():
        w1, s1 = q.encode_rows(x)
        q.clear_memo()
    w2, s2 = q.encode_rows(x)
    assert torch.equal(s1, s2) and torch.equal(w1, w2)


def test_non_finite_rows_raise_the_reference_error():
    q = RowQuantizer("box", codec=shipped_box_codec(3, "int"))
    x = torch.randn(4, 64)
    x[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q.quantize_rows(x)


@pytest.mark.parametrize("b,variant", [(3, "int"), (3, "table"), (2, "lattice"), (1, "table")])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_gemv_matches_linear_on_decoded_weight(b, variant, m):
    codec = _codec(b, variant)
    n, k = 40, 8 * 37
    words = codec.encode(_hard_vectors(codec, n * k // 8, seed=3)).view(n, k // 8)
    scales = torch.rand(n).half().float() + 0.1
    bias = torch.randn(n)
    w = codec.decode_rows(words, scales)
    x = torch.randn(m, k)
    ref = F.linear(x, w, bias)
    packed = codec.pack(words)["words"]
    y = native.gemv(codec, packed, k // 8, scales, x, bias=bias)
    tol = 1e-5 * (x.abs() @ w.abs().T + bias.abs())
    assert (y - ref).abs().le(tol).all()
    y0 = native.gemv(codec, words, k // 8, scales, x, packed=False)
    assert (y0 - F.linear(x, w)).abs().le(tol).all()


def _box_linear(act: bool):
    from llmquant.quant.linear import LatticeLinear

    codec = shipped_box_codec(3, "int")
    act_q = RowQuantizer("box", codec=shipped_box_codec(3, "int")) if act else None
    lin = LatticeLinear(128, 48, codec=codec, bias=True, act_q=act_q)
    g = torch.Generator().manual_seed(5)
    lin.set_words(codec.encode(torch.randn(48, 16, 8, generator=g)), torch.rand(48, generator=g) + 0.5,
                  torch.randn(48, generator=g))
    return lin


@pytest.mark.parametrize("act", [False, True])
def test_lattice_linear_native_backend(act):
    lin = _box_linear(act)
    x = torch.randn(1, 2, 128)
    lin.backend = "reference"
    ref = lin(x)
    if act:
        lin.act_q.clear_memo()
    lin.backend = "native"
    y = lin(x)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    # auto on CPU takes the same path; more rows than NATIVE_MAX_ROWS, or the reference backend, keep F.linear
    lin.backend = "auto"
    assert torch.equal(lin(x), y)
    from llmquant.quant.linear import NATIVE_MAX_ROWS

    xl = torch.randn(NATIVE_MAX_ROWS + 1, 128)
    lin.backend = "reference"
    a = lin(xl)
    lin.backend = "native"
    assert torch.equal(lin(xl), a)


def test_kv_rows_identical():
    from llmquant.quant.kv_cache import PackedRows

    q = RowQuantizer("box", codec=shipped_box_codec(3, "int"))
    x = torch.randn(1, 700, 3, 64).transpose(1, 2)
    with native.disabled():
        p1 = PackedRows(q)
        p1.append(x)
        d1 = p1.decoded(torch.float32)
    p2 = PackedRows(q)
    p2.append(x)
    d2 = p2.decoded(torch.float32)
    assert torch.equal(d1.view(torch.int32), d2.view(torch.int32))


def test_env_switch_and_cache_dir(tmp_path):
    """``LLMQUANT_NATIVE=0`` disables the kernels; the library is built once into ``LLMQUANT_CACHE_DIR``."""
    code = "from llmquant.lattice import native; print(native.available())"
    env = {**os.environ, "LLMQUANT_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "LLMQUANT_NATIVE": "0"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
    assert not (tmp_path / "native").exists()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    built = list((tmp_path / "native").glob("*/box_cpu.so"))
    assert len(built) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 576), (3, 100), (8, 64)])
def test_half_gemv_matches_upcast_linear(dtype, m, k):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(70, k, generator=g).to(dtype)
    x = torch.randn(m, k, generator=g)
    bias = torch.randn(70, generator=g)
    ref = F.linear(x, w.float(), bias)
    y = native.half_gemv(w, x, bias)
    tol = 1e-5 * (x.abs() @ w.float().abs().T + bias.abs())
    assert (y - ref).abs().le(tol).all()


def test_stored_lm_head_uses_half_gemv_only_when_allowed():
    from llmquant.models.embed_dtype import set_embed_dtype
    from llmquant.models.tiny import tiny_random_model
    from llmquant.quant.linear import set_backend

    model = tiny_random_model("llama", seed=0).eval()
    set_embed_dtype(model, torch.bfloat16)
    head = model.lm_head
    x = torch.randn(1, 1, head.in_features)
    set_backend(model, "reference")
    ref = head(x)
    set_backend(model, "native")
    y = head(x)
    assert y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    xl = torch.randn(3, 4, head.in_features)  # 12 rows: the blocked upcast path, bit for bit
    set_backend(model, "reference")
    a = head(xl)
    set_backend(model, "native")
    assert torch.equal(head(xl), a)
