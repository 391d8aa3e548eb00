"""Packed-resident weights: the reference forward of LatticeLinear (Voronoi and box layouts) and ScalarLinear keeps
no dense decoded weight by default (``weight_cache = "none"``); ``"decoded"`` keeps one and gives identical outputs;
the vectorized float32 decode equals the float64 codec decode bit for bit; config key and CLI flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.config import ConfigError, config_hash, load_config
from llmquant.lattice.packing import unpack_codes
from llmquant.lattice.voronoi import VoronoiCodec
from llmquant.quant import linear as L
from llmquant.quant.linear import LatticeLinear, ScalarLinear, set_weight_cache

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"


def _voronoi(n=40, k=64, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    layer = LatticeLinear(k, n, q=14, k=2, bias=bias)
    layer.set_quantized(torch.randint(0, 14, (n, k // 8, 8), generator=g), torch.randint(0, 2, (n, k // 8), generator=g),
                        torch.rand(n, generator=g).half().float() + 0.1, torch.tensor([0.8, 1.3]),
                        bias=torch.randn(n, generator=g) if bias else None)
    return layer


def _box(n=24, k=32, seed=1):
    from llmquant.lattice.box import E8BoxCodec

    codec = E8BoxCodec(3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k // 8, 8, generator=g)
    layer = LatticeLinear(k, n, codec=codec)
    layer.set_words(codec.encode(x), torch.rand(n, generator=g) + 0.5)
    return layer


def _scalar(n=24, k=64, bits=4, group=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    layer = ScalarLinear(k, n, bits=bits, group_size=group, bias=True)
    ng = k // (group or k)
    layer.set_quantized(torch.randint(0, 2**bits, (n, k), generator=g), torch.rand(n, ng, generator=g).half().float(),
                        torch.randint(0, 2**bits, (n, ng), generator=g).float(), bias=torch.randn(n, generator=g))
    return layer


LAYERS = {"voronoi": _voronoi, "box": _box, "int4-g16": _scalar,
          "int8-row": lambda: _scalar(bits=8, group=0), "int4-row": lambda: _scalar(group=0)}


def test_vectorized_voronoi_decode_equals_the_float64_codec_decode():
    layer = _voronoi(n=33, k=128, bias=False)
    codes = unpack_codes(layer.codes).long()
    ref = VoronoiCodec("E8", 14).decode(codes).to(torch.float32)  # float64 arithmetic inside
    ref = (ref * layer.betas[layer.beta_idx.long()].unsqueeze(-1) * layer.row_scale[:, None, None]).reshape(33, 128)
    assert torch.equal(layer.decode_weight(), ref)
    assert torch.equal(layer.decode_rows(5, 9), ref[5:9])


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_holds_no_dense_weight_and_cache_mode_is_identical(name, dtype, monkeypatch):
    monkeypatch.setattr(L, "TILE_ELEMS", 256)  # several tiles per layer
    layer = LAYERS[name]()
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(7)).to(dtype)
    y_none = layer(x)
    assert layer._w_cache is None
    from llmquant.eval.memory import held_bytes

    assert held_bytes(layer)["attributes"] <= 8 * 8 * 4  # at most the 2G matrix of the lattice, no weight
    assert layer.weight_cache == "none"
    set_weight_cache(layer, "decoded")
    y_kept = layer(x)
    assert layer._w_cache is not None and layer._w_cache[1].dtype == dtype
    assert tuple(layer._w_cache[1].shape) == (layer.out_features, layer.in_features)
    assert torch.equal(y_none, y_kept)
    assert y_kept.dtype == dtype
    ref = x.float() @ layer.decode_weight().T + (0 if layer.bias is None else layer.bias)
    rel = float((y_kept.float() - ref).norm() / ref.norm())
    assert rel < (1e-2 if dtype == torch.bfloat16 else 1e-6)
    set_weight_cache(layer, "none")
    assert layer._w_cache is None


def test_kept_weight_is_invalidated_by_buffer_writes():
    layer = _voronoi()
    layer.weight_cache = "decoded"
    x = torch.randn(2, layer.in_features)
    y1 = layer(x)
    layer.row_scale.mul_(2.0)
    y2 = layer(x)
    assert torch.allclose(y2 - layer.bias, 2 * (y1 - layer.bias), rtol=1e-5, atol=1e-5)


def test_quantized_model_holds_no_decoded_weight_by_default():
    """A tiny rotated W4A4KV4 model after quantization and a forward: no tensor outside parameters/buffers in
    the default mode; the decoded mode keeps one weight per quantized linear and gives identical logits."""
    from llmquant.eval.memory import held_bytes

    from llmquant import api
    from llmquant.models.tiny import tiny_random_model

    cfg = load_config(TINY, ["model.spec=tiny-random-llama", "calibration.n_samples=4", "calibration.seq_len=32",
                             "calibration.batch_size=4", "model.backend=reference"])
    model = tiny_random_model("llama")
    calib = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    api.quantize(model, cfg, calib, progress=False, log=None)
    ids = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = model(input_ids=ids, use_cache=False).logits
    held = held_bytes(model)
    assert held["attributes"] < 4096  # only small constants (2G matrices), no decoded weight
    lin = [m for m in model.modules() if isinstance(m, (LatticeLinear, ScalarLinear))]
    assert lin and all(m._w_cache is None for m in lin)
    assert set_weight_cache(model, "decoded") == len(lin)
    with torch.no_grad():
        kept = model(input_ids=ids, use_cache=False).logits
    assert torch.equal(base, kept)
    dense = sum(m.in_features * m.out_features * 4 for m in lin)
    assert held_bytes(model)["attributes"] - held["attributes"] == dense


def test_weight_cache_config_key_and_cli_flag():
    assert load_config(TINY).model.weight_cache == "none"
    assert load_config(TINY, ["model.weight_cache=decoded"]).model.weight_cache == "decoded"
    with pytest.raises(ConfigError, match=r"model\.weight_cache: 'dense' is not one of none, decoded"):
        load_config(TINY, ["model.weight_cache=dense"])
    assert config_hash(load_config(TINY, ["model.weight_cache=decoded"])) == config_hash(load_config(TINY))
    with pytest.raises(ValueError, match="weight_cache"):
        set_weight_cache(_voronoi(), "dense")
    import argparse

    from llmquant.commands import eval as eval_cmd
    from llmquant.commands import generate, serve

    for mod in (eval_cmd, generate, serve):
        parser = argparse.ArgumentParser()
        mod.register(parser.add_subparsers())
        name = mod.__name__.rsplit(".", 1)[-1]
        extra = ["--prompt", "hi"] if name == "generate" else []
        args = parser.parse_args([name, "m", *extra, "--weight-cache", "decoded"])
        assert args.weight_cache == "decoded"
