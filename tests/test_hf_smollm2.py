"""The real SmolLM2-135M (embedded GGUF) as an E8 checkpoint through plain transformers: logits equal
``llmquant.api.load``'s, and ``save_pretrained`` round-trips.  RTN weights (no calibration) to keep it to a few
minutes on one core; the load path is the same for calibrated checkpoints (same buffers, same specs)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

CFG = {
    "version": 1, "name": "smollm2-135m-e8-w4a4kv4-rtn", "method": "e8",
    "model": {"spec": "smollm2-135m", "dtype": "float32"},
    "rotation": {"enabled": True, "seed": 0},
    "calibration": {"n_samples": 1, "seq_len": 16},
    "weights": {"method": "lattice", "algorithm": "rtn", "lattice": "E8", "q": 14, "k": 2},
    "activations": {"method": "lattice", "q": 14, "k": 2},
    "kv": {"method": "lattice", "q": 14, "k": 2},
}


@torch.no_grad()
def test_smollm2_e8_checkpoint_through_transformers(tmp_path):
    from llmquant.models.gguf import EMBEDDED, embedded_gguf_path

    try:
        embedded_gguf_path("smollm2-135m")
    except Exception:  # noqa: BLE001 - any reason the embedded file is unavailable
        pytest.skip(f"embedded SmolLM2 GGUF not installed: {EMBEDDED['smollm2-135m']['pip']}")
    from transformers import AutoModelForCausalLM

    import llmquant  # noqa: F401
    from llmquant import api
    from llmquant.config import config_from_dict

    cfg = config_from_dict(CFG)
    model, tok = api.load_fp("smollm2-135m", device="cpu")
    ids = tok("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids
    api.quantize(model, cfg, calib=ids[:, :16], tokenizer=tok, progress=False, log=None)
    out = api.save(model, tok, tmp_path / "ckpt")
    ref, _ = api.load(out, device="cpu")
    want = ref(ids).logits
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    got = hf(ids).logits
    assert torch.equal(got, want)
    assert float((got - model(ids).logits).abs().max() / want.abs().max()) <= 1e-5
    hf.save_pretrained(tmp_path / "sp", max_shard_size="50MB")
    assert len(list((tmp_path / "sp").glob("model-*.safetensors"))) > 1
    assert torch.equal(AutoModelForCausalLM.from_pretrained(str(tmp_path / "sp")).eval()(ids).logits, want)
