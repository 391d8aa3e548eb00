"""Layer-wise offload during quantization (``model.offload``) and ``accelerate`` placement in ``api.load``.

No GPU here: offload with device ``cpu`` must give bit-identical results, and the bookkeeping (what is on
the compute device when) is checked on the :class:`LayerOffloader` itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmquant import api
from llmquant.config import load_config
from llmquant.quant import runner
from llmquant.quant.runner import LayerOffloader

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
SMALL = ["model.spec=tiny-random-llama", "model.device=cpu", "calibration.n_samples=4", "calibration.seq_len=32",
         "calibration.batch_size=2"]
IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])


def _quantized(overrides, monkeypatch=None, record=None):
    cfg = load_config(TINY, [*SMALL, *overrides])
    model, tok = api.load_fp(cfg.model.spec, cfg.model.dtype, "cpu", cfg.model.seed)
    if record is not None:
        class Recording(LayerOffloader):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                record.append(self)

        monkeypatch.setattr(runner, "LayerOffloader", Recording)
    api.quantize(model, cfg, tokenizer=tok, progress=False, log=None)
    with torch.no_grad():
        return model, model(IDS).logits


def test_offload_on_cpu_gives_identical_logits(monkeypatch):
    record = []
    m_off, off = _quantized(["model.offload=true"], monkeypatch, record)
    _, ref = _quantized(["model.offload=false"])
    assert torch.equal(off, ref)
    assert [r.enabled for r in record] == [True, False]  # the offload run, then the plain one
    assert all(p.device.type == "cpu" for p in m_off.parameters())


def test_offload_moves_one_layer_at_a_time(monkeypatch):
    record, seen = [], []

    def watch(i):
        def pre_hook(_mod, _args):
            seen.append((i, sorted(record[0].resident)))
        return pre_hook

    cfg = load_config(TINY, [*SMALL, "model.offload=true"])
    model, tok = api.load_fp(cfg.model.spec, cfg.model.dtype, "cpu", cfg.model.seed)
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(watch(i))

    class Recording(LayerOffloader):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            record.append(self)

    monkeypatch.setattr(runner, "LayerOffloader", Recording)
    done = []
    api.quantize(model, cfg, tokenizer=tok, progress=False, log=None,
                 on_layer_done=lambda i: done.append(sorted(record[0].resident)))
    off = record[0]
    assert off.moves == [("all", "cpu"), ("outer", "cpu"), ("outer", "cpu"),
                         ("layer.0", "cpu"), ("layer.0", "cpu"), ("layer.1", "cpu"), ("layer.1", "cpu")]
    # every forward of layer i (FP pass with Hessian hooks, quantized pass; batch_size 2 -> 2 batches each)
    # happens with exactly that layer resident; the capture forwards run no decoder layer at all (stand-ins
    # record each layer's kwargs, see runner.capture_layer_inputs) with only the outer modules resident
    assert seen == [(0, ["layer.0"])] * 4 + [(1, ["layer.1"])] * 4
    assert done == [[], []]  # nothing left on the device after each layer


def test_layer_offloader_bookkeeping():
    from llmquant.models.tiny import tiny_random_model

    model = tiny_random_model("llama", seed=0)
    layers = model.model.layers
    off = LayerOffloader(model, layers, "cpu")
    outer = off.outer_modules()
    assert model.model.embed_tokens in outer and model.lm_head in outer and model.model.norm in outer
    assert not any(m is layers[0] or m in list(layers[1].modules()) for m in outer)
    params = {id(p) for p in model.parameters()}
    off.load_layer(0)
    with pytest.raises(RuntimeError, match=r"loading layer 1 while \['layer.0'\] is still on cpu"):
        off.load_layer(1)
    off.release_layer(0)
    off.load_layer(1)
    off.load_outer()
    assert off.resident == {"layer.1", "outer"}
    off.release_outer()
    off.release_layer(1)
    assert off.resident == set()
    assert {id(p) for p in model.parameters()} == params  # Parameters kept (data swapped), ties kept
    noop = LayerOffloader(model, layers, "cpu", enabled=False)
    noop.load_layer(0)
    noop.load_layer(1)
    assert noop.moves == [] and noop.resident == set()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(TINY, [*SMALL, "weights.method=lattice", "activations.method=none", "kv.method=none"])
    out = tmp_path_factory.mktemp("o") / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out


@pytest.mark.parametrize("device_map, max_memory", [
    ("cpu", None),
    ("auto", {"cpu": "1GiB"}),
    ("sequential", {"cpu": "1GiB"}),
    ({"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
      "model.norm": "cpu", "lm_head": "cpu"}, None),
])
def test_accelerate_device_map_gives_identical_logits(ckpt, device_map, max_memory):
    pytest.importorskip("accelerate")
    ref_model, _ = api.load(ckpt, device="cpu")
    model, _ = api.load(ckpt, device_map=device_map, max_memory=max_memory)
    assert set(model.hf_device_map.values()) == {"cpu"}
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref_model(IDS).logits)


def test_device_map_errors(ckpt):
    with pytest.raises(ValueError, match="max_memory is only used with device_map"):
        api.load(ckpt, device="cpu", max_memory={"cpu": "1GiB"})
    with pytest.raises(TypeError, match="device_map: expected one of"):
        api.load(ckpt, device_map=3.5)
    with pytest.raises(ValueError, match="disk offload is not supported"):
        api.load(ckpt, device_map={"": "disk"})
