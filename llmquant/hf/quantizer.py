"""``LlmquantHfQuantizer``: transformers' ``from_pretrained`` / ``save_pretrained`` for llmquant models.

Registered as quant method ``"llmquant"`` (:func:`llmquant.hf.register`).  transformers builds the model from
``config.json`` on the meta device, then calls the hooks below:

**Pre-quantized** (``config.json`` carries ``quantization_config``, :class:`~llmquant.hf.config.LlmquantConfig`):

* ``_process_model_before_weight_loading``: :func:`llmquant.quant.checkpoint.install_quantized_structure`, the
  same rebuild as :func:`llmquant.quant.checkpoint.load_quantized`: rotation modules of the plan
  (``InputRotatedLinear`` around ``down_proj``, ``OutputRotated`` norms, Q/K Hadamard, the ``llmquant`` attention
  function), then ``LatticeLinear`` / ``ScalarLinear`` shells from the module specs with the activation and KV
  quantizers of the config.  No ``nn.Linear`` is left for a quantized role.  With ``model.embed_dtype`` the
  input embeddings and ``lm_head`` get that storage dtype (:mod:`llmquant.models.embed_dtype`), as saved, and
  ``update_dtype`` keeps the model's compute dtype at the config's ``model.dtype``.  The quantized linears'
  own tensors (codes / packed words, β indices, scales, biases) are built on the meta device
  (``install_quantized_structure(..., meta_shells=True)``): no memory and no zero fill before transformers
  assigns the checkpoint's tensors.  Everything else is built under ``torch.device("cpu")``: codec objects hold
  plain tensors (the box code's β table, levels) that no state dict restores, so they must be real, and the
  rotation modules and activation / KV quantizers are small.  transformers would fill a name the files lack
  with an uninitialised tensor, so the names and shapes of the meta shells are recorded and checked against
  the files' headers after loading (:func:`llmquant.quant.checkpoint.check_shells_loaded`).  Without weights
  files (a ``state_dict=`` argument) the shells are built real and zero-filled, as before.
* transformers then loads every tensor of the safetensors file(s) by name into the model's parameters and
  buffers (codes, β indices, scales, Hadamard signs, activation / KV β sets), honouring ``device_map`` /
  ``max_memory``.  One module object reachable under several names (the activation quantizer shared by an
  input group: q/k/v share one, gate/up share one) has its buffers stored once, under one of the names.
  transformers (5.x) counts the other names as missing and overwrites the shared buffer with an uninitialised
  tensor after loading (it only handles such module sharing for remote code), so those names are excluded
  from its missing-key report and ``_process_model_after_weight_loading`` reads the shared buffers again from
  the checkpoint files (:meth:`LlmquantHfQuantizer._restore_shared`).
* ``_process_model_after_weight_loading``: ``check_shells_loaded``,
  :func:`llmquant.quant.checkpoint.validate_loaded_values` (finite
  floats, codes and β indices in range, the same checks as ``load_quantized``), the forward backend of the
  config (``model.backend``, as ``load_quantized`` sets it), and ``model.llmquant_specs`` /
  ``model.llmquant_config`` so that :func:`llmquant.api.save` also works on the result.

**Quantize on load** (``from_pretrained(fp_dir, quantization_config=LlmquantConfig(cfg))``): the FP weights load
normally; ``_process_model_after_weight_loading`` runs :func:`llmquant.hf.on_load.quantize_rtn` (rotation +
RTN, no calibration) and writes the rotation plan and module specs into the quantization config, so a later
``save_pretrained`` writes a pre-quantized folder.  Needs the whole model on one device (no ``device_map``
spreading it over several).

``save_pretrained``: ``is_serializable`` is True; the state dict is the model's own (packed buffers included),
``config.json`` gets ``quantization_config.to_dict()``; ``max_shard_size`` shards it like any model (every
tensor of one quantized row stays in one tensor, see ``docs/vllm.md``).
"""

from __future__ import annotations

import os
import re

import torch
from transformers.quantizers.base import HfQuantizer


def _shared_buffers(model) -> dict[str, list[str]]:
    """``{first name: all names}`` of the persistent buffers of modules reachable under several names."""
    seen: dict[int, list[str]] = {}
    modules = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if module._buffers:
            seen.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    out = {}
    for key, names in seen.items():
        if len(names) < 2:
            continue
        module = modules[key]
        for buf, t in module._buffers.items():
            if t is not None and buf not in module._non_persistent_buffers_set:
                out[f"{names[0]}.{buf}"] = [f"{n}.{buf}" for n in names]
    return out


