"""An interrupted quantization resumes after the last finished layer without redoing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmquant import api
from llmquant.config import load_config
from llmquant.quant import weights as qweights

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
SCALAR = ["weights.method=scalar", "activations.method=scalar", "kv.method=scalar"]


class Crash(RuntimeError):
    pass


def _cfg(*extra):
    # seeded random calibration ids: the test is about the runner, not about text
    return load_config(TINY, [*SCALAR, "model.spec=tiny-random-llama", "calibration.n_samples=4",
                              "calibration.seq_len=32", *extra])


def _count_calls(monkeypatch) -> list:
    calls = []
    real = qweights.quantize_linear

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(qweights, "quantize_linear", counting)
    return calls


def test_resume_skips_finished_layers_and_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg()
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(5))
    ref_model, _, _, _ = api.quantize_to_checkpoint(cfg, tmp_path / "ref", progress=False, log=None)
    with torch.no_grad():
        ref_logits = ref_model(ids).logits

    out = tmp_path / "ckpt"

    def crash_after_layer_0(i):
        if i == 0:
            raise Crash("simulated crash after layer 0")

    calls = _count_calls(monkeypatch)
    with pytest.raises(Crash):
        api.quantize_to_checkpoint(cfg, out, progress=False, log=None, on_layer_done=crash_after_layer_0)
    assert len(calls) == 7  # the 7 linears of layer 0
    assert not out.exists()  # no half-written checkpoint
    work = tmp_path / "ckpt.work"
    progress = json.loads((work / "progress.json").read_text())
    assert progress["done"] == 0 and (work / "layer_000.safetensors").is_file()

    calls.clear()
    model, _, report, _ = api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    assert report["resumed_layers"] == [0]
    assert len(calls) == 7  # only layer 1 was quantized
    assert [r["layer"] for r in report["layers"]] == [0, 1]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref_logits)
        loaded, _ = api.load(out)
        assert torch.equal(loaded(ids).logits, ref_logits)
    assert not work.exists()


def test_resume_refuses_a_work_dir_of_another_config(tmp_path):
    out = tmp_path / "ckpt"

    def crash(i):
        raise Crash("stop")

    with pytest.raises(Crash):
        api.quantize_to_checkpoint(_cfg(), out, progress=False, log=None, on_layer_done=crash)
    with pytest.raises(RuntimeError, match="holds a run of a different config"):
        api.quantize_to_checkpoint(_cfg("weights.bits=3"), out, progress=False, log=None)
