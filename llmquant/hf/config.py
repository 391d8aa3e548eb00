"""``LlmquantConfig``: the ``quantization_config`` of an llmquant model in transformers.

One class, two uses:

* **pre-quantized** (read from ``config.json`` of a checkpoint or a ``save_pretrained`` folder): the dict
  written by :func:`llmquant.quant.checkpoint.hf_quantization_config`::

      {"quant_method": "llmquant", "format_version": int, "llmquant_version": str,
       "config": resolved llmquant config, "rotation_plan": RotationPlan dict | null,
       "quantized": {"<layer index>": {"<role q|k|v|o|gate|up|down>": module spec}}}

  A module spec names the packed module and its codec parameters (``{"type": "lattice", "in_features",
  "out_features", "lattice", "q", "k", "bias"}`` for the Voronoi layout, ``{"type": "lattice", "code": "box",
  "codec": BoxCodec.to_dict(), ...}``, ``{"type": "scalar", "bits", "group_size", ...}``); the activation and KV
  quantizers come from ``config["activations"]`` / ``config["kv"]``.
* **quantize on load**: ``LlmquantConfig(config)`` with an llmquant config (a ``Config``, its dict, or a YAML
  path), no ``quantized``: ``from_pretrained(fp_dir, quantization_config=LlmquantConfig(cfg))`` rotates and
  RTN-quantizes the model (:mod:`llmquant.hf.on_load`); afterwards ``rotation_plan`` and ``quantized`` are
  filled in, so ``save_pretrained`` writes a pre-quantized folder.

Validation is the project's: the llmquant config goes through :func:`llmquant.config.config_from_dict` (unknown
keys, wrong types are errors with the key path), an unknown top-level key or another ``format_version`` is a
one-line :class:`~llmquant.config.ConfigError`.
"""

from __future__ import annotations

import os

from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "llmquant"
_KEYS = ("quant_method", "format_version", "llmquant_version", "config", "rotation_plan", "quantized")


class LlmquantConfig(QuantizationConfigMixin):
    """``quantization_config`` for llmquant models (see the module docstring for the fields)."""

    def __init__(self, config=None, rotation_plan: dict | None = None, quantized: dict | None = None,
                 format_version: int | None = None, llmquant_version: str | None = None,
                 quant_method: str = QUANT_METHOD, **unknown):
        import llmquant
        from llmquant.config import Config, ConfigError, config_from_dict, config_to_dict, load_config

        if unknown:
            raise ConfigError(f"quantization_config: unknown keys {sorted(unknown)}; expected a subset of {list(_KEYS)}")
        if quant_method != QUANT_METHOD:
            raise ConfigError(f"quantization_config.quant_method: {quant_method!r}, expected {QUANT_METHOD!r}")
        if format_version is not None and format_version != llmquant.FORMAT_VERSION:
            raise ConfigError(
                f"quantization_config.format_version: {format_version!r} is not read by this llmquant "
                f"(reads {llmquant.FORMAT_VERSION}); re-quantize with this version or install the llmquant that wrote it"
            )
        if config is None:
            raise ConfigError("quantization_config.config: missing; pass an llmquant config (Config, dict or YAML path)")
        if isinstance(config, (str, os.PathLike)):
            config = load_config(config)
        cfg = config if isinstance(config, Config) else config_from_dict(config)
        if quantized is not None and not isinstance(quantized, dict):
            raise ConfigError(f"quantization_config.quantized: expected a mapping, got {type(quantized).__name__}")
        if rotation_plan is not None and not isinstance(rotation_plan, dict):
            raise ConfigError(f"quantization_config.rotation_plan: expected a mapping or null, "
                              f"got {type(rotation_plan).__name__}")
        self.quant_method = QUANT_METHOD
        self.format_version = llmquant.FORMAT_VERSION
        self.llmquant_version = llmquant_version or llmquant.__version__
        self.config = config_to_dict(cfg)
        self.rotation_plan = rotation_plan
        self.quantized = quantized

    @property
    def llmquant_config(self):
        """The typed llmquant :class:`~llmquant.config.Config`."""
        from llmquant.config import config_from_dict

        return config_from_dict(self.config)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _KEYS}

    def __iter__(self):
        yield from self.to_dict().items()


from llmquant.hf import _finish_pending

_finish_pending(__name__)
