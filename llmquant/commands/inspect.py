"""``llmquant inspect MODEL [--rotation hadamard] [--json]``: outlier statistics before/after rotation.

Loads MODEL (``smollm2-135m``, a hub id, a local directory or a .gguf file), runs a few calibration
sequences, records the measures of :mod:`llmquant.models.outliers`, applies :func:`rotate_model`, measures
again and reports the logit change.  JSON output::

    {"model": ..., "calibration": {...}, "relative_logit_error": float,
     "weights": {"max_over_rms_before": float, "after": float},
     "activations": {"kurtosis_before": float, "kurtosis_after": float, "per_role_before": {...},
                     "per_role_after": {...}},
     "rotation": RotationPlan dict}

With ``--rotation none`` only the "before" values are present.
"""

from __future__ import annotations

import json
import sys

DTYPES = {"float32": "float32", "float64": "float64", "bfloat16": "bfloat16", "float16": "float16"}


def register(sub) -> None:
    p = sub.add_parser("inspect", help="outlier statistics of a model before/after Hadamard rotation")
    p.add_argument("model", help="smollm2-135m, a Hugging Face id, a local directory or a .gguf file")
    p.add_argument("--rotation", choices=("hadamard", "none"), default="hadamard")
    p.add_argument("--seed", type=int, default=0, help="rotation and calibration-window seed")
    p.add_argument("--n-samples", type=int, default=4, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--data-dir", default=None, help="offline data folder (default: $LLMQUANT_DATA_DIR)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--no-online-down", action="store_true", help="skip the online down_proj Hadamard")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def inspect_model(model, tokenizer, rotation: str = "hadamard", seed: int = 0, n_samples: int = 4,
                  seq_len: int = 128, data_dir=None, online_down: bool = True) -> dict:
    """Measure, optionally rotate ``model`` in place, measure again; returns the JSON-able report."""
    from llmquant.models.calib import calibration_ids
    from llmquant.models.outliers import activation_stats, relative_error, weight_max_over_rms
    from llmquant.models.rotate import rotate_model

    ids, source = calibration_ids(tokenizer, n_samples, seq_len, seed, data_dir=data_dir,
                                  vocab_size=model.config.vocab_size)
    report: dict = {"calibration": {"source": source, "n_samples": n_samples, "seq_len": seq_len, "seed": seed}}
    w_before = weight_max_over_rms(model)
    a_before, logits_before = activation_stats(model, ids)
    report["weights"] = {"max_over_rms_before": w_before}
    report["activations"] = {"kurtosis_before": a_before["kurtosis"], "per_role_before": a_before["per_role"]}
    if rotation == "hadamard":
        plan = rotate_model(model, seed=seed, online_down=online_down)
        a_after, logits_after = activation_stats(model, ids)
        report["relative_logit_error"] = relative_error(logits_after, logits_before)
        report["weights"]["after"] = weight_max_over_rms(model)
        report["activations"]["kurtosis_after"] = a_after["kurtosis"]
        report["activations"]["per_role_after"] = a_after["per_role"]
        report["rotation"] = plan.to_dict()
    return report


def run(args) -> int:
    import torch

    from llmquant.models.loading import load_model

    model, tokenizer = load_model(args.model, dtype=getattr(torch, DTYPES[args.dtype]))
    report = {"model": args.model, **inspect_model(
        model, tokenizer, rotation=args.rotation, seed=args.seed, n_samples=args.n_samples, seq_len=args.seq_len,
        data_dir=args.data_dir, online_down=not args.no_online_down)}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    out = sys.stdout
    out.write(f"model {args.model}; calibration: {report['calibration']['source']}\n")
    w, a = report["weights"], report["activations"]
    out.write(f"weights max|W|/rms(W) (mean over linears): before {w['max_over_rms_before']:.3f}")
    out.write(f", after {w['after']:.3f}\n" if "after" in w else "\n")
    out.write(f"activation kurtosis (mean over linear inputs): before {a['kurtosis_before']:.3f}")
    out.write(f", after {a['kurtosis_after']:.3f}\n" if "kurtosis_after" in a else "\n")
    for role, v in a["per_role_before"].items():
        after = a.get("per_role_after", {}).get(role)
        out.write(f"  {role:5s} {v:10.3f}" + (f" -> {after:10.3f}\n" if after is not None else "\n"))
    if "relative_logit_error" in report:
        out.write(f"relative logit error after rotation: {report['relative_logit_error']:.3e}\n")
    return 0
