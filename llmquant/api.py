"""Public verbs: :func:`quantize` (in place), :func:`load` (checkpoint or FP model spec),
:func:`quantize_to_checkpoint` (load + quantize + save, what ``llmquant quantize`` runs).

Model specs understood by :func:`load_fp`: ``smollm2-135m`` (embedded), HF hub ids, local
dirs and ``.gguf`` files (through :func:`llmquant.models.load_model`), plus two in-code test
models: ``tiny-llama`` (2-layer Llama with the byte-level tokenizer of
:mod:`llmquant.eval.tiny`, so text calibration and perplexity work) and
``tiny-random-<arch>`` (:func:`llmquant.models.tiny_random_model`; no tokenizer, calibration
then uses seeded random token ids).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_config(config):
    from llmquant.config import Config, config_from_dict, load_config

    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a Config, a dict or a YAML path, got {type(config).__name__}")


def _weights_read_errors() -> tuple[type[BaseException], ...]:
    """The safetensors reader's error class (a damaged weights file), when this safetensors exports it."""
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


def load_fp(spec: str, dtype: str = "float32", device: str | torch.device | None = "auto", seed: int = 0):
    """Floating-point ``(model, tokenizer)`` for a model spec (see module docstring); tokenizer may be None."""
    dev = resolve_device(device)
    tdtype = getattr(torch, dtype)
    if spec == "tiny-llama":
        from llmquant.eval.tiny import byte_tokenizer, tiny_llama

        return tiny_llama(seed=seed).to(dev, tdtype).eval(), byte_tokenizer()
    if spec.startswith("tiny-random-"):
        from llmquant.models.tiny import tiny_random_model

        return tiny_random_model(spec[len("tiny-random-"):], seed=seed, dtype=tdtype).to(dev).eval(), None
    from llmquant.errors import LlmquantError, ModelLoadError, one_line
    from llmquant.models.loading import load_model

    try:
        model, tokenizer = load_model(spec, dtype=tdtype, device=dev)
    except LlmquantError:
        raise
    except (OSError, ValueError, *_weights_read_errors()) as exc:  # not found, offline hub, bad files
        raise ModelLoadError(f"model {spec!r}: {one_line(str(exc))}") from exc
    return model.eval(), tokenizer


def calibration_ids(cfg, tokenizer, vocab_size: int) -> torch.Tensor:
    """``[n_samples, seq_len]`` calibration token ids: seeded windows of the train split, or seeded
    random ids when the model has no tokenizer (tiny random test models)."""
    c = cfg.calibration
    if tokenizer is None:
        g = torch.Generator().manual_seed(c.seed)
        return torch.randint(0, vocab_size, (c.n_samples, c.seq_len), generator=g)
    from llmquant.data import calibration_batch

    return calibration_batch(tokenizer, c.n_samples, c.seq_len, c.seed, dataset=c.dataset, data_dir=c.data_dir)


def _head_dim(model) -> int:
    hc = model.config
    return int(getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads)


def bits_for_model(cfg, model, specs: dict | None = None) -> dict:
    """Bits per entry (:func:`llmquant.config.model_bits`, from the config); for lattice weights
    ``"weights"`` is the stored figure instead: the bytes of the quantized linears' tensors
    (:mod:`llmquant.quant.stored_bits`, the same count :func:`~llmquant.quant.stored_bits.checkpoint_weight_bits`
    reads from ``model.safetensors``).  ``specs``: the module specs (default ``model.llmquant_specs``)."""
    from llmquant.config import model_bits
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.structure import linear_shapes

    bits = model_bits(cfg, linear_shapes(model, get_adapter(model)), _head_dim(model))
    specs = specs if specs is not None else getattr(model, "llmquant_specs", None)
    if cfg.weights.method == "lattice" and specs:
        from llmquant.quant.stored_bits import model_weight_bits

        bits["weights"] = model_weight_bits(model, specs)
    if "embeddings" in bits:  # model.embed_dtype set: the stored figure of the embedding tensors
        from llmquant.quant.stored_bits import model_embedding_bits

        bits["embeddings"] = model_embedding_bits(model)
    return bits


