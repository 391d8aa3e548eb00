"""``llmquant eval PATH_OR_MODEL [--ppl wikitext2,c4] [--max-tokens N] [--tasks ...] [--json]
[--backend reference|triton|auto] [--device-map auto [--max-memory 0=20GiB,cpu=64GiB]]``.

Perplexity with the standard protocol (:mod:`llmquant.eval.perplexity`: non-overlapping
windows of ``--context`` tokens of the test split, C4 validation), and optional downstream
tasks (:func:`llmquant.eval.downstream.run_tasks`).  For an llmquant checkpoint the results are
merged into its ``results.json`` (``"ppl"``, ``"ppl_details"``, ``"tasks"``); context and token
budget default to the checkpoint config's ``eval`` section.
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity / downstream tasks of a checkpoint or an FP model")
    p.add_argument("model", help="llmquant checkpoint directory, or a model spec (smollm2-135m, hub id, dir, .gguf)")
    p.add_argument("--ppl", default=None, help="comma-separated datasets: wikitext2,c4 (default: the config's, "
                                               "or wikitext2; 'none' to skip)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on evaluated tokens (default: all / config)")
    p.add_argument("--context", type=int, default=None, help="window length (default 2048 / config)")
    p.add_argument("--data-dir", default=None, help="offline data folder (default: $LLMQUANT_DATA_DIR)")
    p.add_argument("--tasks", default=None, help="comma-separated downstream tasks (arc_easy, piqa, ...)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for tasks and perplexity windows")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    add_runtime_arguments(p)
    p.set_defaults(func=main)


def add_runtime_arguments(p) -> None:
    """``--backend``, ``--device-map``, ``--max-memory``, ``--weight-cache`` (shared by eval, generate and serve)."""
    from llmquant.config.schema import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="forward of the quantized linears and online Hadamards: reference (PyTorch), triton "
                        "(kernels; CPU only with TRITON_INTERPRET=1), native (compiled CPU decode-GEMV for "
                        "box-coded layers at decode sizes), auto (Triton on CUDA, native on CPU, else reference). "
                        "Default: the checkpoint's model.backend (auto)")
    p.add_argument("--device-map", default=None,
                   help="place the model with accelerate instead of --device: auto, balanced, sequential, or "
                        "one device (cpu, cuda:0); parts that do not fit stay in CPU memory")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map: per-device caps, e.g. '0=20GiB,cpu=64GiB'")
    from llmquant.config.schema import WEIGHT_CACHE_MODES

    p.add_argument("--weight-cache", choices=WEIGHT_CACHE_MODES, default=None,
                   help="reference forward of the quantized linears: none (weights stay packed, decoded per call "
                        "into a shared work buffer) or decoded (each layer keeps its decoded weight: faster, "
                        "dense-model memory). Default: the checkpoint's model.weight_cache (none)")


def parse_max_memory(text: str | None) -> dict | None:
    """``'0=20GiB,cpu=64GiB'`` -> ``{0: '20GiB', 'cpu': '64GiB'}`` (GPU indices as ints), None -> None."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--max-memory: {item!r} is not DEVICE=SIZE (e.g. 0=20GiB or cpu=64GiB)")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = value.strip()
    return out


def load_from_args(args):
    """``llmquant.api.load`` with ``--device`` / ``--backend`` / ``--device-map`` / ``--max-memory``, then
    ``--weight-cache`` (:func:`llmquant.quant.linear.set_weight_cache`)."""
    from llmquant.api import load

    max_memory = parse_max_memory(getattr(args, "max_memory", None))
    device_map = getattr(args, "device_map", None)
    if max_memory is not None and device_map is None:
        raise ValueError("--max-memory needs --device-map (e.g. --device-map auto)")
    model, tokenizer = load(args.model, device=getattr(args, "device", "auto"), backend=getattr(args, "backend", None),
                            device_map=device_map, max_memory=max_memory)
    if getattr(args, "weight_cache", None) is not None:
        from llmquant.quant.linear import set_weight_cache

        set_weight_cache(model, args.weight_cache)
    return model, tokenizer


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip() and t.strip() != "none"]


