"""``llmquant quantize CONFIG [--set a.b=c ...] [--out DIR]``: quantize and save a checkpoint.

Resumable: layer states go to ``DIR.work`` as they finish; rerunning the same command skips
finished layers.  The checkpoint is written to a temp dir and renamed into ``DIR``.
"""

from __future__ import annotations

import json


def add_config_arguments(parser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.max_tokens=16384 (repeatable)")
    parser.add_argument("--out", default=None, help="checkpoint directory (default: runs/<config name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out (and DIR.work) even when llmquant did not write it (default: refuse)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars; log one line per layer")


def register(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model from a config and save an llmquant checkpoint")
    add_config_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from llmquant.api import quantize_to_checkpoint
    from llmquant.config import load_config

    cfg = load_config(args.config, args.overrides)
    _, _, report, out = quantize_to_checkpoint(cfg, args.out, progress=not args.no_progress,
                                               overwrite=args.overwrite)
    bits = report["bits"]
    print(f"saved {out}  ({cfg.name}: W {bits['weights']:.3f} / A {bits['activations']:.3f} / "
          f"KV {bits['kv']:.3f} bits per entry, {report['seconds']:.0f} s)")
    if report["layers"]:
        worst = max(report["layers"], key=lambda r: r["rel_out_err"])
        print(f"largest per-layer relative output error: layer {worst['layer']} {worst['rel_out_err']:.4f}")
    print(json.dumps({"out": str(out), "bits": bits}))
    return 0