@torch.no_grad()
def quantize(model, config, calib: torch.Tensor | None = None, tokenizer=None, *, work_dir=None,
             progress: bool = True, on_layer_done=None, log=print) -> dict:
    """Rotate (if configured) and quantize ``model`` in place, layer by layer.

    ``calib``: LongTensor ``[n, seq_len]`` (default: from ``config.calibration`` and ``tokenizer``).
    ``work_dir``: resume state (see :mod:`llmquant.quant.runner`).  With ``config.model.offload`` the
    model is kept on the CPU (moved there first) and each decoder layer visits ``config.model.device``
    only while it is quantized; the model ends on the CPU.  Calibration runs the reference forward; at
    the end every quantized module gets ``config.model.backend``, and with ``config.model.embed_dtype`` the input
    embeddings and ``lm_head`` are stored in that dtype (:mod:`llmquant.models.embed_dtype`).  Returns a report:
    ``{"rotation_plan", "specs", "layers", "warnings", "bits", "seconds", "resumed_layers"}`` (``warnings``: the
    per-layer guard's flags, :mod:`llmquant.quant.guard`); the model also
    gets ``model.llmquant_specs`` and ``model.llmquant_config`` (used by :func:`save`).

    ``model`` is any transformers causal LM of a supported architecture (role maps in
    :mod:`llmquant.models.adapters`: Llama, Qwen2, Qwen3, Mistral, Gemma3 text), already in memory, e.g.
    ``AutoModelForCausalLM.from_pretrained(...)`` or :func:`load_fp`'s (torchao-style: the object is changed in
    place, nothing is reloaded); an unsupported one fails with the list of supported ones.  Afterwards it
    also carries ``config.quantization_config`` and ``hf_quantizer`` (:func:`llmquant.hf.attach`), so
    ``model.save_pretrained(DIR)`` writes a folder that ``AutoModelForCausalLM.from_pretrained(DIR)`` loads.
    """
    from llmquant.config import config_hash, validate_for_model
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.runner import quantize_layers
    from llmquant.quant.structure import linear_shapes

    cfg = _as_config(config)
    adapter = get_adapter(model)
    validate_for_model(cfg, int(model.config.hidden_size), linear_shapes(model, adapter))
    t0 = time.perf_counter()
    plan = None
    if cfg.rotation.enabled:
        from llmquant.models.rotate import rotate_model

        r = cfg.rotation
        plan = rotate_model(model, {"seed": r.seed, "online_down": r.online_down, "v_o": r.v_o, "qk": r.qk,
                                    "norm_gains": r.norm_gains}).to_dict()
    report = {"rotation_plan": plan, "specs": {}, "layers": [], "resumed_layers": [], "warnings": []}
    if cfg.quantizes_anything:
        if calib is None:
            calib = calibration_ids(cfg, tokenizer, int(model.config.vocab_size))
        offload_device = resolve_device(cfg.model.device) if cfg.model.offload else None
        out = quantize_layers(model, cfg, calib, work_dir=work_dir, config_hash=config_hash(cfg),
                              progress=progress, on_layer_done=on_layer_done, log=log,
                              offload_device=offload_device)
        report.update(specs=out["specs"], layers=out["layers"], resumed_layers=out["resumed_layers"],
                      warnings=out["warnings"])
    from llmquant.quant.linear import set_backend

    set_backend(model, cfg.model.backend)
    from llmquant.models.embed_dtype import apply_embed_dtype

    apply_embed_dtype(model, cfg)  # model.embed_dtype: embeddings / lm_head stored narrower (saved so)
    report["bits"] = bits_for_model(cfg, model, report["specs"])
    report["seconds"] = time.perf_counter() - t0
    model.llmquant_specs = report["specs"]
    model.llmquant_config = cfg
    if cfg.quantizes_anything or plan is not None:
        from llmquant.hf import attach

        attach(model, cfg, report["specs"], plan)
    return report


