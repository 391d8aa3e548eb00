"""Calibration inputs per decoder layer (mixed attention types) and the per-layer guard."""

from __future__ import annotations

import torch

from llmquant.models.adapters import get_adapter
from llmquant.models.tiny import tiny_random_model
from llmquant.quant.guard import GuardPolicy, check_layer, format_flag, likely_cause
from llmquant.quant.runner import _run_layer, capture_layer_inputs


def _reference_layer_outputs(model, ids):
    """Hidden states entering and leaving every decoder layer in the model's own forward."""
    seen = []
    hooks = [layer.register_forward_hook(lambda _m, args, out, seen=seen: seen.append(out[0] if isinstance(out, tuple)
                                                                                       else out))
             for layer in get_adapter(model).layers(model)]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out.hidden_states, seen


def test_each_layer_gets_its_own_rope_and_mask_gemma3():
    """Gemma3 alternates sliding (local RoPE, windowed mask) and full attention (global RoPE): the
    captured kwargs must be each layer's own, so replaying layer by layer reproduces the model's forward
    exactly (reusing layer 0's kwargs for the full-attention layer does not)."""
    model = tiny_random_model("gemma3", seed=0, dtype=torch.float64).eval()
    types = model.config.layer_types
    assert "full_attention" in types and "sliding_attention" in types
    ad = get_adapter(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    inps, kws = capture_layer_inputs(model, ad, ids, batch_size=2)
    assert len(inps) == 1 and len(kws) == len(ad.layers(model))
    hidden, outs = _reference_layer_outputs(model, ids)
    x = inps
    for i, layer in enumerate(ad.layers(model)):
        with torch.no_grad():
            x = _run_layer(layer, x, kws[i])
        torch.testing.assert_close(x[0], outs[i], rtol=0, atol=1e-12)
    full = types.index("full_attention")
    cos_local, cos_global = kws[0][0]["position_embeddings"][0], kws[full][0]["position_embeddings"][0]
    assert not torch.allclose(cos_local, cos_global)  # local theta 1e4 vs global theta 1e6
    # the old behaviour (layer 0's kwargs everywhere) gives a different output for the full-attention layer
    with torch.no_grad():
        wrong = _run_layer(ad.layers(model)[full], [hidden[full]], kws[0])[0]
    assert (wrong - outs[full]).abs().max() > 1e-6


def test_capture_restores_layers():
    model = tiny_random_model("llama", seed=0).eval()
    ad = get_adapter(model)
    before = [id(m) for m in ad.layers(model)]
    capture_layer_inputs(model, ad, torch.zeros(1, 5, dtype=torch.long), batch_size=1)
    assert [id(m) for m in ad.layers(model)] == before


def _rep(i, err, lin=None, diag=None):
    return {"layer": i, "rel_out_err": err, "linear_rel_err": lin or {}, "linear_diag": diag or {}}


def test_guard_absolute_and_relative_rules():
    pol = GuardPolicy(max_rel_err=0.1, max_linear_rel_err=0.3, ratio=4.0, min_history=2)
    hist = [_rep(0, 0.01, {"o": 0.05}), _rep(1, 0.012, {"o": 0.06})]
    assert check_layer(_rep(2, 0.02, {"o": 0.07}), hist, pol) == []
    # a jump: 0.06 > 4 x median(0.01, 0.012) although below the absolute bound
    flags = check_layer(_rep(2, 0.06, {"o": 0.07}), hist, pol)
    assert [(f["role"], f["metric"]) for f in flags] == [("layer", "rel_out_err")]
    assert abs(flags[0]["threshold"] - 4 * 0.011) < 1e-12
    # absolute bound, with no history, names the worst linear and its cause
    diag = {"down": {"row_peak": 12.0, "overload_frac": 0.05, "damp_retries": 0}}
    flags = check_layer(_rep(0, 0.2, {"o": 0.05, "down": 0.4}, diag), [], pol)
    assert {(f["role"], f["metric"]) for f in flags} == {("layer", "rel_out_err"), ("down", "linear_rel_err")}
    layer_flag = next(f for f in flags if f["role"] == "layer")
    assert "down" in layer_flag["cause"] and "overload" in layer_flag["cause"]
    assert "WARNING layer 0" in format_flag(layer_flag)
    assert check_layer(_rep(0, 0.2), [], GuardPolicy(enabled=False)) == []


def test_likely_cause_phrases():
    assert "overload" in likely_cause({"overload_frac": 0.2})
    assert "heavy-tailed" in likely_cause({"row_peak": 20.0})
    assert "damping" in likely_cause({"damp_retries": 2})
    assert "no single cause" in likely_cause({"row_peak": 4.0, "overload_frac": 0.0, "damp_retries": 0})


def test_likely_cause_names_mean_and_misalignment():
    assert "bias_correction" in likely_cause({"mean_energy_frac": 0.95, "bias_correction": False})
    assert "bias_correction" not in likely_cause({"mean_energy_frac": 0.95, "bias_correction": True})
    assert "misalignment 300" in likely_cause({"misalignment": 300.0})
