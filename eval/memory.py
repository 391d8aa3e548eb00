"""``llmquant bench memory MODEL``: what a model and its KV cache hold at run time, and decode speed.

One generation in this process: the first ``T`` tokens of the WikiText-2 test split (one prefill forward
into the cache :func:`llmquant.quant.kv_cache.make_cache` gives; logits of the last position only, as a
server computes them), then ``N`` greedy new tokens (the first
from the prefill logits, the other ``N - 1`` from one-token decode steps).  Printed as JSON:

* ``held_bytes``: bytes the model and its cache hold after generation, each storage counted once:
  ``parameters``, ``buffers``, ``attributes`` (any tensor kept in a module attribute outside the
  parameter/buffer dicts, e.g. a kept decoded weight ``_w_cache``, also inside tuples/lists/dicts),
  ``kv_cache`` (a ``DynamicCache``'s key/value tensors, or a ``LatticeKVCache``'s allocated packed stores),
  ``total``;
* ``peak_rss_above_baseline_bytes``: peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after the imports when the kernel allows; ``peak_reset`` says whether it
  did) over loading and generation, minus the resident size after the imports (``baseline_rss_bytes``);
  ``generate_peak_rss_above_baseline_bytes``: the same with the peak reset again once the model is
  loaded (``loaded_rss_bytes``), i.e. the peak of the generation alone; Linux only (else null);
* ``prefill_s``, ``decode_s_per_token`` (mean wall time of the one-token steps), ``tokens``.
"""

from __future__ import annotations

import json
import sys
import time


def add_arguments(p) -> None:
    p.add_argument("model", help="llmquant checkpoint directory or model spec (e.g. smollm2-135m)")
    p.add_argument("--prompt-tokens", type=int, default=4096, help="T: prompt length in tokens (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy new tokens (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="offline data folder (default: $LLMQUANT_DATA_DIR)")
    p.add_argument("--weight-cache", choices=("none", "decoded"), default=None,
                   help="quantized linears: none (packed, decoded per call) or decoded (kept); default: as loaded")
    p.add_argument("--backend", choices=("reference", "triton", "native", "auto"), default=None,
                   help="forward backend of the quantized modules (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tensors_in(obj, depth: int = 0):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors_in(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item, depth + 1)


def held_bytes(model, cache=None) -> dict:
    """Bytes held by ``model`` (parameters, buffers, tensors in other module attributes) and ``cache``;
    each storage counted once, in the first category that reaches it."""
    seen: set = set()

    def add(t) -> int:
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device.type)
        if st.data_ptr() == 0 or key in seen:
            return 0
        seen.add(key)
        return st.nbytes()

    out = {"parameters": 0, "buffers": 0, "attributes": 0, "kv_cache": 0}
    for p in model.parameters():
        out["parameters"] += add(p)
    for b in model.buffers():
        out["buffers"] += add(b)
    for mod in model.modules():
        for name, value in vars(mod).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            for t in _tensors_in(value):
                out["attributes"] += add(t)
    if cache is not None:
        for layer in getattr(cache, "layers", []):
            stores = [getattr(layer, n, None) for n in ("k_store", "v_store")]
            tensors = [t for s in stores if s is not None for t in s.t.values()]
            tensors += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
            for t in tensors:
                out["kv_cache"] += add(t)
    out["total"] = sum(out.values())
    return out


def prompt_ids(tokenizer, n: int, data_dir=None):
    """The first ``n`` tokens of the WikiText-2 test split, ``[1, n]``."""
    from llmquant.data.text import load_text, tokenize_text

    ids = tokenize_text(tokenizer, load_text("wikitext2", "test", data_dir))
    if ids.numel() < n:
        raise ValueError(f"bench memory: WikiText-2 has {ids.numel()} tokens, fewer than --prompt-tokens {n}")
    return ids.reshape(1, -1)[:, :n]


def run(model, tokenizer, prompt_tokens: int, new_tokens: int, data_dir=None) -> dict:
    """Prefill + greedy decode with a fresh :func:`make_cache` cache; returns timings, tokens and held bytes."""
    import torch

    from llmquant.quant.kv_cache import make_cache

    if prompt_tokens < 1 or new_tokens < 1:
        raise ValueError("bench memory: --prompt-tokens and --new-tokens must be >= 1")
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, prompt_tokens, data_dir).to(device)
    cache = make_cache(model)
    out_tokens = []
    steps = []
    with torch.no_grad():
        t0 = time.perf_counter()
        logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        prefill = time.perf_counter() - t0
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        del logits
        out_tokens.append(int(nxt))
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            logits = model(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            steps.append(time.perf_counter() - t0)
            out_tokens.append(int(nxt))
    return {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "cache": type(cache).__name__,
            "prefill_s": round(prefill, 3),
            "decode_s_per_token": round(sum(steps) / len(steps), 4) if steps else None,
            "tokens": out_tokens, "held_bytes": held_bytes(model, cache)}


def main(args) -> int:
    import torch
    import transformers  # noqa: F401

    from llmquant.api import load
    from llmquant.quant.kv_cache import make_cache  # noqa: F401

    baseline = _status_kb("VmRSS")
    peak_reset = _reset_peak()
    try:
        model, tokenizer = load(args.model, device=args.device, backend=args.backend)
    except (OSError, ValueError) as exc:
        print(f"error: bench memory: cannot load {args.model}: {exc}", file=sys.stderr)
        return 2
    if tokenizer is None:
        print(f"error: bench memory: {args.model} has no tokenizer", file=sys.stderr)
        return 2
    if args.weight_cache is not None:
        from llmquant.quant.linear import set_weight_cache

        set_weight_cache(model, args.weight_cache)
    load_peak = _status_kb("VmHWM")
    loaded = _status_kb("VmRSS")
    gen_reset = _reset_peak()
    try:
        res = run(model, tokenizer, args.prompt_tokens, args.new_tokens, args.data_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peak = _status_kb("VmHWM")
    backends = sorted({m.backend for m in model.modules() if isinstance(getattr(m, "backend", None), str)})
    from llmquant.lattice import native

    res = {"model": str(args.model), "weight_cache": args.weight_cache or "as loaded",
           "threads": torch.get_num_threads(), "backend": backends, "native_kernels": native.available(), **res,
           "baseline_rss_bytes": baseline, "peak_rss_bytes": peak, "peak_reset": peak_reset,
           "load_peak_rss_bytes": load_peak, "loaded_rss_bytes": loaded,
           "peak_rss_above_baseline_bytes": (None if None in (peak, baseline, load_peak) or not gen_reset
                                             else max(peak, load_peak) - baseline),
           "generate_peak_rss_above_baseline_bytes": None if None in (peak, baseline) else peak - baseline}
    print(json.dumps(res))
    return 0