def save(model, tokenizer, out, config=None, rotation_plan: dict | None = None, results: dict | None = None,
         *, overwrite: bool = False) -> Path:
    """Write a quantized model (after :func:`quantize`) as an llmquant checkpoint directory.

    ``out`` must be absent, empty or a folder llmquant wrote, unless ``overwrite`` (see
    :func:`llmquant.quant.checkpoint.check_output_dir`)."""
    from llmquant.config import config_to_dict
    from llmquant.quant.checkpoint import save_checkpoint

    cfg = _as_config(config) if config is not None else model.llmquant_config
    if rotation_plan is None:
        p = getattr(model, "llmquant_rotation_plan", None)
        rotation_plan = p.to_dict() if p is not None else None
    results = dict(results or {})
    results.setdefault("config", config_to_dict(cfg))
    results.setdefault("bits", bits_for_model(cfg, model))
    return save_checkpoint(out, model, tokenizer, cfg, getattr(model, "llmquant_specs", {}), rotation_plan, results,
                           overwrite=overwrite)


def load(path_or_spec, dtype: str = "float32", device: str | torch.device | None = "auto", *,
         backend: str | None = None, device_map=None, max_memory: dict | None = None):
    """``(model, tokenizer)`` from an llmquant checkpoint directory or a floating-point model spec.

    ``backend``: ``reference`` | ``triton`` | ``auto`` for every ``LatticeLinear`` and online
    ``HadamardRotation`` (:func:`llmquant.quant.set_backend`); None = the checkpoint config's
    ``model.backend`` (FP specs have no such modules, so it changes nothing there).

    ``device_map`` (instead of ``device``): place the model with ``accelerate`` for models larger than
    one accelerator: ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` / ``"sequential"`` (decoder
    layers are never split, ``max_memory`` e.g. ``{0: "20GiB", "cpu": "200GiB"}`` caps each device), a
    single device such as ``"cpu"`` / ``"cuda:0"``, or an explicit ``{module name: device}`` dict.  The
    model is first built in CPU memory; parts mapped to ``"cpu"`` stay there and are streamed to the
    execution device per forward (``accelerate`` hooks, buffers included, so packed codes are offloaded
    too).  ``"disk"`` is not supported.

    A checkpoint's model carries ``config.quantization_config`` / ``hf_quantizer`` (:func:`llmquant.hf.attach`):
    ``model.save_pretrained(DIR)`` works, and ``AutoModelForCausalLM.from_pretrained(CKPT)`` (after
    ``import llmquant``) gives the same model without this function (:mod:`llmquant.hf.quantizer`).
    """
    from llmquant.quant.checkpoint import is_checkpoint, load_quantized
    from llmquant.quant.linear import set_backend

    place_now = device_map is None
    if is_checkpoint(path_or_spec):
        model, tokenizer, cfg = load_quantized(path_or_spec, device=resolve_device(device) if place_now else None,
                                               backend=backend)
        from llmquant.hf import attach
        from llmquant.quant.checkpoint import read_meta

        meta = read_meta(path_or_spec)
        if getattr(model.config, "quantization_config", None) is None:
            import warnings

            warnings.warn(f"{path_or_spec}: config.json has no quantization_config (a checkpoint from before it existed); "
                          "transformers' from_pretrained cannot load it until you run "
                          "llmquant.quant.checkpoint.upgrade_checkpoint(DIR)", stacklevel=2)
        model.llmquant_specs = {int(i): s for i, s in (meta.get("quantized") or {}).items()}
        model.llmquant_config = cfg
        attach(model, cfg, model.llmquant_specs, meta.get("rotation_plan"))  # save_pretrained works on it
    else:
        model, tokenizer = load_fp(str(path_or_spec), dtype=dtype, device=device if place_now else "cpu")
        if backend is not None:
            set_backend(model, backend)
    if not place_now:
        model = dispatch_with_device_map(model, device_map, max_memory)
    elif max_memory is not None:
        raise ValueError("load: max_memory is only used with device_map (e.g. device_map='auto')")
    return model, tokenizer


