"""Quantize on load (``from_pretrained(fp, quantization_config=LlmquantConfig(cfg))``), in-memory models of every
supported architecture through ``save_pretrained`` / ``from_pretrained``, config validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmquant
from llmquant import api
from llmquant.config import ConfigError, load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
FAST = ["calibration.n_samples=2", "calibration.seq_len=16"]


def _ids(vocab=256, n=2, t=24):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


def _from_pretrained(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kw).eval()


def _rtn_cfg(extra=()):
    return load_config(TINY, [*FAST, "weights.algorithm=rtn", *extra])


@torch.no_grad()
def test_quantize_on_load_matches_api_quantize(tmp_path):
    from llmquant.eval.tiny import tiny_llama

    from llmquant.hf import LlmquantConfig

    fp_dir = tmp_path / "fp"
    tiny_llama(seed=0).save_pretrained(fp_dir)
    cfg = _rtn_cfg()
    model = _from_pretrained(fp_dir, quantization_config=LlmquantConfig(cfg))
    ref = tiny_llama(seed=0).eval()
    api.quantize(ref, cfg, calib=_ids(t=16), progress=False, log=None)
    sd, sr = model.state_dict(), ref.state_dict()
    assert sd.keys() == sr.keys()
    assert all(torch.equal(sd[k], sr[k]) for k in sd)
    ids = _ids()
    want = ref(ids).logits
    assert torch.equal(model(ids).logits, want)
    model.save_pretrained(tmp_path / "q")
    assert torch.equal(_from_pretrained(tmp_path / "q")(ids).logits, want)


def test_quantize_on_load_refuses_calibrated_configs(tmp_path):
    from llmquant.eval.tiny import tiny_llama

    from llmquant.hf import LlmquantConfig

    tiny_llama(seed=0).save_pretrained(tmp_path / "fp")
    with pytest.raises(ConfigError, match="weights.algorithm: 'gptq' needs calibration data"):
        _from_pretrained(tmp_path / "fp", quantization_config=LlmquantConfig(load_config(TINY, FAST)))


def test_config_validation():
    from llmquant.hf import LlmquantConfig

    cfg = _rtn_cfg()
    with pytest.raises(ConfigError, match="unknown keys"):
        LlmquantConfig(cfg, bogus=1)
    with pytest.raises(ConfigError, match="format_version"):
        LlmquantConfig(cfg, format_version=llmquant.FORMAT_VERSION + 1)
    with pytest.raises(ConfigError, match="weights"):
        LlmquantConfig({"version": 1, "name": "x", "weights": {"lattic": "E8"}})
    qc = LlmquantConfig(cfg)
    assert LlmquantConfig.from_dict(qc.to_dict()).to_dict() == qc.to_dict()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "mistral", "gemma3"])
@torch.no_grad()
def test_in_memory_models_of_every_architecture_save_and_load(arch, tmp_path):
    """api.quantize takes any supported HF model object; save_pretrained + from_pretrained give it back."""
    from llmquant.models.tiny import tiny_random_model

    model = tiny_random_model(arch, seed=0).eval()
    cfg = _rtn_cfg(["activations.method=none", "kv.method=none"])
    api.quantize(model, cfg, calib=_ids(vocab=int(model.config.vocab_size), t=16), progress=False, log=None)
    model.save_pretrained(tmp_path / arch)
    ids = _ids(vocab=int(model.config.vocab_size))
    assert torch.equal(_from_pretrained(tmp_path / arch)(ids).logits, model(ids).logits)
