"""Per-layer guard: flag a layer whose quantization error is out of line, while the run goes on.

Policy only (the runner measures, this module judges).  After decoder layer ``i`` the runner has

* ``rel_out_err``: ``||Y_q - Y_fp|| / ||Y_fp||`` of the layer's output on the calibration inputs, and
* ``linear_rel_err[role]``: ``sqrt(tr(E H E^T) / tr(W H W^T))`` per linear (``E = W - Q``, ``H`` its input
  Hessian), plus ``linear_diag[role]``: what the weight quantizer saw (see
  :func:`llmquant.quant.weights.weight_diagnostics`).

A layer is flagged when its output error exceeds ``max_rel_err``, or exceeds ``ratio`` times the
median of the layers before it (after ``min_history`` layers; a jump is suspicious even below the
absolute bound).  A linear is flagged on the same two rules against ``max_linear_rel_err`` and the
median of the same role in earlier layers.  Each flag is a dict ``{"layer", "role", "metric", "value",
"threshold", "cause"}``; ``cause`` names the most likely reason from the diagnostics (weights beyond the
code's range, an ill-conditioned Hessian, heavy-tailed rows), or says that none stood out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardPolicy:
    """Thresholds of the guard (config section ``guard``)."""

    enabled: bool = True
    max_rel_err: float = 0.1
    max_linear_rel_err: float = 0.3
    ratio: float = 4.0
    min_history: int = 2

    @classmethod
    def from_config(cls, gcfg) -> GuardPolicy:
        if gcfg is None:
            return cls()
        return cls(enabled=gcfg.enabled, max_rel_err=gcfg.max_rel_err, max_linear_rel_err=gcfg.max_linear_rel_err,
                   ratio=gcfg.ratio, min_history=gcfg.min_history)


def likely_cause(diag: dict | None) -> str:
    """One phrase naming the most likely reason for a large error, from a linear's diagnostics."""
    if not diag:
        return "no diagnostics recorded for this linear"
    reasons = []
    ov = diag.get("overload_frac")
    if ov is not None and ov > 0.01:
        reasons.append(f"{100 * ov:.1f}% of the 8-vectors overload every beta (weights beyond the code's range: "
                       "use more/larger betas or a larger q)")
    peak = diag.get("row_peak")
    if peak is not None and peak > 8.0:
        reasons.append(f"heavy-tailed rows (max |w|/row RMS = {peak:.1f} after rotation)")
    retries = diag.get("damp_retries", 0)
    if retries:
        reasons.append(f"ill-conditioned Hessian (Cholesky needed {retries} damping increase(s))")
    mean_frac = diag.get("mean_energy_frac")
    if mean_frac is not None and mean_frac > 0.5 and not diag.get("bias_correction"):
        reasons.append(f"{100 * mean_frac:.0f}% of the input energy is its mean (a constant component): set "
                       "weights.bias_correction: true")
    mis = diag.get("misalignment")
    if mis is not None and mis > 50:
        reasons.append(f"the weight's energy sits where the inputs have little (misalignment {mis:.0f}; ~1 is "
                       f"typical): any code's error is amplified ~{mis ** 0.5:.0f}x relative to the output "
                       "(norm gains with a large range folded into the weights: try rotation.norm_gains: online; "
                       "else input outliers: more bits or finer scales)")
    cond = diag.get("hessian_diag_ratio")
    if cond is not None and cond > 1e4:
        reasons.append(f"input outliers (max/median diag(H) = {cond:.3g})")
    return "; ".join(reasons) if reasons else "no single cause stood out (quantization noise of this code)"


def _too_high(value: float, history: list[float], bound: float, policy: GuardPolicy) -> float | None:
    """The threshold ``value`` breaks, or None."""
    if value > bound:
        return bound
    if len(history) >= policy.min_history:
        med = statistics.median(history)
        if med > 0 and value > policy.ratio * med:
            return policy.ratio * med
    return None


def check_layer(report: dict, history: list[dict], policy: GuardPolicy) -> list[dict]:
    """Flags for one layer ``report`` given the reports of the layers before it (see module docstring)."""
    if not policy.enabled:
        return []
    flags = []
    i = report["layer"]
    err = report["rel_out_err"]
    thr = _too_high(err, [r["rel_out_err"] for r in history], policy.max_rel_err, policy)
    diags = report.get("linear_diag", {})
    if thr is not None:
        worst = max(report.get("linear_rel_err", {}).items(), key=lambda kv: kv[1] or 0.0, default=(None, None))[0]
        cause = (f"worst linear: {worst} ({likely_cause(diags.get(worst))})" if worst is not None
                 else "activation/KV quantization (no quantized linears in this layer)")
        flags.append({"layer": i, "role": "layer", "metric": "rel_out_err", "value": err, "threshold": thr,
                      "cause": cause})
    for role, lerr in report.get("linear_rel_err", {}).items():
        if lerr is None:
            continue
        past = [r["linear_rel_err"][role] for r in history if r.get("linear_rel_err", {}).get(role) is not None]
        thr = _too_high(lerr, past, policy.max_linear_rel_err, policy)
        if thr is not None:
            flags.append({"layer": i, "role": role, "metric": "linear_rel_err", "value": lerr, "threshold": thr,
                          "cause": likely_cause(diags.get(role))})
    return flags


def format_flag(f: dict) -> str:
    """One log line for a flag."""
    return (f"WARNING layer {f['layer']} {f['role']}: {f['metric']} {f['value']:.4f} > {f['threshold']:.4f} "
            f"-- likely cause: {f['cause']}")
