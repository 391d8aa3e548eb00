"""Resume state is safetensors + JSON (never a pickle) and is validated; long runs survive numerics:
Cholesky retries with more damping (recorded in results.json), NaN/Inf activations name the layer."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from _safety_support import logits, tiny_cfg

from llmquant import api
from llmquant.errors import NumericsError
from llmquant.quant import hessian as qhessian
from llmquant.quant.checkpoint import CheckpointError
from llmquant.quant.gptq import MAX_DAMP_TRIES, damped_inverse_factor, gptq_quantize


class Crash(RuntimeError):
    pass


def _crash_after_layer_0(i):
    if i == 0:
        raise Crash("simulated crash")


def _no_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def _interrupted(tmp_path, *extra):
    cfg = tiny_cfg(*extra)
    out = tmp_path / "ckpt"
    with pytest.raises(Crash):
        api.quantize_to_checkpoint(cfg, out, progress=False, log=None, on_layer_done=_crash_after_layer_0)
    return cfg, out, tmp_path / "ckpt.work"


def test_resume_state_is_safetensors_and_json_and_resumes_without_unpickling(tmp_path, monkeypatch):
    ref, _, _, _ = api.quantize_to_checkpoint(tiny_cfg(), tmp_path / "ref", progress=False, log=None)
    cfg, out, work = _interrupted(tmp_path)
    assert sorted(os.listdir(work)) == [".llmquant", "acts.safetensors", "layer_000.safetensors", "progress.json"]
    _no_unpickling(monkeypatch)
    model, _, report, _ = api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    assert report["resumed_layers"] == [0]
    assert torch.equal(logits(model), logits(ref))


def test_a_legacy_pickle_is_never_loaded(tmp_path, monkeypatch):
    cfg, out, work = _interrupted(tmp_path)
    os.replace(work / "acts.safetensors", work / "acts.pt")
    _no_unpickling(monkeypatch)
    with pytest.raises(CheckpointError, match=r"acts\.pt: was written by an older llmquant as a pickle, which is never loaded"):
        api.quantize_to_checkpoint(cfg, out, progress=False, log=None)


@pytest.mark.parametrize("damage, message", [
    (lambda w: (w / "progress.json").write_text("{not json"), r"progress\.json: unreadable JSON"),
    (lambda w: (w / "progress.json").write_text('{"done": 5, "specs": {}, "reports": []}'),
     r"progress\.json: 'done' must be a layer index in \[-1, 2\), got 5"),
    (lambda w: (w / "acts.safetensors").write_bytes((w / "acts.safetensors").read_bytes()[:-9]),
     r"acts\.safetensors: not a readable safetensors file"),
    (lambda w: (w / "layer_000.safetensors").unlink(), r"layer_000\.safetensors: missing"),
])
def test_damaged_resume_state_names_the_file(tmp_path, damage, message):
    cfg, out, work = _interrupted(tmp_path)
    damage(work)
    with pytest.raises(CheckpointError, match=message):
        api.quantize_to_checkpoint(cfg, out, progress=False, log=None)


def test_nan_activations_name_the_layer(tmp_path):
    cfg = tiny_cfg("rotation.enabled=false", "weights.algorithm=gptq")
    model, _ = api.load_fp("tiny-random-llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericsError, match=r"NaN/Inf in the calibration activations at the output of the "
                                            r"floating-point layer of decoder layer 1 \(model\.layers\.1\)"):
        api.quantize(model, cfg, progress=False, log=None)


def _spd(k: int, n: int, seed: int = 0) -> torch.Tensor:
    """``X^T X / n`` of ``n`` Gaussian samples (rank ``min(n, k)``)."""
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x / n


def test_cholesky_retries_with_growing_damping():
    u, d, retries = damped_inverse_factor(_spd(16, 64), 0.01)
    assert (d, retries) == (0.01, 0)
    h = _spd(16, 8)  # rank 8: smallest eigenvalue 0
    bad = h - 0.05 * torch.diag(h).mean() * torch.eye(16, dtype=h.dtype)  # indefinite
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(bad + 0.01 * torch.diag(bad).mean() * torch.eye(16, dtype=h.dtype))
    u, d, retries = damped_inverse_factor(bad, 0.01)
    assert retries == 1 and d == pytest.approx(0.1)
    hinv = torch.linalg.inv(bad + d * torch.diag(bad).mean() * torch.eye(16, dtype=h.dtype))
    assert torch.allclose(u.T @ u, hinv, rtol=1e-8, atol=1e-10)
    stats = {}
    w = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    q = gptq_quantize(w, bad, lambda wg, cols: wg.round(), width=1, block_size=8, percdamp=0.01, stats=stats)
    assert stats == {"percdamp": d, "damping_retries": retries}
    assert torch.equal(q, q.round()) and torch.isfinite(q).all()


def test_hopeless_hessians_raise_numerics_errors():
    with pytest.raises(NumericsError, match=f"not positive definite .* after {MAX_DAMP_TRIES} attempts"):
        damped_inverse_factor(-torch.eye(8, dtype=torch.float64), 0.01)
    h = _spd(8, 32)
    h[2, 3] = float("nan")
    with pytest.raises(NumericsError, match="Hessian has NaN/Inf"):
        damped_inverse_factor(h, 0.01)


def test_damping_retries_are_recorded_in_results_json(tmp_path, monkeypatch):
    real = qhessian.HessianAccumulator.hessian

    def indefinite(self):
        h = real(self)
        return h - 0.05 * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)

    monkeypatch.setattr(qhessian.HessianAccumulator, "hessian", indefinite)
    cfg = tiny_cfg("weights.algorithm=gptq")
    _, _, report, out = api.quantize_to_checkpoint(cfg, tmp_path / "ckpt", progress=False, log=None)
    layers = json.loads((out / "results.json").read_text())["layers"]
    damping = layers[0]["cholesky_damping"]
    assert set(damping) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert all(v["retries"] >= 1 and v["percdamp"] > 0.01 for v in damping.values())
    assert report["layers"][1]["cholesky_damping"] == layers[1]["cholesky_damping"]
