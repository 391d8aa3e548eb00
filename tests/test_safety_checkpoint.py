"""Checkpoints are validated on load: integrity hashes, tensor names / dtypes / shapes against the
rebuilt model, code and beta-index ranges, finite floats; every failure names the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _safety_support import logits, make_checkpoint, rewrite_tensors, strip_manifest

from llmquant import api
from llmquant.quant.checkpoint import CheckpointError, load_quantized

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def lattice(tmp_path_factory):
    model, out = make_checkpoint(tmp_path_factory.mktemp("lat") / "ckpt")
    return out, logits(model)


@pytest.fixture(scope="module")
def scalar3(tmp_path_factory):
    model, out = make_checkpoint(tmp_path_factory.mktemp("sc") / "ckpt", "weights.method=scalar", "weights.bits=3")
    return out, logits(model)


def _copy(src: Path, dst: Path, legacy: bool = False) -> Path:
    shutil.copytree(src, dst)
    if legacy:
        strip_manifest(dst)
    return dst


def test_manifest_covers_every_file_but_results_and_meta(lattice):
    out, _ = lattice
    meta = json.loads((out / "llmquant_config.json").read_text())
    on_disk = {p.name for p in out.iterdir()}
    # README.md is the model card: people edit it (e.g. on the hub), so it is not hashed
    assert set(meta["files"]) == on_disk - {"results.json", "llmquant_config.json", ".llmquant", "README.md"}
    assert {"model.safetensors", "config.json"} <= set(meta["files"])
    assert len(meta["meta_sha256"]) == 64


def test_bit_flip_in_weights_is_named(lattice, tmp_path):
    c = _copy(lattice[0], tmp_path / "c")
    data = bytearray((c / "model.safetensors").read_bytes())
    data[len(data) - 100] ^= 0x04  # inside the tensor data: the header still parses
    (c / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 does not match the manifest"):
        load_quantized(c)


def test_edited_meta_is_detected(lattice, tmp_path):
    c = _copy(lattice[0], tmp_path / "c")
    meta = json.loads((c / "llmquant_config.json").read_text())
    meta["quantized"]["0"]["q"]["q"] = 15
    (c / "llmquant_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its meta_sha256"):
        load_quantized(c)


def test_legacy_checkpoint_without_manifest_still_loads_identically(lattice, tmp_path):
    c = _copy(lattice[0], tmp_path / "c", legacy=True)
    model, _ = api.load(c, device="cpu")
    assert torch.equal(logits(model), lattice[1])


def test_truncated_weights_are_named(lattice, tmp_path):
    c = _copy(lattice[0], tmp_path / "c", legacy=True)
    data = (c / "model.safetensors").read_bytes()
    (c / "model.safetensors").write_bytes(data[: len(data) - 7])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file.*truncated"):
        load_quantized(c)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.__setitem__(f"{Q}.codes", sd[f"{Q}.codes"] | 0xF), r"q_proj\.codes: a code is 15, expected codes in \[0, 14\)"),
    (lambda sd: sd[f"{Q}.beta_idx"].__setitem__((0, 0), 7), r"q_proj\.beta_idx: an index is 7, expected indices in \[0, 2\)"),
    (lambda sd: sd[f"{Q}.row_scale"].__setitem__(3, float("nan")), r"tensor model\.layers\.0\.self_attn\.q_proj\.row_scale has NaN/Inf"),
    (lambda sd: sd["model.norm.weight"].__setitem__(0, float("inf")), r"tensor model\.norm\.weight has NaN/Inf"),
    (lambda sd: sd.__setitem__("model.extra", torch.zeros(2)), r"unknown tensors \['model\.extra'\]"),
    (lambda sd: sd.pop(f"{Q}.beta_idx"), r"missing tensors \['model\.layers\.0\.self_attn\.q_proj\.beta_idx'\]"),
    (lambda sd: sd.__setitem__(f"{Q}.codes", sd[f"{Q}.codes"].long()), r"q_proj\.codes is I64 .*expected torch\.int32"),
    (lambda sd: sd.__setitem__(f"{Q}.row_scale", sd[f"{Q}.row_scale"][:-1].clone()), r"row_scale is F32 \[47\], expected torch\.float32 \[48\]"),
])
def test_tensor_problems_are_named(lattice, tmp_path, edit, message):
    c = _copy(lattice[0], tmp_path / "c", legacy=True)
    rewrite_tensors(c / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_quantized(c)
    assert "model.safetensors" in str(info.value)


def test_scalar_codes_and_zero_points_are_range_checked(scalar3, tmp_path):
    out, ref = scalar3
    model, _ = api.load(out, device="cpu")
    assert torch.equal(logits(model), ref)
    c = _copy(out, tmp_path / "c", legacy=True)
    rewrite_tensors(c / "model.safetensors", lambda sd: sd[f"{Q}.qweight"].__setitem__((0, 0), 0xFF))
    with pytest.raises(CheckpointError, match=r"q_proj\.qweight: a code is 15, expected codes in \[0, 8\)"):
        load_quantized(c)
    c2 = _copy(out, tmp_path / "c2", legacy=True)
    rewrite_tensors(c2 / "model.safetensors", lambda sd: sd[f"{Q}.zero"].__setitem__((0, 0), 9.0))
    with pytest.raises(CheckpointError, match=r"q_proj\.zero: a zero point is outside"):
        load_quantized(c2)


def test_module_spec_that_does_not_fit_the_model_is_named(lattice, tmp_path):
    c = _copy(lattice[0], tmp_path / "c", legacy=True)
    meta = json.loads((c / "llmquant_config.json").read_text())
    meta["quantized"]["1"]["down"]["in_features"] = 8
    (c / "llmquant_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"quantized\.1\.down\.in_features: 8, but the model's linear has 80"):
        load_quantized(c)
    meta["quantized"]["1"]["down"]["in_features"] = 80
    meta["quantized"]["7"] = {}
    (c / "llmquant_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"llmquant_config\.json: quantized: '7' is not a decoder layer index"):
        load_quantized(c)


def test_unsupported_architecture_and_bad_json_are_named(lattice, tmp_path):
    from llmquant.errors import UnsupportedArchitectureError

    c = _copy(lattice[0], tmp_path / "c", legacy=True)
    cfg = json.loads((c / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (c / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt2'; supported: "):
        load_quantized(c)
    (c / "llmquant_config.json").write_text('{"format_version": 1, "config": ')
    with pytest.raises(CheckpointError, match=r"llmquant_config\.json: unreadable JSON"):
        load_quantized(c)
    (c / "llmquant_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing llmquant_config.json"):
        api.load(c)  # still recognized as a checkpoint (marker), never read as a floating-point model