def evaluate(model, tokenizer, datasets, context, max_tokens, data_dir=None, batch_size=1, progress=True) -> dict:
    """``{"ppl": {name: float}, "ppl_details": {name: dict}}`` for each dataset."""
    from llmquant.eval.perplexity import perplexity

    if tokenizer is None and datasets:
        raise ValueError("this model has no tokenizer, so perplexity on text is unavailable (use --ppl none)")
    ppl, details = {}, {}
    for name in datasets:
        r = perplexity(model, tokenizer, dataset=name, context=context, max_tokens=max_tokens,
                       data_dir=data_dir, progress=progress, batch_size=batch_size)
        ppl[name] = r["ppl"]
        details[name] = r
    return {"ppl": ppl, "ppl_details": details}


def run_downstream(model, tokenizer, tasks, limit, batch_size, data_dir=None) -> dict:
    try:
        from llmquant.eval.downstream import run_tasks
    except ModuleNotFoundError as exc:
        if exc.name == "llmquant.eval.downstream":
            raise RuntimeError("downstream tasks are not available in this build (llmquant.eval.downstream "
                               "is missing); run perplexity only") from None
        raise
    return run_tasks(model, tokenizer, tasks, limit=limit, batch_size=batch_size, data_dir=data_dir)


def _with_fp_reference(path, results: dict) -> dict:
    """``results`` plus ``fp_ppl`` / ``delta_ppl`` entries for the datasets just evaluated: the stored FP
    perplexity is kept only when it was measured with the same protocol (tokens, context) as the new one
    (``fp_ppl_details``; older checkpoints: the protocol of the stored quantized perplexity it was compared
    with); otherwise it is set to null, so a 65,536-token perplexity is never compared with a 16,384-token FP."""
    from llmquant.quant.checkpoint import read_results

    old = read_results(path)
    fp, fp_details = dict(old.get("fp_ppl") or {}), dict(old.get("fp_ppl_details") or {})
    fp_ppl, delta = {}, {}
    for name, v in results["ppl"].items():
        new = results["ppl_details"][name]
        ref = fp_details.get(name) or (old.get("ppl_details") or {}).get(name) or {}
        same = all(ref.get(k) == new.get(k) for k in ("tokens", "context")) and fp.get(name) is not None
        fp_ppl[name] = fp[name] if same else None
        delta[name] = v - fp[name] if same else None
    if not fp_ppl:
        return results
    return {**results, "fp_ppl": fp_ppl, "delta_ppl": delta}


def main(args) -> int:
    import torch

    from llmquant.quant.checkpoint import is_checkpoint, read_meta, update_results

    ckpt = is_checkpoint(args.model)
    context, max_tokens, datasets, data_dir = 2048, None, ["wikitext2"], args.data_dir
    if ckpt:
        ev = read_meta(args.model)["config"].get("eval", {})
        context = ev.get("context", context)
        max_tokens = ev.get("max_tokens", max_tokens)
        datasets = list(ev.get("ppl", datasets))
        data_dir = data_dir or ev.get("data_dir")
    if args.context is not None:
        context = args.context
    if args.max_tokens is not None:
        max_tokens = args.max_tokens
    if args.ppl is not None:
        datasets = _split(args.ppl)
    model, tokenizer = load_from_args(args)
    with torch.no_grad():
        results = evaluate(model, tokenizer, datasets, context, max_tokens, data_dir, args.batch_size,
                           progress=not args.no_progress)
        tasks = _split(args.tasks)
        if tasks:
            results["tasks"] = run_downstream(model, tokenizer, tasks, args.limit, args.batch_size, data_dir)
    if ckpt:
        update_results(args.model, _with_fp_reference(args.model, results))
    if args.json:
        print(json.dumps(results, indent=2, default=float))
    else:
        for name, v in results["ppl"].items():
            d = results["ppl_details"][name]
            print(f"{name:10s} ppl {v:10.4f}   ({d['tokens']} tokens, context {d['context']})")
        for task, metrics in results.get("tasks", {}).items():
            print(f"{task:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    sys.stdout.flush()
    return 0
