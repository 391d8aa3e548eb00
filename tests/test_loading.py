"""Model specs, GGUF quantizer stripping, save_pretrained round trips."""

import pytest
import torch

from llmquant.models import load_model, tiny_random_model
from llmquant.models.gguf import EMBEDDED_FILE, embedded_smollm2_path, strip_gguf_quantizer
from llmquant.models.loading import resolve_spec


def test_embedded_spec_resolves_to_installed_gguf():
    where, name = resolve_spec("smollm2-135m")
    assert name == EMBEDDED_FILE
    assert embedded_smollm2_path().parent == __import__("pathlib").Path(where)
    assert embedded_smollm2_path().stat().st_size > 50_000_000


def test_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_spec(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        resolve_spec(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="non-empty"):
        resolve_spec("")
    assert resolve_spec("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)


def test_uncached_hub_id_offline_gives_clear_error():
    with pytest.raises(OSError, match="smollm2-135m"):
        load_model("llmquant-test/definitely-not-cached-model")


@torch.no_grad()
def test_tiny_save_pretrained_and_load_model(tmp_path):
    model = tiny_random_model("gemma3", seed=2)
    model.save_pretrained(tmp_path)
    loaded, tok = load_model(str(tmp_path), attn_implementation="eager")  # same kernel: exact equality
    assert tok is None  # no tokenizer files in the folder
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert not loaded.training
    loaded64, _ = load_model(str(tmp_path), dtype=torch.float64)
    assert loaded64.model.embed_tokens.weight.dtype == torch.float64


def test_strip_gguf_quantizer_makes_model_saveable(tmp_path):
    from transformers import GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    model = tiny_random_model("llama")
    qc = GgufConfig(gguf_file="x.gguf")
    model.config.quantization_config = qc
    model.hf_quantizer = GgufHfQuantizer(qc)
    model.is_quantized = True
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "before")
    strip_gguf_quantizer(model)
    assert getattr(model.config, "quantization_config", None) is None and model.hf_quantizer is None
    model.save_pretrained(tmp_path / "after")
    loaded, _ = load_model(str(tmp_path / "after"))
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_gguf_loads_offline_caches_and_round_trips(tmp_path, monkeypatch):
    """GGUF -> plain float model (no quantizer marker); the save_pretrained cache reloads identically."""
    from llmquant.models.loading import gguf_cache_dir

    monkeypatch.setenv("LLMQUANT_CACHE_DIR", str(tmp_path))
    model, tok = load_model("smollm2-135m")  # parses the GGUF, then writes the cache
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None and not model.is_quantized
    assert model.model.embed_tokens.weight.dtype == torch.float32
    cached = gguf_cache_dir(embedded_smollm2_path())
    assert cached.is_relative_to(tmp_path) and (cached / "model.safetensors").is_file()
    loaded, tok2 = load_model("smollm2-135m")  # from the save_pretrained copy
    assert loaded.config._name_or_path == str(cached)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(tok2("The capital of France is", return_tensors="pt").input_ids, ids)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
