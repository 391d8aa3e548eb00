"""Turn one ``nn.Linear`` (+ its input Hessian) into a :class:`LatticeLinear` or :class:`ScalarLinear`.

Lattice (E8, NestQuant-style): ``s[n] = RMS(W[n, :])`` rounded to fp16, so ``W / s`` has unit
variance per entry; rows are cut into 8-vectors along the input dim and each is coded by the
nested lattice quantizer (one beta index per 8-vector).  With ``algorithm: gptq`` the 8-column
groups are processed left to right with LDLQ error feedback (:func:`gptq_quantize`, width 8);
the Hessian of ``W / s`` is the Hessian of ``W`` (row scaling does not touch the input side).

Scalar: static per-channel / per-group ``(scale, zero)`` from the original weight (with the
clipping search), then GPTQ column by column (width 1) or plain rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from llmquant.quant import scalar as sq
from llmquant.quant.gptq import gptq_quantize
from llmquant.quant.hessian import relative_error_from_hessian
from llmquant.quant.linear import LatticeLinear, ScalarLinear


def _bias(linear: nn.Linear):
    return None if linear.bias is None else linear.bias.detach().to(torch.float32)


def weight_betas(wcfg) -> torch.Tensor:
    """The shipped β set optimised for ``weights.choose`` (``sets_min_error`` for min_error; before issue 9
    the first-fit set was loaded for both rules -- identical for every shipped config: k = 2 for q = 4, 8, 14)."""
    from llmquant.lattice.beta_search import load_beta_set

    return load_beta_set(wcfg.lattice, wcfg.q, wcfg.k, choose=wcfg.choose).to(torch.float32)


def weight_codec(wcfg):
    """The box codec of ``weights.code: box`` (shipped setting ``load_box_setting(box_bits, box_variant)``)."""
    from llmquant.lattice.box import shipped_box_codec

    return shipped_box_codec(wcfg.box_bits, wcfg.box_variant)


def quantize_codec_linear(linear: nn.Linear, hessian: torch.Tensor | None, wcfg, codec, act_q=None,
                          with_bias: bool = False) -> tuple[LatticeLinear, dict]:
    """Weights of ``linear`` coded by ``codec`` (e.g. the box code): per-row RMS scale rounded to fp16,
    ``codec.quantize`` on the 8-vectors of ``W / s``, LDLQ (``gptq_quantize`` width 8) with ``algorithm: gptq``."""
    w = linear.weight.detach().to(torch.float32)
    n, k = w.shape
    s = w.pow(2).mean(dim=1).sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s)).half().float()
    wn = w / s[:, None]
    words = torch.zeros(n, k // 8, dtype=torch.int32, device=w.device)
    stats: dict = {}
    if wcfg.algorithm == "gptq" and hessian is not None:
        def quant_cols(wg: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            wd, x_hat = codec.quantize(wg)
            words[:, int(cols[0]) // 8] = wd
            return x_hat

        gptq_quantize(wn, hessian, quant_cols, width=8, block_size=wcfg.block_size, percdamp=wcfg.percdamp,
                      stats=stats)
    else:
        words = codec.encode(wn.reshape(n, k // 8, 8))
    layer = LatticeLinear(k, n, codec=codec, bias=linear.bias is not None or with_bias, act_q=act_q)
    layer.set_words(words, s, _bias(linear))
    info = dict(stats)
    info["diag"] = weight_diagnostics(wn, hessian, stats)
    if hessian is not None:
        info["rel_err"] = relative_error_from_hessian(w, layer.dequantized_weight(), hessian)
    return layer, info


def weight_diagnostics(wn: torch.Tensor, hessian: torch.Tensor | None, stats: dict,
                       overload_frac: float | None = None) -> dict:
    """What the per-layer guard (:mod:`llmquant.quant.guard`) reads to name a likely cause.

    ``wn [N, K]``: the weight divided by its per-row RMS.  Returns ``row_peak`` = max |wn| (a Gaussian
    row of K entries gives about sqrt(2 ln K) ~ 3.5-4.5; much more means outliers the rotation did not
    spread), ``hessian_diag_ratio`` = max / median of diag(H) (input-channel outliers), ``misalignment`` =
    ``(||wn||^2 tr(H) / K) / tr(wn H wn^T)`` (weight energy in directions the inputs barely use), the Cholesky
    ``damp_retries``, and for lattice codes ``overload_frac``: the fraction of 8-vectors that overload
    even the chosen β (their error is not bounded by the code's cell)."""
    d = {"row_peak": float(wn.abs().max()) if wn.numel() else 0.0,
         "damp_retries": int(stats.get("damping_retries", 0))}
    if hessian is not None:
        diag = torch.diagonal(hessian).float()
        med = float(diag.median())
        d["hessian_diag_ratio"] = float(diag.max()) / med if med > 0 else float("inf")
        # (||W||_F^2 tr(H)/K) / tr(W H W^T): 1 when the weight's energy sits where the inputs' does; a code's
        # (near-isotropic) error is amplified by its square root relative to the signal
        h = hessian.float()
        signal = float(((wn @ h) * wn).sum())
        d["misalignment"] = (float(wn.pow(2).sum()) * float(h.trace()) / h.shape[0] / signal
                             if signal > 0 else float("inf"))
    if overload_frac is not None:
        d["overload_frac"] = overload_frac
    return d


def quantize_lattice_linear(linear: nn.Linear, hessian: torch.Tensor | None, wcfg, act_q=None,
                            betas: torch.Tensor | None = None, with_bias: bool = False) -> tuple[LatticeLinear, dict]:
    """E8 weights for ``linear`` (see module docstring); returns the module and ``{"rel_err": ...}``.
    ``weights.code: box``: :func:`quantize_codec_linear` with :func:`weight_codec`."""
    from llmquant.lattice.nested import NestedLatticeQuantizer

    if getattr(wcfg, "code", "voronoi") != "voronoi":
        return quantize_codec_linear(linear, hessian, wcfg, weight_codec(wcfg), act_q=act_q, with_bias=with_bias)

    w = linear.weight.detach().to(torch.float32)
    n, k = w.shape
    betas = weight_betas(wcfg) if betas is None else betas
    nlq = NestedLatticeQuantizer(wcfg.lattice, wcfg.q, betas, choose=wcfg.choose)
    s = w.pow(2).mean(dim=1).sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s)).half().float()
    wn = w / s[:, None]
    codes = torch.zeros(n, k // 8, 8, dtype=torch.uint8, device=w.device)
    bidx = torch.zeros(n, k // 8, dtype=torch.uint8, device=w.device)
    stats: dict = {}  # GPTQ damping used / Cholesky retries, reported in info
    overload = torch.zeros(n, k // 8, dtype=torch.bool, device=w.device)
    if wcfg.algorithm == "gptq" and hessian is not None:
        def quant_cols(wg: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            r = nlq.quantize_full(wg)
            b = int(cols[0]) // 8
            codes[:, b] = r.codes
            bidx[:, b] = r.beta_idx
            overload[:, b] = r.overload
            return r.x_hat

        gptq_quantize(wn, hessian, quant_cols, width=8, block_size=wcfg.block_size, percdamp=wcfg.percdamp,
                      stats=stats)
    else:
        r = nlq.quantize_full(wn.reshape(n, k // 8, 8))
        codes, bidx, overload = r.codes, r.beta_idx, r.overload
    layer = LatticeLinear(k, n, lattice=wcfg.lattice, q=wcfg.q, k=betas.numel(),
                          bias=linear.bias is not None or with_bias, act_q=act_q)
    layer.set_quantized(codes, bidx, s, betas, _bias(linear))
    info = dict(stats)
    info["diag"] = weight_diagnostics(wn, hessian, stats, overload_frac=float(overload.float().mean()))
    if hessian is not None:
        info["rel_err"] = relative_error_from_hessian(w, layer.dequantized_weight(), hessian)
    return layer, info


def quantize_scalar_linear(linear: nn.Linear, hessian: torch.Tensor | None, wcfg, act_q=None,
                           with_bias: bool = False) -> tuple[ScalarLinear, dict]:
    """INT-b weights for ``linear`` (see module docstring); returns the module and ``{"rel_err": ...}``."""
    w = linear.weight.detach().to(torch.float32)
    n, k = w.shape
    scale, zero = sq.grouped_params(w, wcfg.bits, wcfg.group_size, wcfg.symmetric, wcfg.clip_search)
    s_full, z_full = sq.expand_groups(scale, k), sq.expand_groups(zero, k)
    stats: dict = {}  # GPTQ damping used / Cholesky retries, reported in info
    if wcfg.algorithm == "gptq" and hessian is not None:
        def quant_cols(wg: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return sq.fake_quant(wg, s_full[:, cols], z_full[:, cols], wcfg.bits)

        qw = gptq_quantize(w, hessian, quant_cols, width=1, block_size=wcfg.block_size,
                           percdamp=wcfg.percdamp, act_order=wcfg.act_order, stats=stats)
    else:
        qw = sq.fake_quant(w, s_full, z_full, wcfg.bits)
    # qw lies on the grid: s * (c - z); recover c exactly
    codes = torch.clamp(torch.round(qw / s_full + z_full), 0, 2**wcfg.bits - 1).to(torch.uint8)
    layer = ScalarLinear(k, n, bits=wcfg.bits, group_size=wcfg.group_size, bias=linear.bias is not None or with_bias,
                         act_q=act_q)
    layer.set_quantized(codes, scale, zero, _bias(linear))
    info = dict(stats)
    info["diag"] = weight_diagnostics(w / w.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-30), hessian, stats)
    if hessian is not None:
        info["rel_err"] = relative_error_from_hessian(w, layer.dequantized_weight(), hessian)
    return layer, info


def quantize_linear(linear: nn.Linear, hessian: torch.Tensor | None, wcfg, act_q=None, betas=None,
                    mean: torch.Tensor | None = None):
    """Dispatch on ``wcfg.method`` ("lattice" or "scalar"), with bias correction when ``mean`` is given.

    Bias correction (``weights.bias_correction``; ``mean = mu``, the mean calibration input ``[K]``): the
    layer's bias absorbs the mean output error, ``b' = b + (W - Q) mu``, so the output error on an input
    ``x`` is ``(W - Q)(x - mu)`` and the quantizer minimizes ``tr(E C E^T)`` with the covariance
    ``C = H - mu mu^T`` instead of ``tr(E H E^T)``.  Never worse on the calibration data (the optimal bias for
    any ``Q``), and decisive when the inputs carry a large constant component that ``W`` nearly annihilates:
    the inputs of Gemma-3-270M's q/k/v and gate/up (its normalized residual stream) hold 95-99% of their
    energy in their mean, so an uncorrected code's error on that one direction dominates the layer output
    (Hessian-weighted errors 0.2-0.6 with, 0.1-0.2 without it).  Layers without a bias gain one (``[N]``
    float32, counted in the weight bits).  ``info["rel_err"]`` is the corrected output error relative to
    ``tr(W H W^T)``.
    """
    objective = hessian
    if mean is not None and hessian is not None:
        objective = hessian - torch.outer(mean, mean).to(hessian)
        objective = (objective + objective.T) / 2
    correct = mean is not None
    if wcfg.method == "lattice":
        layer, info = quantize_lattice_linear(linear, objective, wcfg, act_q=act_q, betas=betas, with_bias=correct)
    elif wcfg.method == "scalar":
        layer, info = quantize_scalar_linear(linear, objective, wcfg, act_q=act_q, with_bias=correct)
    else:
        raise ValueError(f"weights.method: {wcfg.method!r} does not quantize weights")
    if correct:
        w = linear.weight.detach().to(torch.float32)
        err = w - layer.dequantized_weight().to(w.device)
        base = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if linear.bias is None else _bias(linear)
        layer.bias.copy_(base + err @ mean.to(w))
        if hessian is not None:
            info["rel_err"] = relative_error_from_hessian(w, w - err, hessian, h_error=objective)
        info["bias_correction"] = True
    return layer, info


def empty_like_spec(spec: dict, device=None) -> nn.Module:
    """An empty quantized module (buffers to be filled by ``load_state_dict``) from its saved spec.

    ``device`` (e.g. ``"meta"``): where the module's own tensors are created; a codec layout's codec is built
    first, outside it, because its tables (β set, levels) are plain tensors that no state dict restores."""
    import contextlib

    on = torch.device(device) if device is not None else contextlib.nullcontext()
    if spec["type"] == "lattice" and spec.get("code", "voronoi") != "voronoi":
        from llmquant.lattice.codec import codec_from_dict

        codec = codec_from_dict(spec["codec"])
        if codec.kind != spec["code"]:
            raise ValueError(f"module spec code {spec['code']!r} does not match its codec kind {codec.kind!r}")
        with on:
            return LatticeLinear(spec["in_features"], spec["out_features"], codec=codec, bias=spec["bias"])
    with on:
        return _empty_table_free(spec)


def _empty_table_free(spec: dict) -> nn.Module:
    """:func:`empty_like_spec` of a Voronoi-lattice or scalar spec (no codec tables)."""
    if spec["type"] == "lattice":
        return LatticeLinear(spec["in_features"], spec["out_features"], lattice=spec["lattice"], q=spec["q"],
                             k=spec["k"], bias=spec["bias"])
    if spec["type"] == "scalar":
        return ScalarLinear(spec["in_features"], spec["out_features"], bits=spec["bits"],
                            group_size=spec["group_size"], bias=spec["bias"])
    raise ValueError(f"unknown quantized module type {spec['type']!r} in checkpoint")


def module_spec(layer: nn.Module) -> dict:
    """JSON-able description of a quantized module, enough to rebuild it empty (see :func:`empty_like_spec`)."""
    if isinstance(layer, LatticeLinear) and layer.code != "voronoi":
        return {"type": "lattice", "in_features": layer.in_features, "out_features": layer.out_features,
                "code": layer.code, "codec": layer.codec.to_dict(), "bias": layer.bias is not None}
    if isinstance(layer, LatticeLinear):
        return {"type": "lattice", "in_features": layer.in_features, "out_features": layer.out_features,
                "lattice": layer.lattice, "q": layer.q, "k": int(layer.betas.numel()), "bias": layer.bias is not None}
    if isinstance(layer, ScalarLinear):
        return {"type": "scalar", "in_features": layer.in_features, "out_features": layer.out_features,
                "bits": layer.bits, "group_size": layer.group_size, "bias": layer.bias is not None}
    raise TypeError(f"module_spec: {type(layer).__name__} is not a quantized linear")
