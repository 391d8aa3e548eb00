"""Box activation encode kernel (kernels/box_encode.py) against its pure-PyTorch reference
``RowQuantizer("box", codec).encode_rows`` (words and scales compared exactly), and its W4A4 dispatch route."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _kernels_support import kernel_device
from torch import nn

from llmquant.lattice.box import BoxCodec, shipped_box_codec
from llmquant.quant.activations import RowQuantizer

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _reference(x: torch.Tensor, codec: BoxCodec) -> tuple[torch.Tensor, torch.Tensor]:
    return RowQuantizer("box", codec=codec).encode_rows(x)


def _check(x: torch.Tensor, codec: BoxCodec, dev: torch.device, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    from llmquant.kernels.box_encode import box_encode_rows

    words, scales = box_encode_rows(x.to(dev), codec, **kw)
    rw, rs = _reference(x.to(dev), codec)
    assert words.shape == rw.shape and words.dtype == torch.int32 and scales.shape == rs.shape
    assert torch.equal(scales.cpu(), rs.cpu())
    diff = (words.cpu() != rw.cpu()).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} words differ, first at {diff[0].tolist()}"
    return words, scales


def _rows(m: int, k: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Gaussian rows at random scales, some with outliers (up to 40 RMS), one zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * (0.01 + 10 * torch.rand(m, 1, generator=g))
    hot = torch.rand(m, k, generator=g) < 0.02
    x = torch.where(hot, x * 40, x)
    x[m // 2] = 0.0
    return x.to(dtype)


SHIPPED = [(3, "int"), (3, "d8int8")]


@pytest.mark.kernels
@pytest.mark.parametrize("b,variant", SHIPPED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shipped_w4a4_codecs_bit_identical(dev, b, variant, dtype):
    codec = shipped_box_codec(b, variant)
    words, scales = _check(_rows(6, 200, 1, dtype), codec, dev)  # K = 200: 25 vectors, masked block
    assert float(scales[3]) == 1.0  # the zero row
    if variant == "d8int8":
        assert (words < 0).any()  # j = 1 sets bit 31 (b = 3): two's complement words are compared too


@pytest.mark.kernels
@pytest.mark.parametrize("b,variant", [(3, "d8int8"), (3, "int"), (2, "int8")])
def test_fused_int8_limb_planes(dev, b, variant):
    """``box_encode_rows_int8``: the same words and scales as the reference, and the W4A4 activation limb planes equal
    to the words -> limbs conversion (1 limb: D8 2 β b=3 and Hamming b=2, by the bytewise path; 2 limbs: b=3 'int');
    the W4A4 GEMM fed those planes (``x_planes``) gives the integer result of the words."""
    from llmquant.kernels import box_w4a4 as W
    from llmquant.kernels.box_encode import box_encode_rows_int8

    codec = shipped_box_codec(b, variant)
    x = _rows(5, 136, 7, torch.bfloat16)  # 17 vectors: a masked block
    words, scales, planes = box_encode_rows_int8(x.to(dev), codec)
    rw, rs = _reference(x.to(dev), codec)
    assert torch.equal(words.cpu(), rw.cpu()) and torch.equal(scales.cpu(), rs.cpu())
    kx = W.codec_constants(codec, dev)
    t = W.int_coords_reference(rw.cpu(), codec.b, kx["ratios"], codec.code)
    assert planes.shape == (kx["limbs"], 5, 136) and torch.equal(planes.cpu(), W.split_limbs_reference(t, kx["limbs"]))
    assert int(t.abs().max()) > (90 if kx["limbs"] == 1 else 127)  # large coordinates: the byte arithmetic is tested
    ws = torch.ones(5, dtype=torch.float16, device=dev)
    i_words = W.box_w4a4_matmul(words, scales, codec, words, ws, codec, raw=True)
    i_planes = W.box_w4a4_matmul(words, scales, codec, words, ws, codec, raw=True, x_planes=planes)
    assert torch.equal(i_planes, i_words)
    with pytest.raises(ValueError, match="x_planes must be"):
        W.box_w4a4_matmul(words, scales, codec, words, ws, codec, raw=True, x_planes=planes[:, :4])


@pytest.mark.kernels
def test_quantizer_encode_rows_int8_memo(dev):
    """The quantizer-level fused encode: the reference's words and scales, planes of those words; a second call with
    the same input is a memo hit (the same tensors), a cleared quantizer memo re-encodes."""
    from llmquant.kernels import box_w4a4 as W
    from llmquant.kernels.box_encode import quantizer_encode_rows_int8

    codec = shipped_box_codec(3, "d8int8")
    act = RowQuantizer("box", codec=codec)
    x = _rows(4, 64, 3, torch.bfloat16).reshape(2, 2, 64).to(dev)
    words, scales, planes = quantizer_encode_rows_int8(act, x)
    rw, rs = _reference(x.cpu(), codec)
    assert torch.equal(words.cpu(), rw) and torch.equal(scales.cpu(), rs)
    kx = W.codec_constants(codec, dev)
    assert torch.equal(planes, W.box_int8_coords(words.reshape(-1, 8), codec.b, kx["rtab"], 1, kx["code_id"]))
    again = quantizer_encode_rows_int8(act, x)
    assert all(a is b for a, b in zip(again, (words, scales, planes)))
    assert act.encode_rows(x)[0] is words  # the quantizer's own memo holds the kernel's words
    act.clear_memo()
    fresh = quantizer_encode_rows_int8(act, x)
    assert fresh[2] is not planes and torch.equal(fresh[2], planes)


@pytest.mark.kernels
@pytest.mark.parametrize("b,code", [(1, "hamming"), (2, "hamming"), (1, "parity"), (2, "parity"), (3, "parity")])
def test_other_widths_and_codes(dev, b, code):
    codec = shipped_box_codec(b, "lattice") if code == "hamming" else BoxCodec(b, [0.35, 0.9], "parity")
    _check(_rows(5, 64, 10 + b, torch.float16), codec, dev)


@pytest.mark.kernels
def test_many_rows_and_vector_blocks_and_leading_dims(dev):
    codec = shipped_box_codec(3, "int")
    # 70 rows (two row blocks on the interpreter) x 257 vectors (two vector blocks), non-power-of-two K
    _check(_rows(70, 2056, 3), codec, dev)
    # leading dims and a non-contiguous input (a strided view of a wider tensor)
    x = _rows(6, 160, 4).reshape(2, 3, 160)
    words, scales = _check(x, codec, dev)
    assert words.shape == (2, 3, 20) and scales.shape == (2, 3)
    wide = _rows(4, 128, 5)
    _check(wide[:, :64], codec, dev)


@pytest.mark.kernels
@pytest.mark.parametrize("b,variant", SHIPPED)
def test_ties(dev, b, variant):
    """Exact ties: rounding at .5 (half to even) and equal errors between codewords (smallest |C| j + m)."""
    # entries ±1 and ±2 with RMS a power of two: y = x / s on the odd-integer / integer grid, so with β = 1 (or 1/2)
    # every t sits exactly between two levels of one parity and many codewords have equal errors
    g = torch.Generator().manual_seed(7)
    sign = torch.randint(0, 2, (8, 64), generator=g) * 2 - 1.0
    x = sign.clone()
    x[4:] *= 2.0
    x[2, :8] = 0.0
    tie_codecs = [BoxCodec(b, torch.arange(1, 17) * 0.5, "hamming"), BoxCodec(b, [0.5, 1.0], "parity")]
    for codec in tie_codecs:
        _check(x, codec, dev)
    # fp16 rounding of the scale at an exact midpoint: RMS of a constant row 1 + 2^-11 (between 1 and 1 + 2^-10)
    mid = torch.full((2, 64), 1.0 + 2.0**-11)
    mid[1] *= -3.0
    _, scales = _check(mid, shipped_box_codec(b, variant), dev)
    assert float(scales[0]) == 1.0  # ties to even
    # half-integers on the shipped codec: y / β_j rounded differently per β
    half = (torch.randint(-8, 9, (4, 64), generator=g) + 0.5).float()
    _check(half, shipped_box_codec(b, variant), dev)
    # given scales (s = 1): every t of the integer-ratio set exactly on its grid
    ones = torch.ones(x.shape[0], device=dev)
    from llmquant.kernels.box_encode import box_encode_rows

    for codec in tie_codecs:
        words, scales = box_encode_rows(x.to(dev), codec, scales=ones)
        assert torch.equal(words.cpu(), codec.encode(x.reshape(8, 8, 8)))
        assert scales.data_ptr() == ones.data_ptr()
        # half-integers at s = 1: with β = 1, (t - o_p) / 2 is exactly k + 1/2 for every other t (both parities)
        words = box_encode_rows(half.to(dev), codec, scales=ones[:4])[0]
        assert torch.equal(words.cpu(), codec.encode(half.reshape(4, 8, 8)))


@pytest.mark.kernels
def test_cuda_launch_layout_on_the_interpreter(dev):
    """The CUDA launch configuration (one row per program, 32-vector blocks split over programs, mean by
    multiplication with 1/K: equal to the division for K a power of two) under the interpreter too."""
    from llmquant.kernels import box_encode as E

    cfg = E.launch_config(2, 128, torch.device("cuda"))
    assert cfg["BLOCK_R"] == 1 and cfg["SPLIT"] == 4 and cfg["grid"] == (2, 4)
    assert E.launch_config(4096, 512, torch.device("cuda"))["SPLIT"] == 1
    x = _rows(2, 512, 8)
    codec = shipped_box_codec(3, "d8int8")
    cfg = {"num_warps": 1, "SPLIT": 2, "BLOCK_R": 1, "BLOCK_V": 32, "BLOCK_K": 256, "grid": (2, 2), "MEAN_MUL": True}
    _check(x, codec, dev, config=cfg)


def test_errors():
    from llmquant.kernels.box_encode import box_encode_rows, supported_reason

    assert supported_reason(shipped_box_codec(3, "int")) is None
    assert "gamma" in supported_reason(BoxCodec(3, code="hamming", gamma=1.5, betas=torch.arange(1, 17) * 0.1))
    with pytest.raises(ValueError, match="K % 8"):
        box_encode_rows(torch.zeros(2, 12), shipped_box_codec(3, "int"))
    with pytest.raises(ValueError, match="lattice box code"):
        box_encode_rows(torch.zeros(2, 16), BoxCodec(3, torch.arange(1, 17) * 0.1, "hamming", gamma=1.5))
    with pytest.raises(TypeError, match="fp16, bf16 or fp32"):
        box_encode_rows(torch.zeros(2, 16, dtype=torch.float64), shipped_box_codec(3, "int"))


@pytest.mark.kernels
def test_w4a4_dispatch_encodes_a_shared_input_once_with_the_kernel(dev, monkeypatch):
    from llmquant.kernels import box_encode, dispatch

    from llmquant.config import load_config
    from llmquant.config.schema import DynamicQuantConfig
    from llmquant.quant.activations import row_quantizer_from_config
    from llmquant.quant.weights import quantize_linear

    wcfg = dataclasses.replace(load_config(TINY).weights, code="box", box_bits=3, box_variant="int", algorithm="rtn")
    act = row_quantizer_from_config(DynamicQuantConfig(method="lattice", code="box", box_variant="int"))
    layers = []
    for seed in (0, 1):  # two linears sharing one activation quantizer and one input (q/k/v style)
        g = torch.Generator().manual_seed(seed)
        lin = nn.Linear(64, 24, bias=True)
        lin.weight.data = torch.randn(24, 64, generator=g)
        lin.bias.data = torch.randn(24, generator=g)
        layers.append(quantize_linear(lin, None, wcfg, act_q=act)[0].to(dev))
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2)).to(dev)
    calls = []
    real = box_encode.box_encode_rows_int8  # the W4A4 dispatch's encode: words, scales and the int8 limb planes
    monkeypatch.setattr(box_encode, "box_encode_rows_int8", lambda *a, **k: calls.append(a) or real(*a, **k))
    with torch.no_grad():
        refs = [layer(x) for layer in layers]
        act.clear_memo()
        outs = []
        for layer in layers:
            layer.backend = "triton"
            outs.append(dispatch.try_forward(layer, x))
    assert len(calls) == 1  # encoded once by the kernel, the second linear read the memo
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