def dispatch_with_device_map(model, device_map, max_memory: dict | None = None):
    """Place ``model`` (on CPU) with ``accelerate.dispatch_model``; see :func:`load` for ``device_map``.

    Returns the model with ``model.hf_device_map`` = the resolved ``{module name: device}`` map.
    """
    try:
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory
    except ImportError:
        raise RuntimeError("device_map needs the 'accelerate' package: pip install accelerate") from None
    strategies = ("auto", "balanced", "balanced_low_0", "sequential")
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str) and device_map in strategies:
        mm = max_memory
        if device_map != "sequential":
            mm = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                     low_zero=device_map == "balanced_low_0")
        dm = infer_auto_device_map(model, max_memory=mm, no_split_module_classes=no_split)
    elif isinstance(device_map, (str, torch.device, int)):
        dm = {"": str(torch.device(device_map)) if not isinstance(device_map, int) else device_map}
    elif isinstance(device_map, dict):
        dm = dict(device_map)
    else:
        raise TypeError(f"device_map: expected one of {strategies}, a device or a dict, got {device_map!r}")
    if "disk" in dm.values():
        raise ValueError(f"device_map: disk offload is not supported (got {dm}); raise max_memory['cpu']")
    if not dm:
        raise ValueError(f"device_map: {device_map!r} placed nothing (max_memory={max_memory!r} too small?)")
    model = dispatch_model(model, device_map=dm, offload_buffers=True)
    model.hf_device_map = dm
    return model


#: longest folder name :func:`safe_dir_name` returns
_MAX_DIR_NAME = 100


def safe_dir_name(name: str) -> str:
    """``name`` as one safe folder name: characters other than letters, digits, ``.``, ``_``, ``-``
    become ``-`` (so ``/``, ``\\`` and ``..`` cannot leave the parent), leading dots and dashes are
    dropped (no hidden folders, no options), at most 100 characters; ``run`` when nothing is left."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).lstrip(".-")[:_MAX_DIR_NAME].rstrip(".")
    return safe or "run"


def default_out_dir(cfg) -> Path:
    """``runs/<config name>``, the name sanitized by :func:`safe_dir_name` so it stays inside ``runs/``."""
    return Path("runs") / safe_dir_name(cfg.name)


def work_dir_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.work"


def check_outputs(out: str | os.PathLike, overwrite: bool = False) -> None:
    """Before any work: ``out`` and ``<out>.work`` must each be absent, an empty folder or a folder llmquant
    wrote (:func:`llmquant.quant.checkpoint.check_output_dir`); else ``OutputExistsError`` naming
    ``--overwrite``.  With ``overwrite`` a ``<out>.work`` that llmquant did not write is deleted now
    (``out`` itself is replaced only once the new checkpoint is complete)."""
    from llmquant.quant.checkpoint import check_output_dir, is_owned, remove_path

    out = Path(out)
    work = work_dir_for(out)
    check_output_dir(out, overwrite)
    check_output_dir(work, overwrite, option="--out (its resume folder)")
    if overwrite and os.path.lexists(work) and not (work.is_dir() and not work.is_symlink() and is_owned(work)):
        remove_path(work)


def quantize_to_checkpoint(cfg, out: str | os.PathLike | None = None, *, progress: bool = True,
                           on_layer_done=None, log=print, keep_work: bool = False, overwrite: bool = False):
    """Load the FP model of ``cfg``, quantize it (resuming from ``<out>.work``), save to ``out``.

    ``out`` and ``<out>.work`` are checked first (:func:`check_outputs`; ``overwrite`` replaces what
    llmquant did not write).  Returns ``(model, tokenizer, report, out_path)``; the work dir is removed
    after a successful save.
    """
    import shutil

    from llmquant.config import config_to_dict

    cfg = _as_config(cfg)
    out = Path(out) if out is not None else default_out_dir(cfg)
    work = work_dir_for(out)
    check_outputs(out, overwrite)
    # offload: the FP model is built in CPU memory; layers visit cfg.model.device one at a time
    model, tokenizer = load_fp(cfg.model.spec, cfg.model.dtype, "cpu" if cfg.model.offload else cfg.model.device,
                               cfg.model.seed)
    report = quantize(model, cfg, tokenizer=tokenizer, work_dir=work, progress=progress,
                      on_layer_done=on_layer_done, log=log)
    results = {
        "config": config_to_dict(cfg),
        "bits": report["bits"],
        "layers": report["layers"],
        "warnings": report["warnings"],
        "quantize_seconds": report["seconds"],
    }
    save(model, tokenizer, out, cfg, report["rotation_plan"], results, overwrite=overwrite)
    if not keep_work and work.exists():
        shutil.rmtree(work, ignore_errors=True)
    return model, tokenizer, report, out
