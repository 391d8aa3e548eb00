"""Loading a checkpoint without dense weights (:mod:`llmquant.quant.materialize`) gives the model the dense
loader gave: same tensors bit for bit, same logits (``torch.equal``), tied embeddings still one Parameter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant import api
from llmquant.config import load_config
from llmquant.quant.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    install_quantized_structure,
    load_quantized,
    read_meta,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
FAST = ["calibration.n_samples=4", "calibration.seq_len=32", "weights.algorithm=rtn"]


@torch.no_grad()
def dense_load(path: Path):
    """The loader before :mod:`llmquant.quant.materialize`: a dense float model from ``config.json``, the
    quantized structure installed into it, then ``safetensors.torch.load_model`` (the reference)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmquant.config import config_from_dict

    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)), dtype=getattr(torch, cfg.model.dtype))
    model.eval()
    install_quantized_structure(model, cfg, meta.get("rotation_plan"), meta.get("quantized", {}), path)
    missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    assert not missing and not unexpected
    return model


def _quantize(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    cfg = load_config(TINY, [*FAST, *overrides])
    out = tmp_path_factory.mktemp(name) / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out


CASES = {
    # rotated (untied after rotation), E8 Voronoi W4A4KV4
    "llama-e8-rot": ["model.spec=tiny-random-llama"],
    # box-code weights and activations (codec tensors that no state dict restores)
    "llama-box": ["model.spec=tiny-random-llama", "weights.code=box", "activations.code=box",
                  "activations.box_variant=int", "kv.code=box", "kv.box_variant=int"],
    # no rotation: tied embeddings stay tied
    "llama-tied-scalar": ["model.spec=tiny-random-llama", "rotation.enabled=false", "weights.method=scalar",
                          "activations.method=none", "kv.method=none"],
    # Gemma 3: non-persistent embed_scale buffer, rotated with online norm gains
    "gemma3": ["model.spec=tiny-random-gemma3", "rotation.norm_gains=online"],
    "qwen2-bias": ["model.spec=tiny-random-qwen2"],
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    return request.param, _quantize(tmp_path_factory, request.param, CASES[request.param])


def test_same_model_as_dense_loader(case):
    _, path = case
    ref = dense_load(path)
    model, _, _ = load_quantized(path, backend="reference")
    from llmquant.quant.linear import set_backend

    set_backend(ref, "reference")
    got = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    want = dict(ref.named_parameters(remove_duplicate=False)) | dict(ref.named_buffers(remove_duplicate=False))
    assert sorted(got) == sorted(want)
    for n, t in want.items():
        assert not got[n].is_meta, n
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n
        assert type(got[n]) is type(t), n
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in ref.named_parameters()}  # same tying
    ids = torch.randint(0, int(model.config.vocab_size), (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_tied_embeddings_stay_one_parameter(tmp_path_factory):
    path = _quantize(tmp_path_factory, "tied", CASES["llama-tied-scalar"])
    model, _, _ = load_quantized(path)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_no_meta_left_and_missing_tensor_fails(tmp_path_factory, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    path = _quantize(tmp_path_factory, "missing", CASES["llama-e8-rot"])
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    state = load_file(str(bad / WEIGHTS_FILE))
    state.pop("model.norm.weight")
    save_file(state, str(bad / WEIGHTS_FILE), metadata={"format": "pt", "llmquant_format_version": "1"})
    meta = json.loads((bad / CONFIG_FILE).read_text())
    meta.pop("files"), meta.pop("meta_sha256")  # a checkpoint without the manifest: only the structural checks
    (bad / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing tensors.*model.norm.weight"):
        load_quantized(bad)


def test_truncated_data_is_a_checkpoint_error(tmp_path_factory, tmp_path):
    import json
    import shutil

    from llmquant.quant.materialize import StateFileError, empty_model, read_state_file

    path = _quantize(tmp_path_factory, "trunc", CASES["llama-tied-scalar"])
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    data = (bad / WEIGHTS_FILE).read_bytes()
    (bad / WEIGHTS_FILE).write_bytes(data[:-100])
    meta = json.loads((bad / CONFIG_FILE).read_text())
    meta.pop("files"), meta.pop("meta_sha256")
    (bad / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_quantized(bad)
    from transformers import AutoConfig

    model = empty_model(AutoConfig.from_pretrained(str(path)), torch.float32)
    with pytest.raises(StateFileError, match="do not fit"):
        read_state_file(model, bad / WEIGHTS_FILE)


def test_empty_model_holds_no_weights():
    """The skeleton: every parameter on the meta device (no bytes), buffers real, tied pairs one Parameter."""
    from llmquant.models.tiny import tiny_config
    from llmquant.quant.materialize import empty_model, real_buffers

    for arch in ("llama", "gemma3"):
        model = empty_model(tiny_config(arch), torch.float32)
        assert all(p.is_meta for p in model.parameters())
        assert real_buffers(model) and all(not b.is_meta for b in model.buffers())
        assert model.lm_head.weight is model.model.embed_tokens.weight  # tie_word_embeddings: true


def test_packed_shells_are_read_in_place(tmp_path_factory):
    """Tensors the model already holds on the CPU (the packed shells) are filled where they are, not copied."""
    from transformers import AutoConfig

    from llmquant.config import config_from_dict
    from llmquant.quant.materialize import empty_model, read_state_file

    path = _quantize(tmp_path_factory, "inplace", CASES["llama-box"])
    meta = read_meta(path)
    model = empty_model(AutoConfig.from_pretrained(str(path)), torch.float32)
    install_quantized_structure(model, config_from_dict(meta["config"]), meta["rotation_plan"], meta["quantized"], path)
    words = model.model.layers[0].self_attn.q_proj.words
    ptr = words.data_ptr()
    read_state_file(model, path / WEIGHTS_FILE)
    assert model.model.layers[0].self_attn.q_proj.words.data_ptr() == ptr and bool(words.ne(0).any())
