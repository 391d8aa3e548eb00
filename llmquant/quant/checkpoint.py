"""llmquant checkpoint directory: save atomically, load without re-quantizing.

Layout of ``DIR``::

    model.safetensors        full state dict (packed codes, beta indices, scales, rotation state,
                             floating-point embeddings / norms / lm_head); shared tensors stored once
    llmquant_config.json     {"format_version", "llmquant_version", "config" (resolved), "config_hash",
                              "rotation_plan" (or null), "quantized": {layer: {role: module spec}}}
    config.json              Hugging Face model config (after rotation: untied embeddings), with
                             ``quantization_config`` (:func:`hf_quantization_config`: quant_method "llmquant",
                             format version, config, rotation plan, module specs) so that transformers'
                             ``from_pretrained`` rebuilds the packed model (:mod:`llmquant.hf`)
    tokenizer files          whatever ``tokenizer.save_pretrained`` writes (absent for token-id-only models)
    results.json             {"ppl": {...}, "bits": {...}, "config": {...}, "layers": [...], ...}
    README.md                model card (:mod:`llmquant.quant.model_card`), rewritten by :func:`update_results`

    .llmquant                marker: this folder was written by llmquant (see :func:`is_owned`)

Saving writes everything into a sibling temp dir, then swaps it in with ``os.replace`` (an
existing checkpoint is moved aside first and removed only after the swap), so an interrupted
save never leaves a half-written ``DIR``.  Never destroy: ``DIR`` must be absent, an empty folder,
or a folder llmquant wrote (:func:`check_output_dir`); anything else is refused unless
``overwrite=True`` (the CLI's ``--overwrite``).

Integrity: ``llmquant_config.json`` carries ``files`` (sha256 of every other file written at save
time, ``results.json`` and ``README.md`` excepted: eval updates them) and ``meta_sha256`` (sha256 of its own canonical
JSON without that key).  Loading checks both, then validates the tensors (:func:`validate_state_file`,
:func:`validate_loaded_values`), so a truncated, bit-flipped or partially deleted checkpoint fails
with a :class:`CheckpointError` naming the file instead of loading wrong numbers.  Checkpoints
written before these keys existed get the structural and range checks only.

Loading builds the model from ``config.json`` with its parameters on the meta device (no dense weights,
:mod:`llmquant.quant.materialize`), re-installs the rotation modules from the saved plan, replaces the decoder
linears by empty quantized modules from their specs, their tensors on the meta device (plus activation and KV
quantizers from the config), applies ``model.embed_dtype``, then reads every tensor of ``model.safetensors``
into its place; every parameter and persistent buffer must come from the file.  Peak memory: the checkpoint's
tensors plus one tensor in flight (bit-identical to loading a dense model and ``load_state_dict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from llmquant.errors import LlmquantError, OutputExistsError

CONFIG_FILE = "llmquant_config.json"
WEIGHTS_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
HF_CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: ``quant_method`` of the ``quantization_config`` in ``config.json`` (the transformers quantizer's name)
QUANT_METHOD = "llmquant"
#: marker file of every folder llmquant writes (checkpoints, ``<out>.work`` resume state, FP run results)
MARKER_FILE = ".llmquant"
#: files of a checkpoint that are not in its sha256 manifest
_UNHASHED = (CONFIG_FILE, RESULTS_FILE, MARKER_FILE, CARD_FILE)


class CheckpointError(LlmquantError, RuntimeError):
    """A checkpoint (or resume state) is missing a file, has an unsupported format version, or is
    truncated / corrupt; the message names the file and what is wrong."""


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a folder llmquant wrote as a checkpoint, even a damaged one (so that loading it reports
    what is wrong instead of reading it as a floating-point model): it has ``llmquant_config.json``, or
    a ``checkpoint`` marker, or a ``model.safetensors`` whose header metadata names llmquant."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / CONFIG_FILE).is_file():
        return True
    try:
        if json.loads((path / MARKER_FILE).read_text()).get("kind") == "checkpoint":
            return True
    except (OSError, ValueError, AttributeError):
        pass
    if (path / WEIGHTS_FILE).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
                return "llmquant_format_version" in (f.metadata() or {})
        except _read_errors():
            return False
    return False


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as written by llmquant (``kind``: ``checkpoint``, ``work`` or ``results``)."""
    import llmquant

    data = {"owner": "llmquant", "kind": kind, "llmquant_version": llmquant.__version__}
    (Path(folder) / MARKER_FILE).write_text(json.dumps(data) + "\n")


