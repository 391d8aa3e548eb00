"""``llmquant run CONFIG [--set ...] [--out DIR]``: quantize + evaluate + print a table.

Table columns: method, setting, W/A/KV bits per entry, perplexity per dataset, and the
difference to the floating-point model under the same evaluation settings.  The FP
perplexity is computed once per (model, dtype, seed, eval settings) and cached in
``runs/.fp-cache/`` (``--fp-cache DIR``).  A config that quantizes nothing (the FP baseline)
writes only ``DIR/results.json`` (no weights copy).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def register(sub) -> None:
    from llmquant.commands.quantize import add_config_arguments

    p = sub.add_parser("run", help="quantize + evaluate a config and print a results table")
    add_config_arguments(p)
    p.add_argument("--fp-cache", default="runs/.fp-cache", help="folder caching FP perplexities")
    p.add_argument("--no-fp", action="store_true", help="skip the FP reference (no delta column)")
    p.add_argument("--json", action="store_true", help="print results.json at the end")
    p.set_defaults(func=main)


def _fp_key(cfg) -> str:
    e, m = cfg.eval, cfg.model
    key = json.dumps([m.spec, m.dtype, m.seed, list(e.ppl), e.context, e.max_tokens], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fp_perplexity(cfg, cache_dir: str | None, progress: bool) -> dict:
    """FP perplexities of the config's model under its eval settings (cached on disk)."""
    import torch

    from llmquant.api import load_fp
    from llmquant.commands.eval import evaluate

    path = Path(cache_dir) / f"{_fp_key(cfg)}.json" if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    model, tokenizer = load_fp(cfg.model.spec, cfg.model.dtype, cfg.model.device, cfg.model.seed)
    with torch.no_grad():
        res = evaluate(model, tokenizer, list(cfg.eval.ppl), cfg.eval.context, cfg.eval.max_tokens,
                       cfg.eval.data_dir, progress=progress)["ppl"]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
    return res


def _setting(name: str, method: str) -> str:
    tail = name.rsplit("-", 1)[-1]
    return "-" if method == "fp" or tail == method else tail


def format_table(rows: list[dict], datasets: list[str]) -> str:
    head = ["method", "setting", "W bits", "A bits", "KV bits"] + [f"{d} ppl" for d in datasets] + \
           [f"Δ {d}" for d in datasets]
    lines = [head]
    for r in rows:
        cells = [r["method"], r["setting"]] + [f"{r['bits'][k]:.3f}" for k in ("weights", "activations", "kv")]
        cells += [f"{r['ppl'][d]:.3f}" for d in datasets]
        cells += [("-" if r.get("delta", {}).get(d) is None else f"{r['delta'][d]:+.3f}") for d in datasets]
        lines.append(cells)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in lines)


def main(args) -> int:
    import torch

    from llmquant.api import bits_for_model, check_outputs, default_out_dir, load_fp, quantize_to_checkpoint
    from llmquant.commands.eval import evaluate
    from llmquant.config import config_to_dict, load_config
    from llmquant.quant.checkpoint import _write_json, update_results, write_marker

    cfg = load_config(args.config, args.overrides)
    progress = not args.no_progress
    out = Path(args.out) if args.out else default_out_dir(cfg)
    datasets = list(cfg.eval.ppl)
    check_outputs(out, args.overwrite)  # before any work: never write into a folder llmquant did not make
    if cfg.quantizes_anything:
        model, tokenizer, report, out = quantize_to_checkpoint(cfg, out, progress=progress, overwrite=args.overwrite)
        bits = report["bits"]
    else:
        model, tokenizer = load_fp(cfg.model.spec, cfg.model.dtype, cfg.model.device, cfg.model.seed)
        bits = bits_for_model(cfg, model)
    with torch.no_grad():
        res = evaluate(model, tokenizer, datasets, cfg.eval.context, cfg.eval.max_tokens, cfg.eval.data_dir,
                       progress=progress)
    if cfg.quantizes_anything:
        results = update_results(out, res)
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "results")
        results = {**res, "bits": bits, "config": config_to_dict(cfg)}
        _write_json(out / "results.json", results)
    del model
    rows = []
    fp = None
    if not args.no_fp:
        fp = res["ppl"] if not cfg.quantizes_anything else fp_perplexity(cfg, args.fp_cache, progress)
        rows.append({"method": "fp", "setting": "-", "bits": {"weights": 16.0, "activations": 16.0, "kv": 16.0},
                     "ppl": fp, "delta": {d: 0.0 for d in datasets}})
    if cfg.quantizes_anything or args.no_fp:
        delta = {d: (res["ppl"][d] - fp[d]) if fp else None for d in datasets}
        rows.append({"method": cfg.method, "setting": _setting(cfg.name, cfg.method), "bits": bits,
                     "ppl": res["ppl"], "delta": delta})
        if fp:
            # the FP reference's protocol (same as the run's evaluation): `llmquant eval` keeps fp_ppl only for
            # a re-evaluation with the same protocol
            fp_details = {d: {k: res["ppl_details"][d].get(k) for k in ("tokens", "context")} for d in datasets}
            results = update_results(out, {"fp_ppl": fp, "delta_ppl": delta, "fp_ppl_details": fp_details}) \
                if cfg.quantizes_anything else results
    print(f"\n{cfg.name}  (eval: context {cfg.eval.context}, max_tokens {cfg.eval.max_tokens}; saved to {out})")
    print(format_table(rows, datasets))
    if args.json:
        print(json.dumps(results, indent=2, default=float))
    return 0
