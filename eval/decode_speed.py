"""``llmquant bench decode``: end-to-end greedy decode speed of quantized models vs the FP16 model.

Speed does not depend on what the weights are, so this benchmark needs no checkpoint and no data: it
builds a randomly initialized model of a named shape (:data:`SHAPES`: the architecture of a real
checkpoint, weights ``N(0, 0.02²)``, seeded), quantizes a copy of it per each ``--config`` (YAML, with
``--set`` overrides applied to every config; calibration on random token ids, so use
``weights.algorithm=rtn`` or accept a meaningless GPTQ), and measures in one process, one model at a time:

* ``decode_tokens_per_s``: ``batch`` x the one-token greedy steps per second after a ``prompt_tokens``
  random prompt (a prefill forward into the cache of :func:`llmquant.quant.kv_cache.make_cache`, the packed
  cache for a KV-quantized model, then ``new_tokens - 1`` steps through it, timed together); the median of
  ``repeats`` runs after one warm-up run;
* ``prefill_ms``: the prefill forward of the prompt (median of ``repeats``);
* ``weight_bytes``: bytes of the model's parameters and buffers on the device (each storage once);
* ``peak_bytes`` (CUDA): ``torch.cuda.max_memory_allocated`` over the timed runs;
* ``kernel_fallbacks``: the reasons the dispatcher logged for running a reference forward instead of a
  Triton kernel (empty when every quantized module ran a kernel).

``--cuda-graph`` (CUDA only) adds, per row, the same decode timed through a transformers ``StaticCache`` with
the one-token step (forward + greedy argmax) captured once in a CUDA graph and replayed per token
(:func:`measure_static`): ``graph_decode_ms_per_token``, ``graph_decode_tokens_per_s``,
``graph_speedup_vs_fp16`` (ours graphed / FP16 graphed), ``graph_tokens_match`` (the replayed tokens equal the
same static-cache steps run eagerly), or ``graph_error`` (why capture was not possible, e.g. a packed lattice
KV cache, which is not a static cache).  Batch-1 eager decoding is bound by per-call host work (Python,
dispatch, kernel launches); the graph removes it for FP16 and ours alike, leaving the kernels' own time.

Rows report ``speedup_vs_fp16`` = ours / FP16 tokens per second from the same run.  The FP model runs in
``--dtype`` (fp16 on CUDA, fp32 on CPU).  On CPU the quantized models run the PyTorch reference.
"""

from __future__ import annotations

import inspect
import json
import logging
import statistics
import time

import torch

#: model shapes (transformers LlamaConfig fields) of real checkpoints; weights are random
SHAPES = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rope_theta": 100000.0},
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": False},
}