def is_owned(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds llmquant's marker file, or is a checkpoint written before the marker
    existed (a ``llmquant_config.json`` that parses with ``format_version`` and ``config``)."""
    folder = Path(folder)
    if (folder / MARKER_FILE).is_file():
        return True
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "config" in meta


def check_output_dir(path: str | os.PathLike, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse to write to ``path`` unless it does not exist, is an empty folder, or is a folder llmquant
    wrote (:func:`is_owned`); ``overwrite=True`` accepts anything.  Raises :class:`OutputExistsError`
    naming the path, ``option`` and ``--overwrite``."""
    p = Path(path)
    if overwrite or not os.path.lexists(p):
        return
    if p.is_dir() and not p.is_symlink():
        if not any(p.iterdir()) or is_owned(p):
            return
        raise OutputExistsError(
            f"{option} {p}: the folder exists and was not written by llmquant (no {MARKER_FILE} marker); "
            f"nothing was changed. Choose another {option}, or pass --overwrite to replace it"
        )
    kind = "a symbolic link" if p.is_symlink() else "a file"
    raise OutputExistsError(
        f"{option} {p}: {kind} is in the way; nothing was changed. Choose another {option}, "
        "or pass --overwrite to replace it"
    )


def remove_path(p: str | os.PathLike) -> None:
    """Delete ``p``: a folder with its contents, or a file / symbolic link (never the link's target)."""
    p = Path(p)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    """sha256 of the canonical JSON of ``meta`` without its ``meta_sha256`` key."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=float))
    os.replace(tmp, path)


def hf_quantization_config(cfg, specs: dict, rotation_plan: dict | None) -> dict:
    """The ``quantization_config`` entry of ``config.json`` (parsed by :class:`llmquant.hf.LlmquantConfig`)::

        {"quant_method": "llmquant", "format_version": FORMAT_VERSION, "llmquant_version": str,
         "config": resolved llmquant config (dict), "rotation_plan": RotationPlan dict or null,
         "quantized": {"<layer>": {"<role>": module spec}}}

    The same data as ``llmquant_config.json`` minus the integrity keys, so a ``save_pretrained`` folder
    (which has no ``llmquant_config.json``) is self-describing."""
    import llmquant
    from llmquant.config import Config, config_to_dict

    return json.loads(json.dumps({
        "quant_method": QUANT_METHOD,
        "format_version": llmquant.FORMAT_VERSION,
        "llmquant_version": llmquant.__version__,
        "config": config_to_dict(cfg) if isinstance(cfg, Config) else dict(cfg),
        "rotation_plan": rotation_plan,
        "quantized": {str(i): s for i, s in specs.items()},
    }, default=float))


def _add_quantization_config(folder: Path, qc: dict) -> None:
    """Put ``qc`` into ``folder/config.json`` as ``quantization_config`` (replacing any), atomically."""
    hf = json.loads((folder / HF_CONFIG_FILE).read_text(encoding="utf-8"))
    hf["quantization_config"] = qc
    tmp = folder / f"{HF_CONFIG_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / HF_CONFIG_FILE)


def upgrade_checkpoint(path: str | os.PathLike) -> list[str]:
    """Bring a checkpoint written before ``quantization_config`` / the model card existed up to date, in place:
    add ``quantization_config`` to ``config.json`` (so transformers' ``from_pretrained`` loads it) and refresh
    its sha256 in the manifest and ``meta_sha256``; write ``README.md`` when absent.  The checkpoint is fully
    verified first (:func:`read_meta`, :func:`verify_files`).  Returns the files changed ([] when current).
    ``python -c "from llmquant.quant.checkpoint import upgrade_checkpoint as u; u('DIR')"``."""
    from llmquant.config import ConfigError, config_from_dict

    path = Path(path)
    meta = read_meta(path)
    verify_files(path, meta)
    changed = []
    hf = _read_json_file(path, HF_CONFIG_FILE)
    if not isinstance(hf, dict):
        raise _corrupt(path, HF_CONFIG_FILE, f"expected a JSON object, got {type(hf).__name__}")
    if hf.get("quantization_config") is None:
        try:
            cfg = config_from_dict(meta["config"])
        except ConfigError as exc:
            raise _corrupt(path, CONFIG_FILE, f"saved config: {exc}") from None
        _add_quantization_config(path, hf_quantization_config(cfg, meta.get("quantized") or {}, meta.get("rotation_plan")))
        changed.append(HF_CONFIG_FILE)
        if HF_CONFIG_FILE in (meta.get("files") or {}):
            meta["files"][HF_CONFIG_FILE] = file_sha256(path / HF_CONFIG_FILE)
            meta["meta_sha256"] = _meta_digest(meta)
            _write_json(path / CONFIG_FILE, meta)
            changed.append(CONFIG_FILE)
    if not (path / CARD_FILE).is_file():
        write_card(path, meta, read_results(path))
        changed.append(CARD_FILE)
    return changed


def save_checkpoint(out: str | os.PathLike, model, tokenizer, cfg, specs: dict, rotation_plan: dict | None,
                    results: dict, *, overwrite: bool = False) -> Path:
    """Write the checkpoint of a quantized ``model`` to ``out`` atomically (see module docstring).

    ``out`` is checked with :func:`check_output_dir` before anything is written (``overwrite=True``
    replaces whatever is there)."""
    from safetensors.torch import save_model

    import llmquant
    from llmquant.config import config_hash, config_to_dict

    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        remove_path(tmp)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS_FILE),
                   metadata={"format": "pt", "llmquant_format_version": str(llmquant.FORMAT_VERSION)})
        model.config.save_pretrained(str(tmp))
        _add_quantization_config(tmp, hf_quantization_config(cfg, specs, rotation_plan))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        files = {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*"))
                 if f.is_file() and f.name not in _UNHASHED}
        meta = {
            "format_version": llmquant.FORMAT_VERSION,
            "llmquant_version": llmquant.__version__,
            "config": config_to_dict(cfg),
            "config_hash": config_hash(cfg),
            "rotation_plan": rotation_plan,
            "quantized": {str(i): s for i, s in specs.items()},
            "files": files,
        }
        meta = json.loads(json.dumps(meta, default=float))  # the exact data a reader parses back
        meta["meta_sha256"] = _meta_digest(meta)
        _write_json(tmp / CONFIG_FILE, meta)
        _write_json(tmp / RESULTS_FILE, results)
        write_card(tmp, meta, results, name=out.name)
        write_marker(tmp, "checkpoint")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if os.path.lexists(out):
        backup = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, backup)
    os.replace(tmp, out)
    if backup is not None:
        try:
            remove_path(backup)
        except OSError:
            pass
    return out


def _corrupt(path: Path, name: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path / name}: {what}; the checkpoint is corrupt or incomplete, "
                           "re-run `llmquant quantize` (or restore it from a copy)")


def _read_json_file(path: Path, name: str):
    try:
        text = (path / name).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(path, name, f"unreadable JSON ({' '.join(str(exc).split())[:200]})") from None


def read_meta(path: str | os.PathLike) -> dict:
    """``llmquant_config.json`` of a checkpoint, after checking: the folder and its required files exist,
    the JSON parses into a mapping, ``format_version`` is the one this llmquant reads, and ``meta_sha256``
    matches the content (when present; a manifest without it is corrupt)."""
    import llmquant

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected an llmquant checkpoint made by `llmquant quantize`)")
    for name in (CONFIG_FILE, WEIGHTS_FILE, HF_CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}; the checkpoint is incomplete, re-run `llmquant quantize`")
    meta = _read_json_file(path, CONFIG_FILE)
    if not isinstance(meta, dict):
        raise _corrupt(path, CONFIG_FILE, f"expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != llmquant.FORMAT_VERSION:  # first: another format version may hash differently
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported by this llmquant "
            f"(reads version {llmquant.FORMAT_VERSION}); re-quantize with this version"
        )
    if "meta_sha256" in meta:
        if meta["meta_sha256"] != _meta_digest(meta):
            raise _corrupt(path, CONFIG_FILE, "content does not match its meta_sha256 (modified or bit-flipped)")
    elif "files" in meta:
        raise _corrupt(path, CONFIG_FILE, "has a file manifest but no meta_sha256")
    for key, kind in (("config", dict), ("quantized", dict), ("files", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise _corrupt(path, CONFIG_FILE, f"{key!r} must be a JSON object, got {type(meta[key]).__name__}")
    if "config" not in meta:
        raise _corrupt(path, CONFIG_FILE, "no 'config'")
    return meta


def verify_files(path: str | os.PathLike, meta: dict) -> None:
    """Every file of the sha256 manifest ``meta["files"]`` exists inside ``path`` and has its hash
    (nothing to check for checkpoints written before the manifest existed)."""
    path = Path(path)
    for name, digest in (meta.get("files") or {}).items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not isinstance(digest, str):
            raise _corrupt(path, CONFIG_FILE, f"bad manifest entry {name!r}")
        if not (path / rel).is_file():
            raise _corrupt(path, name, "missing")
        if file_sha256(path / rel) != digest:
            raise _corrupt(path, name, "sha256 does not match the manifest (truncated, modified or bit-flipped)")


def read_results(path: str | os.PathLike) -> dict:
    """``results.json`` of a run folder ({} when absent); unreadable JSON raises :class:`CheckpointError`."""
    p = Path(path) / RESULTS_FILE
    if not p.is_file():
        return {}
    res = _read_json_file(Path(path), RESULTS_FILE)
    if not isinstance(res, dict):
        raise _corrupt(Path(path), RESULTS_FILE, f"expected a JSON object, got {type(res).__name__}")
    return res


def write_card(folder: str | os.PathLike, meta: dict, results: dict, name: str | None = None) -> None:
    """(Re)write the model card ``README.md`` of a checkpoint folder (:func:`llmquant.quant.model_card.model_card`;
    ``name``: its title, default the folder name)."""
    from llmquant.quant.model_card import model_card

    folder = Path(folder)
    tmp = folder / f"{CARD_FILE}.tmp{os.getpid()}"
    tmp.write_text(model_card(meta, results, name=name or folder.resolve().name), encoding="utf-8")
    os.replace(tmp, folder / CARD_FILE)


def update_results(path: str | os.PathLike, updates: dict) -> dict:
    """Merge ``updates`` (one level deep for dict values) into ``results.json`` atomically; in a checkpoint
    folder (one with ``llmquant_config.json``) the model card ``README.md`` is refreshed from the new results."""
    results = read_results(path)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(results.get(k), dict):
            results[k] = {**results[k], **v}
        else:
            results[k] = v
    _write_json(Path(path) / RESULTS_FILE, results)
    if (Path(path) / CONFIG_FILE).is_file():
        write_card(path, read_meta(path), results)
    return results


#: safetensors header dtype names -> torch dtypes (what ``save_model`` writes)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of reading a damaged safetensors file (header JSON, lengths, offsets)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # older safetensors: the class is not exported
        return (Exception,)
    return (SafetensorError, OSError, ValueError)


def _storage_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names of ``state`` grouped by shared storage (``save_model`` stores each group once); meta tensors (no
    storage) by identity, so pass ``state_dict(keep_vars=True)`` of a model built on the meta device."""
    groups: dict[object, list[str]] = {}
    for name, t in state.items():
        if t.is_meta:
            key = ("meta", id(t))
        else:
            key = (t.device, t.untyped_storage().data_ptr()) if t.numel() else name
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def validate_state_file(file: str | os.PathLike, expected: dict[str, torch.Tensor]) -> None:
    """Check a safetensors file against the state dict a freshly built module expects, without reading
    its data: the header parses and the data is as long as the header says (else: truncated or
    corrupt), no tensor is unknown, every tensor is present (of tensors sharing storage, one suffices,
    as ``save_model`` writes them), and each has the expected dtype and shape.  Raises
    :class:`CheckpointError` naming the file and the first problems."""
    from safetensors import safe_open

    file = Path(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = {}
            for k in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                sl = f.get_slice(k)
                header[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    except _read_errors() as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(exc).split())[:200]}); "
                              "it is truncated or corrupt, re-run `llmquant quantize`") from None
    unknown = sorted(set(header) - set(expected))
    if unknown:
        raise CheckpointError(f"{file}: unknown tensors {unknown[:5]} (of {len(unknown)}) that the rebuilt model "
                              "does not have; the checkpoint is corrupt or from another llmquant version")
    missing = [g[0] for g in _storage_groups(expected) if not any(n in header for n in g)]
    if missing:
        raise CheckpointError(f"{file}: missing tensors {missing[:5]} (of {len(missing)}); "
                              "the checkpoint is incomplete or corrupt, re-run `llmquant quantize`")
    for name, (dt, shape) in header.items():
        want = expected[name]
        if _ST_DTYPES.get(dt) != want.dtype or shape != tuple(want.shape):
            raise CheckpointError(
                f"{file}: tensor {name} is {dt} {list(shape)}, expected {want.dtype} {list(want.shape)}; "
                "the checkpoint is corrupt or from another llmquant version"
            )


