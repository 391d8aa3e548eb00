"""transformers-native llmquant checkpoints: from_pretrained / save_pretrained (sharded) / device_map / api.save.

Quantize on load and in-memory models of every architecture: tests/test_hf_quantize_on_load.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmquant
from llmquant import api
from llmquant.config import load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
FAST = ["calibration.n_samples=2", "calibration.seq_len=16"]


def _ids(vocab=256, n=2, t=24):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["voronoi-w4a4kv4", "box-w4a16"])
def ckpt(request, tmp_path_factory):
    over = FAST if request.param.startswith("voronoi") else [
        *FAST, "weights.code=box", "weights.box_bits=3", "weights.algorithm=rtn", "activations.method=none",
        "kv.method=none"]
    cfg = load_config(TINY, over)
    out = tmp_path_factory.mktemp("hf") / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    ref, _ = api.load(out, device="cpu")
    return out, ref


def _from_pretrained(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kw).eval()


def test_config_json_carries_quantization_config(ckpt):
    out, _ = ckpt
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    meta = json.loads((out / "llmquant_config.json").read_text())
    assert qc["quant_method"] == "llmquant" and qc["format_version"] == llmquant.FORMAT_VERSION
    assert qc["quantized"] == meta["quantized"] and qc["rotation_plan"] == meta["rotation_plan"]
    assert qc["config"] == meta["config"]


@torch.no_grad()
def test_from_pretrained_equals_api_load(ckpt):
    from llmquant.quant.linear import LatticeLinear

    out, ref = ckpt
    model = _from_pretrained(out)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, LatticeLinear)
    assert isinstance(layer.mlp.down_proj.linear, LatticeLinear)  # inside the online Hadamard
    assert model.config._attn_implementation == "llmquant"
    assert [n for n, m in model.named_modules() if type(m) is nn.Linear] == ["lm_head"]
    ids = _ids()
    assert torch.equal(model(ids).logits, ref(ids).logits)
    if layer.self_attn.q_proj.act_q is not None:  # shared per input group, reloaded from the file
        assert layer.self_attn.q_proj.act_q is layer.self_attn.v_proj.act_q
        assert torch.equal(layer.self_attn.q_proj.act_q.betas, ref.model.layers[0].self_attn.k_proj.act_q.betas)


@torch.no_grad()
def test_save_pretrained_round_trip_and_sharding(ckpt, tmp_path):
    out, ref = ckpt
    model = _from_pretrained(out)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids = _ids()
    want = ref(ids).logits
    for d in ("one", "sharded"):
        assert torch.equal(_from_pretrained(tmp_path / d)(ids).logits, want), d
    # a model from llmquant.api.load saves the same way
    ref.save_pretrained(tmp_path / "from_api")
    assert torch.equal(_from_pretrained(tmp_path / "from_api")(ids).logits, want)


@torch.no_grad()
def test_device_map_auto_with_cpu_max_memory(ckpt):
    out, ref = ckpt
    model = _from_pretrained(out, device_map="auto", max_memory={"cpu": "2GiB"})
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
    ids = _ids()
    assert torch.equal(model(ids).logits, ref(ids).logits)
    with pytest.raises(ValueError, match="llmquant models cannot be offloaded to disk"):  # one clear line
        _from_pretrained(out, device_map="auto", max_memory={"cpu": "20KB"})


@torch.no_grad()
def test_api_save_of_a_from_pretrained_model(ckpt, tmp_path):
    out, ref = ckpt
    model = _from_pretrained(out)
    api.save(model, None, tmp_path / "again")
    again, _ = api.load(tmp_path / "again", device="cpu")
    ids = _ids()
    assert torch.equal(again(ids).logits, ref(ids).logits)


@torch.no_grad()
def test_old_checkpoint_loads_and_upgrades(ckpt, tmp_path):
    """A checkpoint written before quantization_config existed: api.load still works (with a one-line
    warning naming the upgrade), upgrade_checkpoint adds it and from_pretrained then loads it."""
    import shutil

    from llmquant.quant.checkpoint import (
        _meta_digest,
        file_sha256,
        read_meta,
        upgrade_checkpoint,
        verify_files,
    )

    out, ref = ckpt
    old = tmp_path / "old"
    shutil.copytree(out, old)
    hf = json.loads((old / "config.json").read_text())
    del hf["quantization_config"]
    (old / "config.json").write_text(json.dumps(hf))
    (old / "README.md").unlink()
    meta = json.loads((old / "llmquant_config.json").read_text())
    meta["files"]["config.json"] = file_sha256(old / "config.json")
    meta["meta_sha256"] = _meta_digest(meta)
    (old / "llmquant_config.json").write_text(json.dumps(meta))
    ids = _ids()
    with pytest.warns(UserWarning, match="upgrade_checkpoint"):
        loaded, _ = api.load(old, device="cpu")
    assert torch.equal(loaded(ids).logits, ref(ids).logits)
    assert upgrade_checkpoint(old) == ["config.json", "llmquant_config.json", "README.md"]
    assert upgrade_checkpoint(old) == []
    verify_files(old, read_meta(old))
    assert torch.equal(_from_pretrained(old)(ids).logits, ref(ids).logits)


def test_model_card_follows_results(ckpt, tmp_path):
    import shutil

    import yaml

    from llmquant.quant.checkpoint import update_results

    out, _ = ckpt
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "llmquant" in front["tags"]
    bits = json.loads((out / "results.json").read_text())["bits"]
    assert f"| weights | {bits['weights']:.4f} |" in card and "No evaluation yet" in card
    c = tmp_path / "c"
    shutil.copytree(out, c)
    update_results(c, {"ppl": {"wikitext2": 12.5}, "fp_ppl": {"wikitext2": 10.0}, "delta_ppl": {"wikitext2": 2.5},
                       "tasks": {"piqa": {"acc": 0.625}}})
    card = (c / "README.md").read_text()
    assert "| wikitext2 | perplexity | 12.5000 | 10.0000 | 2.5000 |" in card
    assert "| piqa | acc | 0.6250 |" in card and "No evaluation yet" not in card
