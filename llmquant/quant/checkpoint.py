"""llmquant checkpoint directory: save atomically, load without re-quantizing.

Layout of ``DIR``::

    model.safetensors        full state dict (packed codes, beta indices, scales, rotation state,
                             floating-point embeddings / norms / lm_head); shared tensors stored once
    llmquant_config.json     {"format_version", "llmquant_version", "config" (resolved), "config_hash",
                              "rotation_plan" (or null), "quantized": {layer: {role: module spec}}}
    config.json              Hugging Face model config (after rotation: untied embeddings)
    tokenizer files          whatever ``tokenizer.save_pretrained`` writes (absent for token-id-only models)
    results.json             {"ppl": {...}, "bits": {...}, "config": {...}, "layers": [...], ...}

Saving writes everything into a sibling temp dir, then swaps it in with ``os.replace`` (an
existing checkpoint is moved aside first and removed only after the swap), so an interrupted
save never leaves a half-written ``DIR``.

Loading builds the model from ``config.json``, re-installs the rotation modules from the saved
plan, replaces the decoder linears by empty quantized modules from their specs (plus
activation and KV quantizers from the config), then loads the state dict strictly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CONFIG_FILE = "llmquant_config.json"
WEIGHTS_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
HF_CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing a file or has an unsupported format version."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=float))
    os.replace(tmp, path)


def save_checkpoint(out: str | os.PathLike, model, tokenizer, cfg, specs: dict, rotation_plan: dict | None,
                    results: dict) -> Path:
    """Write the checkpoint of a quantized ``model`` to ``out`` atomically (see module docstring)."""
    from safetensors.torch import save_model

    import llmquant
    from llmquant.config import config_hash, config_to_dict

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        meta = {
            "format_version": llmquant.FORMAT_VERSION,
            "llmquant_version": llmquant.__version__,
            "config": config_to_dict(cfg),
            "config_hash": config_hash(cfg),
            "rotation_plan": rotation_plan,
            "quantized": {str(i): s for i, s in specs.items()},
        }
        _write_json(tmp / CONFIG_FILE, meta)
        model.config.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _write_json(tmp / RESULTS_FILE, results)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if out.exists():
        backup = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, backup)
    os.replace(tmp, out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return out


def read_meta(path: str | os.PathLike) -> dict:
    """``llmquant_config.json`` of a checkpoint, after checking the files and the format version."""
    import llmquant

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected an llmquant checkpoint made by `llmquant quantize`)")
    for name in (CONFIG_FILE, WEIGHTS_FILE, HF_CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}; the checkpoint is incomplete, re-run `llmquant quantize`")
    meta = json.loads((path / CONFIG_FILE).read_text())
    version = meta.get("format_version")
    if version != llmquant.FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported by this llmquant "
            f"(reads version {llmquant.FORMAT_VERSION}); re-quantize with this version"
        )
    return meta


def read_results(path: str | os.PathLike) -> dict:
    p = Path(path) / RESULTS_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def update_results(path: str | os.PathLike, updates: dict) -> dict:
    """Merge ``updates`` (one level deep for dict values) into ``results.json`` atomically."""
    results = read_results(path)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(results.get(k), dict):
            results[k] = {**results[k], **v}
        else:
            results[k] = v
    _write_json(Path(path) / RESULTS_FILE, results)
    return results


@torch.no_grad()
def load_quantized(path: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """Rebuild a quantized model from a checkpoint -> ``(model, tokenizer, config)`` (no re-quantization).

    ``device``: where the weights are loaded (None: CPU).  ``backend``: forward backend of every
    ``LatticeLinear`` and online ``HadamardRotation`` (``reference`` | ``triton`` | ``auto``, see
    :func:`llmquant.quant.linear.set_backend`); None uses the checkpoint config's ``model.backend``
    (``auto`` for checkpoints written before the key existed).
    """
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmquant.config import config_from_dict
    from llmquant.config.schema import BACKENDS
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.linear import set_backend
    from llmquant.quant.structure import build_quantized_shell

    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"load_quantized: backend={backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(path)
    meta = read_meta(path)
    cfg = config_from_dict(meta["config"])
    hf_config = AutoConfig.from_pretrained(str(path))
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.eval()
    if meta.get("rotation_plan") is not None:
        from llmquant.models.rotate import RotationPlan, install_rotation_modules

        install_rotation_modules(model, RotationPlan.from_dict(meta["rotation_plan"]))
    adapter = get_adapter(model)
    quantized = meta.get("quantized", {})
    for i, layer in enumerate(adapter.layers(model)):
        build_quantized_shell(layer, adapter, quantized.get(str(i), {}), cfg)
    if device is not None:
        model.to(device)
    missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False,
                                     device=str(device) if device is not None else "cpu")
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: state dict does not match the rebuilt model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); the checkpoint is corrupt or from another llmquant"
        )
    set_backend(model, backend if backend is not None else cfg.model.backend)
    tokenizer = None
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer, cfg
