"""Issue 9: a deployable lattice format, stored bits = counted bits.

``results.json``'s ``bits.weights`` equals the bits read from ``model.safetensors`` (every tensor of the
quantized linears), for the Voronoi code (now honest: nibble codes + uint8 β index + fp32 row scale) and the
box code; box checkpoints round-trip; ``LatticeLinear``'s box decode is ``codec.decode_rows`` bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from llmquant import api
from llmquant.config import ConfigError, config_hash, load_config, weight_bits
from llmquant.lattice.box import BoxCodec, load_box_setting
from llmquant.quant.linear import LatticeLinear
from llmquant.quant.stored_bits import checkpoint_weight_bits, quantized_prefixes, safetensors_sizes
from llmquant.quant.weights import empty_like_spec, module_spec, quantize_linear, weight_codec

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
BOX = ["weights.code=box", "weights.box_bits=2", "weights.box_variant=table"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext-2-raw").mkdir()
    text = (data_dir / "wikitext-2-raw" / "wiki.train.raw").read_text(encoding="utf-8")[:40_000]
    (root / "wikitext-2-raw" / "wiki.train.raw").write_text(text, encoding="utf-8")
    return root


def _expected_bits(specs: dict, code: str) -> float:
    """The stored bits written out by hand from the layouts (bias correction is on in the tiny config)."""
    total = n_w = 0
    for layer in specs.values():
        for s in layer.values():
            n, k = s["out_features"], s["in_features"]
            if code == "voronoi":  # int32 nibble codes + uint8 β index per 8-vector, fp32 row scale, fp32 betas
                total += n * (k // 8) * (32 + 8) + 32 * n + 32 * s["k"]
            else:  # int32 stream of (8b+8)-bit words per row, fp16 row scale
                b = s["codec"]["b"]
                total += n * 32 * -(-(8 * b + 8) * (k // 8) // 32) + 16 * n
            total += 32 * n  # the bias added by bias correction (tiny-llama has none of its own)
            n_w += n * k
    return total / n_w


@pytest.mark.parametrize("code", ["voronoi", "box"])
def test_results_bits_are_the_stored_bits_and_box_round_trips(tmp_path, small_data, code):
    cfg = load_config(TINY, [f"calibration.data_dir={small_data}", "calibration.n_samples=4",
                             *(BOX if code == "box" else [])])
    model, _, _, out = api.quantize_to_checkpoint(cfg, tmp_path / "ckpt", progress=False, log=None)
    results = json.loads((out / "results.json").read_text())
    stored = checkpoint_weight_bits(out, detail=True)
    assert results["bits"]["weights"] == stored["weights"]  # exactly: same tensors, same arithmetic
    assert stored["modules"] == 7 * model.config.num_hidden_layers
    meta = json.loads((out / "llmquant_config.json").read_text())
    assert stored["weights"] == pytest.approx(_expected_bits(meta["quantized"], code), rel=1e-12)
    if code == "box":  # 3 bits per weight + fp16 scale + fp32 bias per row: the config formula is exact
        k = {s["in_features"] for layer in meta["quantized"].values() for s in layer.values()}
        assert len(k) >= 1 and 3.0 < stored["weights"] < 3.0 + 48 / min(k) + 1e-9
        shapes = [(s["out_features"], s["in_features"]) for layer in meta["quantized"].values() for s in layer.values()]
        planned = sum(n * kk * weight_bits(cfg.weights, kk) for n, kk in shapes) / sum(n * kk for n, kk in shapes)
        assert stored["weights"] == pytest.approx(planned, rel=1e-12)
        q = model.model.layers[0].self_attn.q_proj
        assert isinstance(q, LatticeLinear) and q.code == "box" and q.row_scale.dtype == torch.float16
        assert set(dict(q.named_buffers(recurse=False))) == {"words", "row_scale", "bias"}
        ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
        loaded, _ = api.load(out, device="cpu", backend="reference")
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, model(ids).logits)
        lq = loaded.model.layers[0].self_attn.q_proj
        assert lq.codec.to_dict() == q.codec.to_dict()
    else:
        assert stored["weights"] > 5.0  # nibble (4) + uint8 β index per 8 (1) + scales: not 3.93 + 16/K


def test_stored_bits_find_every_quantized_tensor(tmp_path):
    from safetensors.torch import save_model

    codec = weight_codec(load_config(TINY, BOX).weights)
    mod = nn.Module()
    mod.a = LatticeLinear(64, 16, codec=codec, bias=True)
    mod.b = LatticeLinear(64, 16, q=14, k=2)
    mod.c = nn.Linear(8, 8)
    save_model(mod, str(tmp_path / "m.safetensors"))
    sizes = safetensors_sizes(tmp_path / "m.safetensors")
    assert sizes == {n: t.numel() * t.element_size() for n, t in mod.state_dict().items()}
    assert quantized_prefixes(sizes) == ["a", "b"]


@pytest.mark.parametrize(("b", "variant"), [(1, "table"), (2, "lattice"), (3, "best"), (3, "table"),
                                          (2, "beta_tables"), (3, "beta_tables")])
def test_lattice_linear_box_decode_is_codec_decode_rows(b, variant):
    cfg = load_config(TINY, ["weights.code=box", f"weights.box_bits={b}", f"weights.box_variant={variant}",
                             "weights.algorithm=rtn"])
    g = torch.Generator().manual_seed(b)
    lin = nn.Linear(48, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(24, 48, generator=g) * 0.02)
    layer, _ = quantize_linear(lin, None, cfg.weights)
    codec = layer.codec
    st = load_box_setting(b, variant)
    assert codec.code == st["code"] and codec.b == b
    words = layer.unpacked_words()
    assert torch.equal(layer.dequantized_weight(), codec.decode_rows(words, layer.row_scale))
    # the words are the codec's encoding of W / s (fp16 s), rows packed separately
    s = layer.row_scale.float()
    assert torch.equal(words, codec.encode((lin.weight.detach() / s[:, None]).reshape(24, 6, 8)))
    assert torch.equal(layer.words, codec.pack(words)["words"])
    assert layer.words.shape == (24, codec.packed_int32_per_row(6))
    # planned bits (config formula) = the codec's stored count
    assert weight_bits(cfg.weights, 48) == codec.stored_bits_per_entry(48)
    # the spec rebuilds the module
    again = empty_like_spec(json.loads(json.dumps(module_spec(layer))))
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.dequantized_weight(), layer.dequantized_weight())


def test_ldlq_box_with_bias_correction_beats_rtn_on_its_objective():
    from llmquant.quant.hessian import relative_error_from_hessian

    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(1024, 64, generator=g) @ torch.randn(64, 64, generator=g) * 0.3 + 0.5
    h = x.T @ x / x.shape[0]
    cfg = load_config(TINY, BOX)
    gq, info = quantize_linear(lin, h, cfg.weights, mean=x.mean(0))
    assert info["bias_correction"] and gq.bias is not None and gq.bias.dtype == torch.float32
    rtn, _ = quantize_linear(lin, h, load_config(TINY, [*BOX, "weights.algorithm=rtn"]).weights)
    w = lin.weight.detach()
    assert info["rel_err"] < relative_error_from_hessian(w, rtn.dequantized_weight(), h)


def test_box_config_validation_and_voronoi_hash_unchanged():
    cfg = load_config(TINY, BOX)
    assert cfg.weights.code == "box"
    for bad in (["weights.code=boxx"], ["weights.code=box", "weights.box_bits=4"],
                ["weights.code=box", "weights.box_variant=nope"], ["weights.box_bitz=2"]):
        with pytest.raises(ConfigError):
            load_config(TINY, bad)
    # the box keys are left out of the hash of Voronoi configs (resume state / checkpoints made before them)
    import hashlib

    from llmquant.config import config_to_dict

    plain = load_config(TINY)
    d = config_to_dict(plain)
    for k in ("eval", "name", "method", "guard"):
        d.pop(k)
    for k in ("backend", "offload", "weight_cache"):
        d["model"].pop(k)
    d["model"].pop("embed_dtype")  # null: as before model.embed_dtype existed
    for section in ("weights", "activations", "kv"):  # Voronoi sections: as before box codes existed
        for k in ("code", "box_bits", "box_variant"):
            d[section].pop(k)
    assert config_hash(plain) == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(cfg) != config_hash(plain)


def test_dispatch_falls_back_for_box_layers():
    from llmquant.kernels.dispatch import unsupported_reason

    # b = 2 has no kernel (the box W4A16 kernel reads b = 3 words of the lattice variant only)
    layer = LatticeLinear(64, 16, codec=BoxCodec(2), backend="triton")
    assert "box code b=2" in unsupported_reason(layer, torch.zeros(2, 64))
    assert torch.equal(layer(torch.ones(2, 64)), layer._reference(torch.ones(2, 64)))


def test_box_padding_bits_are_checked():
    from llmquant.quant.checkpoint import _index_problem

    layer = LatticeLinear(24, 4, codec=BoxCodec(2, code="hamming"))  # 3 words of 24 bits: 72 of 96 bits used
    assert layer.words.shape == (4, 3) and _index_problem(layer) is None
    layer.words[1, -1] = 1 << 30
    assert "padding" in _index_problem(layer)


def test_weight_betas_follow_choose_and_shipped_configs_keep_their_betas():
    from llmquant.lattice.beta_sets import load_beta_set
    from llmquant.quant.weights import weight_betas

    configs = sorted(TINY.parent.glob("*.yaml"))
    seen = 0
    for path in configs:
        w = load_config(path).weights
        if w.method == "lattice" and w.code == "voronoi":
            # what the runs behind the published tables loaded (the first-fit set) is what they load now
            assert torch.equal(weight_betas(w), load_beta_set(w.lattice, w.q, w.k)), path.name
            seen += 1
    assert seen >= 5
    w = load_config(TINY, ["weights.k=4"]).weights
    assert w.choose == "min_error"
    assert torch.equal(weight_betas(w), load_beta_set("E8", 14, 4, choose="min_error"))
    assert not torch.equal(weight_betas(w), load_beta_set("E8", 14, 4))


def test_report_labels_lattice_runs_by_their_bits():
    from llmquant.eval.report import setting_from_config

    cfg = {"weights": {"method": "lattice", "bits": 4, "q": 8}, "activations": {"method": "none"},
           "kv": {"method": "none"}}
    assert setting_from_config(cfg, {"weights": 3.15, "activations": None, "kv": None}) == "W3A16"
    assert setting_from_config(cfg, {"weights": 2.0234, "activations": None, "kv": None}) == "W2A16"
    assert setting_from_config(cfg) == "W4A16"  # no measured bits: the section's bits, as before
    cfg["weights"] = {"method": "scalar", "bits": 4}
    assert setting_from_config(cfg, {"weights": 4.11}) == "W4A16"


@pytest.mark.parametrize("w", [4, 3, 2])
def test_shipped_e8_configs_use_the_box_code(w):
    cfg = load_config(TINY.parent / f"smollm2-135m-e8-w{w}a16.yaml")
    assert cfg.weights.code == "box" and cfg.weights.box_bits == w - 1
    assert w < weight_bits(cfg.weights, 576) < w + 0.03


def test_box_resume_matches_uninterrupted_run(tmp_path):
    cfg = load_config(TINY, [*BOX, "model.spec=tiny-random-llama", "activations.method=none", "kv.method=none",
                             "calibration.n_samples=4", "calibration.seq_len=32"])
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))
    ref, _, _, _ = api.quantize_to_checkpoint(cfg, tmp_path / "ref", progress=False, log=None)

    def crash(i):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated"):
        api.quantize_to_checkpoint(cfg, tmp_path / "ckpt", progress=False, log=None, on_layer_done=crash)
    model, _, report, out = api.quantize_to_checkpoint(cfg, tmp_path / "ckpt", progress=False, log=None)
    assert report["resumed_layers"] == [0]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert json.loads((out / "results.json").read_text())["bits"]["weights"] == checkpoint_weight_bits(out)
    assert checkpoint_weight_bits(out) == checkpoint_weight_bits(tmp_path / "ref")
