"""Checkpoint files: clear errors for missing files / wrong versions; a failed save keeps the old checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmquant import api
from llmquant.config import load_config
from llmquant.quant.checkpoint import CheckpointError, load_quantized, read_meta, update_results

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
SCALAR = ["weights.method=scalar", "activations.method=scalar", "kv.method=scalar"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(TINY, [*SCALAR, "model.spec=tiny-random-llama", "calibration.n_samples=4",
                             "calibration.seq_len=32"])
    out = tmp_path_factory.mktemp("c") / "ckpt"
    model, _, _, _ = api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out, model, cfg


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_checkpoint_contents(ckpt):
    out, _, cfg = ckpt
    meta = read_meta(out)
    import llmquant

    assert meta["format_version"] == llmquant.FORMAT_VERSION
    assert meta["config"]["name"] == cfg.name
    assert meta["config"]["rotation"]["seed"] == cfg.rotation.seed
    assert meta["rotation_plan"]["seed"] == cfg.rotation.seed
    assert set(meta["quantized"]["0"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_missing_file_and_wrong_version_errors(ckpt, tmp_path):
    out, _, _ = ckpt
    broken = _copy(out, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_quantized(broken)
    old = _copy(out, tmp_path / "old")
    meta = json.loads((old / "llmquant_config.json").read_text())
    meta["format_version"] = 999
    (old / "llmquant_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 999 is not supported"):
        load_quantized(old)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_quantized(tmp_path / "nowhere")


def test_failed_save_keeps_the_existing_checkpoint(ckpt, tmp_path, monkeypatch):
    out, model, cfg = ckpt
    target = _copy(out, tmp_path / "target")
    before = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(type(model.config), "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        api.save(model, None, target, cfg)
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # temp dir cleaned up
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loaded, _ = api.load(target)
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_update_results_merges(ckpt, tmp_path):
    out, _, _ = ckpt
    c = _copy(out, tmp_path / "r")
    update_results(c, {"ppl": {"wikitext2": 12.5}})
    res = update_results(c, {"ppl": {"c4": 20.0}, "tasks": {"piqa": {"acc": 0.6}}})
    assert res["ppl"] == {"wikitext2": 12.5, "c4": 20.0}
    assert "bits" in res and res["tasks"]["piqa"]["acc"] == 0.6


def test_load_applies_the_configs_weight_cache(tmp_path):
    cfg = load_config(TINY, [*SCALAR, "model.spec=tiny-random-llama", "calibration.n_samples=2",
                             "calibration.seq_len=16", "activations.method=none", "kv.method=none",
                             "model.weight_cache=decoded"])
    out = tmp_path / "kept"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    from llmquant.quant.linear import ScalarLinear

    model, _, _ = load_quantized(out)
    mods = [m for m in model.modules() if isinstance(m, ScalarLinear)]
    assert mods and all(m.weight_cache == "decoded" for m in mods)
