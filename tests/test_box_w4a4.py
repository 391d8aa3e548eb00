"""Box-code W4A4: activations on the box code (config, RowQuantizer, counted bits) and the int8 W4A4 kernel
(kernels/box_w4a4.py) against its pure-PyTorch reference; dispatch and a tiny model end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from _kernels_support import kernel_device
from torch import nn

from llmquant.config import dynamic_bits, load_config
from llmquant.config.bits import box_weight_bits
from llmquant.config.schema import DynamicQuantConfig
from llmquant.lattice.box import BoxCodec, integer_beta_ratios, load_box_setting
from llmquant.quant.activations import RowQuantizer, row_quantizer_from_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
BOX_W4A4 = ["model.spec=tiny-random-llama", "kv.method=none", "calibration.n_samples=2", "calibration.seq_len=16",
            "calibration.batch_size=2", "weights.algorithm=rtn", "weights.code=box", "weights.box_bits=3",
            "weights.box_variant=int", "activations.code=box", "activations.box_bits=3",
            "activations.box_variant=int"]


def _codec(b: int, variant: str) -> BoxCodec:
    if variant == "parity":  # a D8 code with two integer-ratio β's (|t| <= 8 * 15 fits int8 at b = 3)
        return BoxCodec(b, [0.03 * 5, 0.03 * 8], "parity")
    if variant == "d8int8":
        s = load_box_setting(b, variant)
        return BoxCodec(b, s["betas"], s["code"], s["gamma"])
    s = load_box_setting(b, variant)
    return BoxCodec(b, s["betas"], s["code"], s["gamma"])


def _words(codec: BoxCodec, rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return codec.encode(torch.randn(rows, k // 8, 8, generator=g))


# ----------------------------------------------------------------------------------------------- config, quantizer


def test_config_default_keeps_voronoi_and_box_bits_are_the_stored_ones():
    cfg = load_config(TINY)
    assert cfg.activations.code == "voronoi"
    assert isinstance(row_quantizer_from_config(cfg.activations), RowQuantizer)
    assert row_quantizer_from_config(cfg.activations).kind == "lattice"
    box = load_config(TINY, ["activations.code=box", "activations.box_bits=2"]).activations
    q = row_quantizer_from_config(box)
    assert q.kind == "box" and q.codec.b == 2
    # 576 entries: 72 words of 24 bits = 54 int32 + 16-bit scale
    assert dynamic_bits(box, 576) == (54 * 32 + 16) / 576 == box_weight_bits(2, 576)
    assert dynamic_bits(dataclasses.replace(box, box_bits=3), 64) == (8 * 32 + 16) / 64
    with pytest.raises(ValueError, match="code"):
        row_quantizer_from_config(DynamicQuantConfig(method="lattice", code="boxx"))
    with pytest.raises(ValueError, match="box_bits"):
        row_quantizer_from_config(DynamicQuantConfig(method="lattice", code="box", box_bits=4))


def test_box_row_quantizer_matches_its_words():
    q = RowQuantizer("box", codec=_codec(3, "int"))
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 3
    x[0, 1] = 0.0  # a zero row gets scale 1 and decodes to the code point nearest 0
    words, s = q.encode_rows(x)
    assert words.shape == (2, 3, 8) and words.dtype == torch.int32 and s.shape == (2, 3)
    assert torch.equal(s, s.half().float()) and float(s[0, 1]) == 1.0
    x_hat = q(x)
    assert torch.equal(x_hat, q.codec.decode(words).reshape(2, 3, 64) * s[..., None])
    rel = float((x_hat - x)[1].pow(2).mean() / x[1].pow(2).mean())
    assert rel < 0.012  # 4 bits/entry: the b=3 box code's Gaussian MSE is ~0.0077
    assert q.encode_rows(x)[0] is words  # memoized for the linears sharing this input
    with pytest.raises(ValueError, match="codec"):
        RowQuantizer("box")


def test_shipped_int_sets_are_integer_ratio_and_as_good_as_the_lattice_sets():
    for b in (1, 2, 3):
        s = load_box_setting(b, "int")
        c, r = integer_beta_ratios(s["betas"])
        assert r == s["ratios"] and abs(c - s["c"]) <= 1e-6 * s["c"]
        assert s["mse"] <= 1.005 * load_box_setting(b, "lattice")["mse"]  # the search's own measurement
    assert integer_beta_ratios(load_box_setting(3, "lattice")["betas"]) is None
    d8 = load_box_setting(3, "d8int8")  # the one-int8-MMA W4A4 set: D8 with 2 integer β, 8 % worse than √2E8
    assert d8["code"] == "parity" and integer_beta_ratios(d8["betas"])[1] == d8["ratios"] and max(d8["ratios"]) <= 8
    assert load_box_setting(3, "lattice")["mse"] < d8["mse"] < 1.1 * load_box_setting(3, "lattice")["mse"]


# ----------------------------------------------------------------------------------------------- kernel vs reference


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


@pytest.mark.kernels
@pytest.mark.parametrize("xv,wv", [((3, "int"), (3, "int")), ((2, "int8"), (3, "int")), ((3, "int"), (2, "int8")),
                                   ((2, "int8"), (2, "int8")), ((3, "d8int8"), (3, "d8int8")),
                                   ((3, "int"), (3, "parity"))])
def test_kernel_matches_reference(dev, xv, wv):
    from llmquant.kernels import box_w4a4 as K

    cx, cw = _codec(*xv), _codec(*wv)
    m, n, k = 5, 40, 72  # K not a multiple of the tile: masked tail
    xw, ww = _words(cx, m, k, 1).to(dev), _words(cw, n, k, 2).to(dev)
    g = torch.Generator().manual_seed(3)
    xs = (torch.rand(m, generator=g) + 0.5).half().float().to(dev)
    ws = (torch.rand(n, generator=g) + 0.5).half().to(dev)
    bias = torch.randn(n, generator=g).to(dev)
    kx = K.codec_constants(cx, dev)
    planes = K.box_int8_coords(xw, cx.b, kx["rtab"], kx["limbs"], kx["code_id"])
    assert planes.shape == (kx["limbs"], m, k)
    t_ref = K.int_coords_reference(xw.cpu(), cx.b, kx["ratios"], cx.code)
    assert torch.equal(planes.cpu(), K.split_limbs_reference(t_ref, kx["limbs"]))
    i_ker = K.box_w4a4_matmul(xw, xs, cx, ww, ws, cw, raw=True)
    i_ref = K.box_w4a4_reference(xw, xs, cx, ww, ws, cw, raw=True)
    assert i_ker.dtype == torch.int64 and torch.equal(i_ker, i_ref)  # the integer part exactly
    assert int(i_ref.abs().max()) > 127 * 16  # large enough that a wrong limb weight would show
    # the prefill schedule: weight decoded once into int8 planes, then the pure int8 GEMM
    planes_cfg = dict(K.INTERPRETER_CONFIG, W_PLANES=True)
    assert torch.equal(K.box_w4a4_matmul(xw, xs, cx, ww, ws, cw, raw=True, config=planes_cfg), i_ref)
    y = K.box_w4a4_matmul(xw, xs, cx, ww, ws, cw, bias=bias)
    y_ref = K.box_w4a4_reference(xw, xs, cx, ww, ws, cw, bias=bias)
    torch.testing.assert_close(y, y_ref, rtol=2e-7, atol=1e-6 * float(y_ref.abs().max()))
    # and the reference is the decoded codes' matmul up to fp32 rounding of β_j = fl(c r_j)
    dec = cx.decode_rows(xw.cpu(), xs.cpu()) @ cw.decode_rows(ww.cpu(), ws.cpu()).T + bias.cpu()
    torch.testing.assert_close(y_ref.cpu(), dec, rtol=1e-5, atol=1e-5 * float(dec.abs().max()))


def test_integer_coords_match_the_codec_decode():
    from llmquant.kernels.box_w4a4 import int_coords_reference

    for b, v in ((1, "int"), (2, "int8"), (3, "int"), (3, "parity"), (2, "parity")):
        codec = _codec(b, v)
        c, r = integer_beta_ratios(codec.betas)
        w = _words(codec, 6, 64, b)
        t = int_coords_reference(w, b, r, codec.code)
        torch.testing.assert_close((c / 2) * t.double(), codec.decode(w).reshape(6, 64).double(), rtol=2e-6, atol=0)


# ----------------------------------------------------------------------------------------------- dispatch, model


def _box_layer(act_variant: str = "int", w_variant: str = "int"):
    from llmquant.quant.weights import quantize_linear

    wcfg = dataclasses.replace(load_config(TINY).weights, code="box", box_bits=3, box_variant=w_variant,
                               algorithm="rtn")
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 24, bias=True)
    lin.weight.data = torch.randn(24, 64, generator=g)
    lin.bias.data = torch.randn(24, generator=g)
    act = row_quantizer_from_config(DynamicQuantConfig(method="lattice", code="box", box_variant=act_variant))
    layer, _ = quantize_linear(lin, None, wcfg, act_q=act)
    return layer


@pytest.mark.kernels
def test_dispatch_runs_box_w4a4_and_falls_back_with_reasons(dev):
    from llmquant.kernels import dispatch

    layer = _box_layer().to(dev)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad():
        ref = layer(x)
        layer.backend = "triton"
        assert dispatch.unsupported_reason(layer, x) is None
        out = dispatch.try_forward(layer, x)
    assert out is not None and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    for variant, what in (("lattice", "activation"),):
        bad = _box_layer(act_variant=variant)
        bad.backend = "triton"
        assert what in dispatch.unsupported_reason(bad, x.cpu()) and "integer ratios" in \
            dispatch.unsupported_reason(bad, x.cpu())
    d8 = _box_layer("d8int8", "d8int8").to(dev)  # D8 weights and activations: one int8 MMA per tile
    with torch.no_grad():
        ref = d8(x)
        d8.backend = "triton"
        assert dispatch.unsupported_reason(d8, x) is None
        torch.testing.assert_close(dispatch.try_forward(d8, x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    scalar = _box_layer()
    scalar.act_q = RowQuantizer("scalar", bits=4)
    scalar.backend = "triton"
    assert "activation quantizer" in dispatch.unsupported_reason(scalar, x.cpu())


@pytest.mark.kernels
def test_tiny_model_box_w4a4_triton_equals_reference(dev, monkeypatch):
    from llmquant.kernels import dispatch

    from llmquant import api
    from llmquant.quant.linear import LatticeLinear, set_backend

    cfg = load_config(TINY, BOX_W4A4)
    model, tok = api.load_fp(cfg.model.spec, device="cpu", seed=cfg.model.seed)
    report = api.quantize(model, cfg, tokenizer=tok, progress=False, log=None)
    k_min = min(m.in_features for m in model.modules() if isinstance(m, nn.Linear) and m.in_features % 8 == 0)
    assert 4.0 < report["bits"]["activations"] <= 4.0 + 16 / k_min  # 32-bit words per 8 entries + fp16 scale
    model = model.to(dev).eval()
    ids = torch.tensor([[5, 17, 42, 3, 88, 9, 31, 2]], device=dev)
    lin = [m for m in model.modules() if isinstance(m, LatticeLinear)]
    assert lin and all(m.act_q is not None and m.act_q.kind == "box" for m in lin)
    with torch.no_grad():
        set_backend(model, "reference")
        ref = model(ids).logits
        set_backend(model, "triton")
        calls = []
        real = dispatch._run
        monkeypatch.setattr(dispatch, "_run", lambda layer, x: calls.append(layer) or real(layer, x))
        out = model(ids).logits
    assert len(calls) == len(lin)  # every linear went through the box W4A4 kernel
    # fp32 kernel vs fp32 reference: β_j = fl(c r_j) vs the integer form differ by fp32 rounding (measured 2e-7
    # relative on this model); a later layer's activation encoder could turn such an ulp into a lattice step
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.kernels
def test_sass_decode_tile_is_decode_cheap():
    """sm_90 SASS of the decode tile (2x2 limbs, b=3 'int' both sides), compiled without a GPU: no shuffles, no
    spills, and a main loop of ~12 instructions per weight (the old E8 W4A4 GEMM: ~400)."""
    pytest.importorskip("triton")
    from llmquant.kernels.sass import kernel_specs, sass_tools_available, static_cost

    reason = sass_tools_available()
    if reason is not None:
        pytest.skip(f"static SASS analysis unavailable: {reason}")
    spec = next(s for s in kernel_specs() if s["label"].startswith("box-W4A4") and "2x2" in s["label"]
                and "decode" in s["label"])
    from llmquant.kernels.box_w4a4 import _box_w4a4_kernel

    row = static_cost(_box_w4a4_kernel, spec["signature"], spec["constexprs"], spec["weights_per_iter"],
                      num_warps=spec["num_warps"], divisible_by_16=spec["divisible_by_16"])
    assert row["region"] == "loop" and row["shuffles"] == 0 and row["spills"] == 0
    assert 2 < row["instructions_per_weight"] < 20
    assert row["top_opcodes"].get("IMMA", 0) > 0  # the int8 tensor-core MMA