def add_arguments(p) -> None:
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m",
                   help="model shape (random weights; default: %(default)s)")
    p.add_argument("--config", action="append", default=[],
                   help="quantization config YAML (repeatable); none: only the FP model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every --config, e.g. weights.algorithm=rtn (repeatable)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calib-samples", type=int, default=4, help="random-token calibration rows (default: 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 (default: fp16 on CUDA, else fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time decode with a StaticCache and the one-token step captured in a CUDA graph "
                        "(CUDA only)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def random_model(shape: str, seed: int, device) -> torch.nn.Module:
    """A float32 ``LlamaForCausalLM`` of ``SHAPES[shape]`` with seeded ``N(0, 0.02²)`` weights, norms 1."""
    import transformers

    cfg = transformers.LlamaConfig(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                   **SHAPES[shape])
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                torch.nn.init.normal_(p, std=0.02)
    return model.float().eval()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _held_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class _Fallbacks(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.reasons: list[str] = []

    def emit(self, record):
        self.reasons.append(record.getMessage())


@torch.no_grad()
def measure(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """Prefill ms and decode tokens/s of ``model`` on ``prompt [B, T]`` (medians of ``repeats``).

    One run = a prefill forward of the prompt into a fresh cache (last position's logits only), then
    ``new_tokens - 1`` greedy one-token steps through the same cache, each timed as a whole (no subtraction
    of separately timed parts, so noise cannot make a time negative)."""
    from llmquant.quant.kv_cache import make_cache

    device = prompt.device
    cache_kw = _cache_kw(model)

    def one_run() -> tuple[float, float]:
        cache = make_cache(model, prompt.shape[0])
        _sync(device)
        t0 = time.perf_counter()
        logits = model(prompt, **{cache_kw: cache}, logits_to_keep=1).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits = model(nxt, **{cache_kw: cache}, logits_to_keep=1).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        return t1 - t0, time.perf_counter() - t1

    one_run()  # warm-up: compilation, autotuning, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [one_run() for _ in range(max(1, repeats))]
    prefill = statistics.median(r[0] for r in runs)
    step = statistics.median(r[1] for r in runs) / (new_tokens - 1)
    res = {"prefill_ms": round(prefill * 1e3, 3), "decode_ms_per_token": round(step * 1e3, 4),
           "decode_tokens_per_s": round(prompt.shape[0] / step, 2), "weight_bytes": _held_bytes(model)}
    if device.type == "cuda":
        res["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return res


def _cache_kw(model) -> str:
    """The cache keyword of ``model.forward``: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def set_cache_length(cache, length: int) -> None:
    """Rewind every layer of a transformers ``StaticCache`` to ``length`` tokens (its in-place
    ``cumulative_length`` counter; the stored keys/values past it are overwritten by the next updates)."""
    layers = getattr(cache, "layers", None) or []
    done = 0
    for layer in layers:
        n = getattr(layer, "cumulative_length", None)
        if isinstance(n, torch.Tensor):
            n.fill_(length)
            done += 1
        elif isinstance(n, int):
            layer.cumulative_length = length
            done += 1
    if not layers or done != len(layers):
        raise RuntimeError(f"set_cache_length: {type(cache).__name__} has no per-layer cumulative_length counters "
                           "(this transformers version's StaticCache is not supported by the graph benchmark)")


@torch.no_grad()
def measure_static(model, prompt: torch.Tensor, new_tokens: int, repeats: int, graph: bool) -> dict:
    """Decode through a transformers ``StaticCache`` (fixed addresses), optionally with a CUDA graph.

    One model call per step: ``tok [B, 1]`` -> forward with ``logits_to_keep=1`` -> argmax -> ``out [B, 1]``.
    The prompt is prefilled eagerly once; the step runs eagerly twice (on a side stream when ``graph``: Triton
    compilation, allocator warm-up), the cache is rewound to the prompt (:func:`set_cache_length`) and, when
    ``graph``, the step is captured in a ``torch.cuda.CUDAGraph``.  A run = rewind, then ``new_tokens - 1``
    steps (graph replays, or eager calls), feeding each ``out`` back into ``tok``; timed as a whole; the median
    of ``repeats`` runs.  Returns ``{"decode_ms_per_token", "decode_tokens_per_s", "tokens"}`` (``tokens`` the
    ``[B, new_tokens - 1]`` greedy tokens of the last run, for comparing graph and eager)."""
    from transformers import StaticCache

    device = prompt.device
    batch, t = prompt.shape
    kw = _cache_kw(model)
    cache = StaticCache(config=model.config, max_cache_len=t + new_tokens + 2)
    first = model(prompt, **{kw: cache}, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    tok = first.clone()
    steps = new_tokens - 1
    toks = torch.empty((batch, steps), dtype=torch.long, device=device)

    def step() -> torch.Tensor:
        return model(tok, **{kw: cache}, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)

    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        set_cache_length(cache, t)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = step()
    else:
        for _ in range(2):
            step()
    timings = []
    for _ in range(max(1, repeats) + 1):  # the first run warms the replay path up and is not counted
        set_cache_length(cache, t)
        tok.copy_(first)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            if graph:
                g.replay()
            else:
                out = step()
            tok.copy_(out)
            toks[:, i] = out[:, 0]
        _sync(device)
        timings.append(time.perf_counter() - t0)
    per = statistics.median(timings[1:]) / steps
    return {"decode_ms_per_token": round(per * 1e3, 4), "decode_tokens_per_s": round(batch / per, 2),
            "tokens": toks.cpu()}


def _graph_fields(model, prompt, new_tokens: int, repeats: int) -> dict:
    """The ``graph_*`` fields of a row (module docstring); a failure to capture is reported, not raised."""
    from llmquant.quant.kv_cache import kv_quantized_attention

    if kv_quantized_attention(model):
        return {"graph_error": "KV-quantized model: its packed LatticeKVCache is not a static cache"}
    try:
        eager = measure_static(model, prompt, new_tokens, 1, graph=False)
        res = measure_static(model, prompt, new_tokens, repeats, graph=True)
    except Exception as exc:  # noqa: BLE001 - a benchmark row reports why capture failed; other rows still run
        return {"graph_error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"graph_decode_ms_per_token": res["decode_ms_per_token"],
            "graph_decode_tokens_per_s": res["decode_tokens_per_s"],
            "graph_tokens_match": bool(torch.equal(res["tokens"], eager["tokens"]))}


def run(shape: str, configs: list[str], overrides: list[str], prompt_tokens: int, new_tokens: int, batch: int,
        repeats: int, calib_samples: int, device, dtype: torch.dtype, seed: int, cuda_graph: bool = False) -> dict:
    from llmquant.api import quantize
    from llmquant.config import load_config
    from llmquant.quant.linear import set_backend

    gen = torch.Generator().manual_seed(seed)
    vocab = SHAPES[shape]["vocab_size"]
    prompt = torch.randint(3, vocab, (batch, prompt_tokens), generator=gen).to(device)
    rows = []
    fp = random_model(shape, seed, device)
    fp_row = {"model": "fp", "dtype": str(dtype).replace("torch.", "")}
    fp_row.update(measure(fp.to(dtype), prompt, new_tokens, repeats))
    if cuda_graph:
        fp_row.update(_graph_fields(fp, prompt, new_tokens, repeats))
    rows.append(fp_row)
    del fp
    backend = "triton" if device.type == "cuda" else "reference"
    for path in configs:
        cfg = load_config(path, list(overrides) + [f"model.backend={backend}"])
        model = random_model(shape, seed, device)
        calib = torch.randint(3, vocab, (calib_samples, cfg.calibration.seq_len), generator=gen).to(device)
        t0 = time.perf_counter()
        report = quantize(model, cfg, calib=calib, progress=False, log=lambda *a, **k: None)
        q_s = time.perf_counter() - t0
        set_backend(model, backend)
        handler = _Fallbacks()
        klog = logging.getLogger("llmquant.kernels")
        old_level = klog.level
        klog.setLevel(logging.INFO)
        klog.addHandler(handler)
        from llmquant.kernels import dispatch

        dispatch._LOGGED.clear()  # log every reason again for this model
        try:
            row = {"model": cfg.name, "config": path, "overrides": list(overrides), "backend": backend,
                   "dtype": str(dtype).replace("torch.", ""), "quantize_s": round(q_s, 1),
                   "bits": report.get("bits")}
            row.update(measure(model.to(dtype), prompt, new_tokens, repeats))
            if cuda_graph:
                row.update(_graph_fields(model, prompt, new_tokens, repeats))
        finally:
            klog.removeHandler(handler)
            klog.setLevel(old_level)
        row["kernel_fallbacks"] = sorted(set(handler.reasons))
        row["speedup_vs_fp16"] = round(row["decode_tokens_per_s"] / fp_row["decode_tokens_per_s"], 3) \
            if row["decode_tokens_per_s"] and fp_row["decode_tokens_per_s"] else None
        row["weight_bytes_vs_fp"] = round(row["weight_bytes"] / fp_row["weight_bytes"], 4)
        if row.get("graph_decode_tokens_per_s") and fp_row.get("graph_decode_tokens_per_s"):
            row["graph_speedup_vs_fp16"] = round(row["graph_decode_tokens_per_s"]
                                                 / fp_row["graph_decode_tokens_per_s"], 3)
        rows.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"shape": shape, "shape_config": SHAPES[shape], "weights": f"random N(0, 0.02^2), seed {seed}",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch": batch, "repeats": repeats,
            "rows": rows}


def main(args) -> int:
    from llmquant.api import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("llmquant bench decode: --device cuda but CUDA is not available; use --device cpu")
        return 2
    name = args.dtype or ("float16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        print(f"llmquant bench decode: --dtype {name!r} is not a floating dtype (float16, bfloat16, float32)")
        return 2
    for flag, low in (("prompt_tokens", 1), ("new_tokens", 2), ("batch", 1), ("repeats", 1), ("calib_samples", 1)):
        if getattr(args, flag) < low:
            print(f"llmquant bench decode: --{flag.replace('_', '-')} must be >= {low}")
            return 2
    if args.cuda_graph and device.type != "cuda":
        print("llmquant bench decode: --cuda-graph needs a CUDA device (--device cuda)")
        return 2
    result = run(args.shape, args.config, args.set, args.prompt_tokens, args.new_tokens, args.batch,
                 args.repeats, args.calib_samples, device, dtype, args.seed, cuda_graph=args.cuda_graph)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"llmquant bench decode  shape={result['shape']} (random weights)  device={result['device']}  "
          f"batch={args.batch}  prompt={args.prompt_tokens}  new={args.new_tokens}")
    print(f"{'model':<34} {'tok/s':>9} {'x FP':>7} {'prefill ms':>11} {'weight MB':>10}  fallbacks")
    for r in result["rows"]:
        print(f"{r['model']:<34} {r['decode_tokens_per_s']!s:>9} {r.get('speedup_vs_fp16', 1.0)!s:>7} "
              f"{r['prefill_ms']:>11} {r['weight_bytes'] / 1e6:>10.1f}  {len(r.get('kernel_fallbacks', []))}")
        if args.cuda_graph:
            print(f"{'  + CUDA graph':<34} {r.get('graph_decode_tokens_per_s', '-')!s:>9} "
                  f"{r.get('graph_speedup_vs_fp16', 1.0 if r['model'] == 'fp' else '-')!s:>7}  "
                  f"{r.get('graph_error', '')}")
    return 0