class LlmquantHfQuantizer(HfQuantizer):
    """transformers quantizer of quant method ``"llmquant"`` (see the module docstring)."""

    requires_calibration = False

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        if self.pre_quantized and quantization_config.quantized is None:
            from llmquant.config import ConfigError

            raise ConfigError("quantization_config.quantized: missing in a pre-quantized model's config.json; "
                              "the checkpoint is incomplete, re-save it with llmquant")
        if not self.pre_quantized:
            from llmquant.hf.on_load import check_rtn

            check_rtn(quantization_config.llmquant_config)

    def update_dtype(self, dtype):
        """With ``model.embed_dtype`` the compute dtype is the llmquant config's ``model.dtype``: transformers would
        otherwise take the embeddings' storage dtype (``save_pretrained`` writes the first floating parameter's
        dtype into ``config.json``) for the whole model."""
        cfg = self.quantization_config.llmquant_config
        if self.pre_quantized and cfg.model.embed_dtype not in (None, cfg.model.dtype):
            return getattr(torch, cfg.model.dtype)
        return dtype

    def validate_environment(self, device_map=None, **kwargs):
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("llmquant models cannot be offloaded to disk (device_map has 'disk'); "
                             "raise max_memory['cpu'] so the rest fits in CPU memory")
        if not self.pre_quantized and isinstance(device_map, dict) and len(set(device_map.values())) > 1:
            raise ValueError("quantize on load needs the model on one device; load with device_map=None (or one "
                             "device), then save_pretrained and reload the quantized folder with a device_map")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            return model
        from llmquant.models.embed_dtype import apply_embed_dtype
        from llmquant.quant.checkpoint import install_quantized_structure, shell_records

        qc = self.quantization_config
        where = getattr(model.config, "name_or_path", None) or "."
        self._checkpoint_files = list(checkpoint_files or [])
        meta = bool(self._checkpoint_files)  # shells on meta only where check_shells_loaded can read the headers
        with torch.device("cpu"):
            install_quantized_structure(model, qc.llmquant_config, qc.rotation_plan, qc.quantized, where,
                                        source="config.json (quantization_config)", meta_shells=meta)
        apply_embed_dtype(model, qc.llmquant_config)  # model.embed_dtype: stored so in the weights files
        self._shells = shell_records(model) if meta else []
        self._shared = _shared_buffers(model)
        ignore = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
        ignore.update(f"^{re.escape(n)}$" for names in self._shared.values() for n in names)
        model._keys_to_ignore_on_load_missing = ignore
        return model

    def _restore_shared(self, model) -> None:
        """Reload the buffers of modules shared under several names from the checkpoint files (see the module
        docstring); each must be stored under one of its names."""
        from safetensors import safe_open

        from llmquant.quant.checkpoint import CheckpointError

        if not self._shared:
            return
        where = {}
        for f in self._checkpoint_files:
            with safe_open(str(f), framework="pt") as fh:
                where.update(dict.fromkeys(fh.keys(), str(f)))
        for target, names in self._shared.items():
            stored = next((n for n in names if n in where), None)
            if stored is None:
                raise CheckpointError(f"{getattr(model.config, 'name_or_path', 'checkpoint')}: none of {names[:3]} "
                                      "is in the weights files; the checkpoint is incomplete, re-save it")
            with safe_open(where[stored], framework="pt") as fh:
                value = fh.get_tensor(stored)
            module_name, _, buf = target.rpartition(".")
            module = model.get_submodule(module_name)
            old = module._buffers[buf]
            if value.shape != old.shape or value.dtype != old.dtype:
                raise CheckpointError(f"{where[stored]}: tensor {stored} is {value.dtype} {list(value.shape)}, "
                                      f"expected {old.dtype} {list(old.shape)}; the checkpoint is corrupt")
            module._buffers[buf] = value.to(old.device)

    def _process_model_after_weight_loading(self, model, **kwargs):
        from llmquant.quant.linear import set_backend

        self.validate_environment(device_map=getattr(model, "hf_device_map", None))  # "auto" resolved by now

        qc = self.quantization_config
        cfg = qc.llmquant_config
        if self.pre_quantized:
            from llmquant.quant.checkpoint import validate_loaded_values

            self._restore_shared(model)
            where = getattr(model.config, "name_or_path", None) or "model"
            if self._shells:
                from llmquant.quant.checkpoint import check_shells_loaded

                check_shells_loaded(model, self._shells, self._checkpoint_files, os.fspath(where))
            validate_loaded_values(model, os.fspath(where))
            model.llmquant_specs = {int(i): s for i, s in qc.quantized.items()}
            model.llmquant_config = cfg
        else:
            from llmquant.hf.on_load import quantize_rtn

            out = quantize_rtn(model, cfg)
            qc.rotation_plan = out["rotation_plan"]
            qc.quantized = {str(i): s for i, s in out["specs"].items()}
            # what ``from_pretrained`` of the saved folder will see: a pre-quantized model
            self.pre_quantized = True
        set_backend(model, cfg.model.backend)
        return model

    def get_state_dict_and_metadata(self, model):
        """The model's state dict with each shared module's buffers under one name only (safetensors refuses
        aliases and transformers only dedupes declared tied weights)."""
        state = model.state_dict()
        for names in _shared_buffers(model).values():
            for alias in names[1:]:
                state.pop(alias, None)
        return state, {}

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


from llmquant.hf import _finish_pending

_finish_pending(__name__)