def _index_problem(module) -> str | None:
    """Range check of the integer tensors of one module, by the buffers it holds: nibble-packed lattice
    ``codes`` (each 4-bit code < ``q``), ``beta_idx`` (< number of ``betas``), box-code ``words`` (row length
    and zero padding), scalar ``qweight`` codes
    (< 2^``bits``) and ``zero`` points (integers in [0, 2^``bits``))."""
    bufs = dict(module.named_buffers(recurse=False))
    q, bits = getattr(module, "q", None), getattr(module, "bits", None)
    codes = bufs.get("codes")
    if codes is not None and isinstance(q, int) and not codes.is_floating_point():
        if not 2 <= q <= 16:
            return f"lattice modulus q={q} is outside [2, 16]"
        shifts = torch.arange(0, 32, 4, device=codes.device, dtype=torch.int32)
        nib = (codes.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF
        if nib.numel() and int(nib.max()) >= q:
            return f"codes: a code is {int(nib.max())}, expected codes in [0, {q})"
    bidx, betas = bufs.get("beta_idx"), bufs.get("betas")
    if (bidx is not None and betas is not None and bidx.numel()
            and (int(bidx.max()) >= betas.numel() or int(bidx.min()) < 0)):
        return f"beta_idx: an index is {int(bidx.max())}, expected indices in [0, {betas.numel()})"
    words, codec = bufs.get("words"), getattr(module, "codec", None)
    if words is not None and hasattr(codec, "word_bits") and words.numel():
        # box words: every field of a word is in range by construction; the zero padding after the last word
        # of each row must be zero (a flipped bit there means the stream is not what was written)
        used = codec.word_bits * (module.in_features // 8)
        pad = 32 * words.shape[-1] - used
        if pad < 0 or pad >= 32:
            return f"words: {words.shape[-1]} int32 per row, expected {-(-used // 32)}"
        if pad and bool(((words[..., -1].to(torch.int64) & 0xFFFFFFFF) >> (32 - pad)).any()):
            return "words: nonzero padding bits after the last word of a row"
    qweight = bufs.get("qweight")
    if qweight is not None and isinstance(bits, int) and hasattr(module, "int_codes"):
        c = module.int_codes()
        if c.numel() and int(c.max()) >= 2**bits:
            return f"qweight: a code is {int(c.max())}, expected codes in [0, {2**bits})"
        zero = bufs.get("zero")
        if (zero is not None and zero.numel() and bool(torch.isfinite(zero).all())
                and bool(((zero < 0) | (zero > 2**bits - 1) | (zero != zero.round())).any())):
            return f"zero: a zero point is outside the integers in [0, {2**bits})"
    return None


def _all_finite(t: torch.Tensor, block: int = 1 << 20) -> bool:
    """``torch.isfinite(t).all()`` over blocks of ``block`` entries (``isfinite`` makes temporaries as large as its
    input; an embedding table is hundreds of megabytes)."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + block]).all()) for i in range(0, flat.numel(), block))


def validate_loaded_values(model: torch.nn.Module, where: str | os.PathLike) -> None:
    """After loading: every floating-point parameter / buffer (scales, betas, norms, embeddings) is
    finite, and every code / beta-index tensor is in range (:func:`_index_problem`), so kernels never see
    an index outside their tables.  Raises :class:`CheckpointError` naming ``where`` and the tensor."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and t.numel() and not _all_finite(t):
            raise CheckpointError(f"{where}: tensor {name} has NaN/Inf values; the checkpoint is corrupt, "
                                  "re-run `llmquant quantize`")
    for mname, module in model.named_modules():
        problem = _index_problem(module)
        if problem is not None:
            raise CheckpointError(f"{where}: {mname}.{problem}; the checkpoint is corrupt, re-run `llmquant quantize`")


def _check_specs(path: Path, quantized: dict, layers, adapter, source: str = CONFIG_FILE) -> None:
    """The ``quantized`` section names existing decoder layers and roles, and each module spec has the
    input / output size of the linear it replaces (errors name ``path / source``)."""
    from llmquant.quant.structure import get_linear, present_roles

    for key, layer_specs in quantized.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < len(layers)):
            raise _corrupt(path, source, f"quantized: {key!r} is not a decoder layer index in [0, {len(layers)})")
        if not isinstance(layer_specs, dict):
            raise _corrupt(path, source, f"quantized.{key}: expected a JSON object")
        roles = present_roles(layers[int(key)], adapter)
        for role, spec in layer_specs.items():
            if role not in roles or not isinstance(spec, dict):
                raise _corrupt(path, source, f"quantized.{key}.{role}: not a linear role ({', '.join(roles)}) "
                                                  "with a module spec")
            lin = get_linear(layers[int(key)], adapter, role)
            for dim in ("in_features", "out_features"):
                if dim in spec and spec[dim] != getattr(lin, dim):
                    raise _corrupt(path, source, f"quantized.{key}.{role}.{dim}: {spec[dim]!r}, but the "
                                                      f"model's linear has {getattr(lin, dim)}")


def empty_quantized_module(spec: dict) -> torch.nn.Module:
    """:func:`~llmquant.quant.weights.empty_like_spec` of ``spec`` with every tensor of the module itself (codes or
    packed words, β indices, betas, scales, zero points, bias) on the meta device: no memory, no zero fill, no
    packing temporaries.  A codec layout's codec is built first, on the current device, because its tables
    (β set, levels) are plain tensors that no state dict restores.  Each meta tensor must then be assigned from
    the checkpoint (:func:`llmquant.quant.materialize.read_state_file`, or transformers' loader followed by
    :func:`check_shells_loaded`)."""
    from llmquant.quant.weights import empty_like_spec

    return empty_like_spec(spec, device="meta")


def shell_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the persistent buffers that the quantized linears (``LatticeLinear`` / ``ScalarLinear``)
    of ``model`` hold themselves (their activation quantizers, submodules, excluded), every name of each."""
    from llmquant.quant.linear import LatticeLinear, ScalarLinear

    out = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (LatticeLinear, ScalarLinear)):
            for leaf, t in module._buffers.items():
                if t is not None and leaf not in module._non_persistent_buffers_set:
                    out[f"{mname}.{leaf}" if mname else leaf] = t
    return out


def shell_records(model: torch.nn.Module) -> list[tuple[tuple[str, ...], torch.dtype, tuple[int, ...]]]:
    """``[(names, dtype, shape)]``: each tensor of :func:`shell_tensors` once, with all the names it has."""
    groups: dict[int, list] = {}
    for name, t in shell_tensors(model).items():
        groups.setdefault(id(t), [[], t.dtype, tuple(t.shape)])[0].append(name)
    return [(tuple(names), dtype, shape) for names, dtype, shape in groups.values()]


def check_shells_loaded(model: torch.nn.Module, records, files, where: str | os.PathLike) -> None:
    """After transformers loaded the safetensors ``files`` into ``model``: every shell tensor of ``records``
    (:func:`shell_records`, taken while the shells were meta) is in one of the files' headers, under one of its
    names, with its dtype and shape, so the loader assigned it from the file (a name the files lack it fills
    with an uninitialised tensor), and none is still on the meta device.  Reads headers only; raises
    :class:`CheckpointError` naming ``where`` and the first tensors wrong."""
    from llmquant.quant.materialize import ST_DTYPES, StateFileError, read_header

    header = {}
    for f in files:
        try:
            h, _ = read_header(f)
        except (OSError, StateFileError) as exc:
            raise CheckpointError(f"{f}: unreadable safetensors header ({' '.join(str(exc).split())[:200]})") from None
        header.update({k: (ST_DTYPES.get(v["dtype"]), tuple(int(d) for d in v["shape"])) for k, v in h.items()})
    bad = [(names, dtype, shape) for names, dtype, shape in records
           if not any(header.get(n) == (dtype, tuple(shape)) for n in names)]
    if bad:
        names, dtype, shape = bad[0]
        got = next((header[n] for n in names if n in header), None)
        raise CheckpointError(f"{where}: tensors {[b[0][0] for b in bad[:3]]} (of {len(bad)}) of the quantized "
                              "linears are " + ("not in the weights files" if got is None else
                                                f"stored as {got[0]} {list(got[1])}, expected {dtype} {list(shape)}")
                              + "; the checkpoint is incomplete or corrupt, re-save it with llmquant")
    left = sorted(n for n, t in shell_tensors(model).items() if t.is_meta)
    if left:
        raise CheckpointError(f"{where}: tensors {left[:3]} (of {len(left)}) were not loaded; the checkpoint is "
                              "incomplete, re-save it with llmquant")


def install_quantized_structure(model, cfg, rotation_plan: dict | None, quantized: dict, path: str | os.PathLike,
                                source: str = CONFIG_FILE, meta_shells: bool = False) -> None:
    """Turn a freshly built floating-point ``model`` into the empty structure of the quantized one: the
    rotation modules of ``rotation_plan`` (online Hadamards, Q/K rotation, the ``llmquant`` attention function;
    :func:`~llmquant.models.rotate.install_rotation_modules`), then per decoder layer the quantized modules of
    ``quantized`` (``{"<layer>": {"<role>": module spec}}``) with the activation and KV quantizers of ``cfg``
    (:func:`~llmquant.quant.structure.build_quantized_shell`).  No weight is touched; a state dict loads next.
    ``meta_shells``: the quantized linears' own tensors are built on the meta device
    (:func:`empty_quantized_module`: no memory until the checkpoint's tensors are assigned, for loaders that
    assign rather than copy into place); else real, zero-filled (what ``load_state_dict`` copies into).
    Shared by :func:`load_quantized` and the transformers quantizer (:mod:`llmquant.hf.quantizer`); problems raise
    :class:`CheckpointError` naming ``path / source``."""
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.structure import build_quantized_shell

    path = Path(path)
    if rotation_plan is not None:
        from llmquant.models.rotate import RotationPlan, install_rotation_modules

        try:
            install_rotation_modules(model, RotationPlan.from_dict(rotation_plan))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _corrupt(path, source, f"rotation_plan: {' '.join(str(exc).split())[:200]}") from None
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    _check_specs(path, quantized, layers, adapter, source)
    for i, layer in enumerate(layers):
        try:
            if meta_shells:
                _build_meta_shell(layer, adapter, quantized.get(str(i), {}), cfg)
            else:
                build_quantized_shell(layer, adapter, quantized.get(str(i), {}), cfg)
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, source, f"quantized.{i}: bad module spec ({exc})") from None


def _build_meta_shell(layer, adapter, specs: dict[str, dict], cfg) -> None:
    """:func:`~llmquant.quant.structure.build_quantized_shell` with :func:`empty_quantized_module` for the linears
    (their activation quantizers, shared per input group, and the KV quantizers are built as there)."""
    from llmquant.quant.kv import attach_kv_quantizers
    from llmquant.quant.structure import roles_with_act_quantizers, set_linear

    for role, act_q in roles_with_act_quantizers(specs, cfg.activations):
        module = empty_quantized_module(specs[role])
        module.act_q = act_q
        set_linear(layer, adapter, role, module)
    attach_kv_quantizers(layer, adapter, cfg.kv)


@torch.no_grad()
def load_quantized(path: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """Rebuild a quantized model from a checkpoint -> ``(model, tokenizer, config)`` (no re-quantization).

    Validated before any forward (see the module docstring): required files, ``format_version``,
    ``meta_sha256`` and the sha256 manifest, the saved config, the module specs against the model's
    linears, the safetensors header against the rebuilt model's state dict (:func:`validate_state_file`),
    finite floats and in-range codes / β indices (:func:`validate_loaded_values`).  Every failure is a
    :class:`CheckpointError` naming the file (a config problem: :class:`~llmquant.config.ConfigError`
    wrapped into it; an unsupported architecture: ``UnsupportedArchitectureError``).

    ``device``: where the weights are loaded (None: CPU).  ``backend``: forward backend of every
    ``LatticeLinear`` and online ``HadamardRotation`` (``reference`` | ``triton`` | ``auto``, see
    :func:`llmquant.quant.linear.set_backend`); None uses the checkpoint config's ``model.backend``
    (``auto`` for checkpoints written before the key existed).
    """
    from transformers import AutoConfig, AutoTokenizer

    from llmquant.config import ConfigError, config_from_dict
    from llmquant.config.schema import BACKENDS
    from llmquant.models.adapters import get_adapter
    from llmquant.models.embed_dtype import apply_embed_dtype
    from llmquant.quant.linear import set_backend, set_weight_cache
    from llmquant.quant.materialize import (
        StateFileError,
        empty_model,
        read_state_file,
        real_buffers,
        release_free_heap,
        restore_buffers,
    )

    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"load_quantized: backend={backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(path)
    meta = read_meta(path)
    verify_files(path, meta)
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as exc:
        raise _corrupt(path, CONFIG_FILE, f"saved config: {exc}") from None
    try:
        hf_config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, HF_CONFIG_FILE, f"not a usable model config ({' '.join(str(exc).split())[:200]})") from None
    get_adapter(hf_config)  # unsupported architecture: its own error, before building anything
    dtype = getattr(torch, cfg.model.dtype)
    try:
        model = empty_model(hf_config, dtype)  # parameters on the meta device: no dense weights
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise _corrupt(path, HF_CONFIG_FILE, f"cannot build the model ({' '.join(str(exc).split())[:200]})") from None
    built = real_buffers(model)
    # packed shells on the meta device: read_state_file assigns each from the file, and anything left unread
    # stays meta and fails below
    install_quantized_structure(model, cfg, meta.get("rotation_plan"), meta.get("quantized", {}), path,
                                meta_shells=True)
    apply_embed_dtype(model, cfg)  # model.embed_dtype: the file holds embeddings / lm_head in that dtype
    release_free_heap()  # the shells' short-lived tensors, before the large tensors are read
    expected = model.state_dict(keep_vars=True)
    validate_state_file(path / WEIGHTS_FILE, expected)
    restore_buffers(model, built, skip=expected)  # non-persistent buffers the rotation step moved to meta
    try:
        still_meta = read_state_file(model, path / WEIGHTS_FILE, device)
    except StateFileError as exc:  # data the header check could not see
        raise _corrupt(path, WEIGHTS_FILE, f"unreadable tensors ({' '.join(str(exc).split())[:200]})") from None
    except OSError as exc:
        raise _corrupt(path, WEIGHTS_FILE, f"unreadable ({' '.join(str(exc).split())[:200]})") from None
    if still_meta:
        raise CheckpointError(
            f"{path}: state dict does not match the rebuilt model (missing {still_meta[:5]}); "
            "the checkpoint is corrupt or from another llmquant"
        )
    if device is not None:
        model.to(device)
    validate_loaded_values(model, path / WEIGHTS_FILE)
    release_free_heap()
    set_backend(model, backend if backend is not None else cfg.model.backend)
    set_weight_cache(model, cfg.model.weight_cache)  # the CLI's --weight-cache overrides it after loading
    tokenizer = None
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _corrupt(path, "tokenizer files", f"unreadable ({' '.join(str(exc).split())[:200]})") from None
    return model, tokenizer, cfg
