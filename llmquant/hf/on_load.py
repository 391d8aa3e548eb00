"""Quantize on load: RTN llmquant quantization of a floating-point model, no calibration data.

``quantize_rtn(model, cfg) -> {"rotation_plan", "specs"}`` does what :func:`llmquant.api.quantize` does for
``weights.algorithm: rtn``, minus the calibration forward passes (which for RTN only produce the per-layer
error report, never the codes):

1. rotation (:func:`llmquant.models.rotate.rotate_model`, when ``rotation.enabled``): residual / online
   Hadamards, V/O, Q/K and the ``llmquant`` attention function;
2. every decoder-layer linear of every role -> :func:`llmquant.quant.weights.quantize_linear` with no Hessian
   (nearest lattice point per 8-vector of ``W / s``, ``s`` = fp16 row RMS; or scalar RTN with clipping search),
   one activation quantizer shared per input group (:data:`llmquant.quant.structure.INPUT_GROUPS`);
3. the KV quantizers; the backend of ``model.backend``; ``model.embed_dtype`` (embeddings / ``lm_head`` storage).

The codes are bit-identical to ``llmquant.api.quantize(model, cfg)`` with the same config (tested).  Calibrated
quantization (``algorithm: gptq``, LDLQ with bias correction) needs data and stays ``llmquant quantize``; a config
asking for it is refused with that advice.
"""

from __future__ import annotations

import torch


def check_rtn(cfg) -> None:
    """Quantize on load cannot calibrate: ``weights.algorithm`` must be ``rtn`` when weights are quantized."""
    from llmquant.config import ConfigError

    if cfg.weights.method != "none" and cfg.weights.algorithm != "rtn":
        raise ConfigError(
            f"weights.algorithm: {cfg.weights.algorithm!r} needs calibration data, which quantize-on-load does not "
            "have; set weights.algorithm: rtn, or run the calibrated path `llmquant quantize CONFIG --out DIR`"
        )


@torch.no_grad()
def quantize_rtn(model, cfg) -> dict:
    """Rotate and RTN-quantize ``model`` in place (see module docstring); sets ``model.llmquant_specs`` /
    ``model.llmquant_config`` like :func:`llmquant.api.quantize`.  Returns ``{"rotation_plan", "specs"}``."""
    from llmquant.config import validate_for_model
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.kv import attach_kv_quantizers
    from llmquant.quant.linear import set_backend
    from llmquant.quant.structure import (
        get_linear,
        linear_shapes,
        present_roles,
        roles_with_act_quantizers,
        set_linear,
    )
    from llmquant.quant.weights import module_spec, quantize_linear, weight_betas

    check_rtn(cfg)
    adapter = get_adapter(model)
    validate_for_model(cfg, int(model.config.hidden_size), linear_shapes(model, adapter))
    plan = None
    if cfg.rotation.enabled:
        from llmquant.models.rotate import rotate_model

        r = cfg.rotation
        plan = rotate_model(model, {"seed": r.seed, "online_down": r.online_down, "v_o": r.v_o, "qk": r.qk,
                                    "norm_gains": r.norm_gains}).to_dict()
    specs: dict[int, dict] = {}
    betas = (weight_betas(cfg.weights) if cfg.weights.method == "lattice" and cfg.weights.code == "voronoi"
             else None)
    for i, layer in enumerate(adapter.layers(model)):
        roles = present_roles(layer, adapter)
        layer_specs = {}
        if cfg.weights.method != "none":
            for role, act_q in roles_with_act_quantizers(roles, cfg.activations):
                lin = get_linear(layer, adapter, role)
                qmod, _ = quantize_linear(lin, None, cfg.weights, act_q=act_q, betas=betas)
                qmod.to(lin.weight.device)
                set_linear(layer, adapter, role, qmod)
                layer_specs[role] = module_spec(qmod)
        attach_kv_quantizers(layer, adapter, cfg.kv)
        layer.to(next(layer.parameters()).device)  # the KV quantizers' betas, built on the CPU
        specs[i] = layer_specs
    set_backend(model, cfg.model.backend)
    from llmquant.models.embed_dtype import apply_embed_dtype

    apply_embed_dtype(model, cfg)  # model.embed_dtype, as llmquant.api.quantize
    model.llmquant_specs = specs
    model.llmquant_config = cfg
    return {"rotation_plan": plan, "specs": specs}
