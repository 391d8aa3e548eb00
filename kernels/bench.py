"""``llmquant bench kernels``: lattice GEMM kernels vs torch matmul, plus end-to-end decode tokens/s.

For each weight shape ``(K, N)`` (``in x out``) and each ``M`` it times, in the same run:

* ``torch``: ``x @ W^T`` with a dense weight (fp16 and bf16 on CUDA; fp32 on CPU);
* ``ours``:
  - on CUDA (backend ``triton``): the box-code W4A16 kernel and the Voronoi reference-scheme W4A16 kernel
    (fp16 activations), the box W4A4 path (activation encode + int8 W4A4 GEMM) for the shipped ``int`` and the
    ``d8int8`` settings, and the online Hadamard of the ``[M, K]`` input (:func:`bench_cuda`);
  - on CPU (backend ``reference``, stated in the output): the PyTorch reference forward of
    ``LatticeLinear`` (the cached decoded weight, then ``F.linear``) and the reference weight decode.
    The Triton interpreter is a correctness tool and is never timed.

On CUDA every time is GPU time: the call is captured in a CUDA graph and replayed (Triton's
``do_bench_cudagraph``; the row's ``timer`` says ``eager`` where capture failed), so Python, argument checks and
launch latency are not counted, for torch and ours alike; the box W4A16 rows add ``eager_us`` and
``torch_fp16_eager_us``, the same calls timed eagerly (what a caller without graphs pays).
Each row reports time (µs), speedup vs torch, achieved GB/s (weight stream + activations + output: 1/2 B
per box-code weight + 2 B per row, 5/8 B per Voronoi weight, 2 B per fp16 value) and TFLOP/s (``2MNK/t``).

End to end (``--checkpoint PATH``, an llmquant checkpoint loaded with ``llmquant.api.load``): greedy
decode tokens/s at batch 1 of the quantized model (``--backend``, default ``auto``, for its LatticeLinears
and online Hadamards) vs the floating-point model ``--fp-model`` (fp16 on CUDA, fp32 on CPU).

``--sass [--arch sm_90]``: no timing and no GPU: compile every kernel config for the target and report the
static SASS cost (instructions per weight in the main loop, registers, spills, shuffles) with a roofline
prediction of the speedup vs BF16 on H100/H200 (:mod:`.sass`, :mod:`.cost_model`).

``--backend``: ``auto`` (default) = kernels on CUDA, the reference elsewhere; ``triton`` = kernels, which
needs CUDA (the interpreter is never timed: exit code 2 otherwise); ``reference`` = time the PyTorch
reference forward of ``LatticeLinear`` on the chosen device (CUDA included), and run the end-to-end model
on the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import torch

#: (K, N) = (in_features, out_features)
SHAPES = {
    "llama3-8b": [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)],
    "llama-3.2-1b": [(2048, 2048), (2048, 512), (2048, 8192), (8192, 2048)],
    "smollm2": [(576, 576), (576, 192), (576, 1536), (1536, 576)],
}
GPU_M = (1, 4, 16, 64, 256, 2048)
#: the CUDA kernel groups ``bench_cuda`` can time (``--kernels``)
KERNEL_GROUPS = ("box-w4a16", "voronoi-w4a16", "box-w4a4")
CPU_M = (1, 16, 64)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", choices=sorted(SHAPES) + ["all"], default=None,
                   help="weight shapes (default: all on CUDA, smollm2 on CPU)")
    p.add_argument("--m", type=int, nargs="+", default=None,
                   help=f"token counts M (default {list(GPU_M)} on CUDA, {list(CPU_M)} on CPU)")
    p.add_argument("--kernels", nargs="+", choices=KERNEL_GROUPS, default=list(KERNEL_GROUPS),
                   help="CUDA kernel groups to time (default: all): box-w4a16 (lattice, table and per-β table paths), voronoi-w4a16 "
                        "(the NestQuant-scheme reference kernel, slow at large M), box-w4a4")
    p.add_argument("--q", type=int, default=14, help="Voronoi modulus of the weight/activation codes (<= 16)")
    p.add_argument("--k-betas", type=int, default=4, help="number of betas of the random lattice weights")
    p.add_argument("--repeats", type=int, default=5, help="CPU timing repeats (best of)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--backend", choices=("reference", "triton", "auto"), default="auto",
                   help="auto: kernels on CUDA, else reference; triton: kernels (CUDA only, never the "
                        "interpreter); reference: time the PyTorch reference (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="llmquant checkpoint for end-to-end decode tokens/s")
    p.add_argument("--fp-model", default="smollm2-135m", help="floating-point baseline spec for end-to-end")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per end-to-end run")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--sass", action="store_true",
                   help="static cost, no GPU needed: compile every kernel config for --arch, count SASS instructions "
                        "per weight in the main loop, registers, spills, shuffles, and predict the speedup vs BF16 "
                        "on H100/H200 from the rooflines in kernels/cost_model.py (see kernels/sass.py)")
    p.add_argument("--arch", default="sm_90", help="target of --sass (default: %(default)s)")


def _time_cpu(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def _time_cuda(fn) -> float:
    """GPU time of one ``fn()`` call in µs: ``fn`` captured in a CUDA graph and replayed (Triton's
    ``do_bench_cudagraph``), so per-call host work (Python, argument checks, launch) is not counted; what cannot be
    captured is timed by stream events around eager calls instead (``do_bench``: host time included wherever the
    host is slower than the GPU).  :data:`TIMER_USED` records which timer the last call used."""
    from triton.testing import do_bench, do_bench_cudagraph

    global TIMER_USED
    try:
        fn()
        t = do_bench_cudagraph(fn, rep=50) * 1e3
        TIMER_USED = "cuda_graph"
    except Exception:  # noqa: BLE001 - e.g. a host sync inside fn: time it eagerly, and say so
        torch.cuda.synchronize()
        t = do_bench(fn, warmup=25, rep=100) * 1e3
        TIMER_USED = "eager"
    return t


def _time_cuda_eager(fn) -> float:
    """Wall time of one eager ``fn()`` call in µs (events around a loop of calls): host work included."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100) * 1e3


#: "cuda_graph" or "eager": the timer :func:`_time_cuda` used last
TIMER_USED = None


def _random_weight(k: int, n: int, q: int, n_betas: int, gen: torch.Generator, device):
    from llmquant.lattice.packing import pack_codes

    codes = torch.randint(0, q, (n, k // 8, 8), generator=gen).to(torch.uint8)
    bidx = torch.randint(0, n_betas, (n, k // 8), generator=gen).to(torch.uint8)
    betas = torch.linspace(0.5, 1.5, n_betas)
    scale = (torch.rand(n, generator=gen) * 0.02 + 0.01).half().float()
    return pack_codes(codes, q).to(device), bidx.to(device), betas.to(device), scale.to(device)


def _row(kind, k, n, m, t_us, t_ref_us, bytes_moved, ref_name):
    return {
        "kernel": kind, "K": k, "N": n, "M": m, "time_us": round(t_us, 3), f"{ref_name}_us": round(t_ref_us, 3),
        "speedup": round(t_ref_us / t_us, 3), "GBps": round(bytes_moved / (t_us * 1e-6) / 1e9, 2),
        "TFLOPs": round(2.0 * m * n * k / (t_us * 1e-6) / 1e12, 4),
    }


def _random_words(n: int, kw: int, gen: torch.Generator, device) -> torch.Tensor:
    """Random int32 box words ``[n, kw]``: every 32-bit pattern is a valid b = 3 word of both shipped box
    layouts (Hamming: 24 u + 4 m + 4 β bits; parity/D8: 24 u + 7 m + 1 β bit)."""
    w = torch.randint(-(1 << 31), 1 << 31, (n, kw), generator=gen, dtype=torch.int64)
    return w.to(torch.int32).to(device)


def _box_codec(variant: str):
    from llmquant.lattice.box import shipped_box_codec

    return shipped_box_codec(3, variant)


#: W4A4 variants timed on CUDA: (activation setting, weight setting) of ``load_box_setting(3, ...)``
W4A4_VARIANTS = (("int", "int"), ("d8int8", "d8int8"))


def bench_cuda(shapes, ms, q, n_betas, seed, timer=None, device="cuda", on_row=None,
               kernels=KERNEL_GROUPS) -> list[dict]:
    """Rows for each (K, N) x M, all timed in this run against torch BF16 (and FP16) ``x @ W^T``:

    * ``w4a16`` ``box b=3 lattice`` / ``table`` / ``beta_tables``: :func:`.box_w4a16.box_w4a16_matmul` (the
      deployable W4A16 kernel, uniform levels / the shipped configs' level table / a level table per β; 0.5 B per
      weight + an fp16 row scale);
    * ``w4a16`` ``voronoi q=..``: :func:`.e8_decode_gemm.e8_decode_gemm` (the NestQuant-scheme reference
      kernel; 5/8 B per weight);
    * ``w4a4`` ``box <act>/<weight>`` for :data:`W4A4_VARIANTS`: the activation box encode of the ``[M, K]``
      input (:func:`.box_encode.quantizer_encode_rows_int8`: the Triton encode kernel with the reference's per-row
      scales, writing the words and the int8 activation limbs as the dispatch does, memo cleared each call), then
      :func:`.box_w4a4.box_w4a4_matmul`; ``time_us`` = encode + GEMM; the online Hadamard of the input
      is timed beside it (``hadamard_us``).

    ``kernels``: the groups of :data:`KERNEL_GROUPS` to time (rows of the others are left out).
    ``timer``/``device``: tests run this on the CPU interpreter with a trivial timer (never reported).
    ``on_row(row)``: called as each row is done (``main`` prints it to stderr, so a run stopped by a time
    limit keeps what it measured)."""
    from llmquant.lattice.closest_point import generator_matrix
    from llmquant.quant.activations import RowQuantizer
    from llmquant.rotation.random_hadamard import random_signs

    from .box_encode import dispatch_rule, quantizer_encode_rows_int8
    from .box_w4a4 import box_w4a4_matmul
    from .box_w4a16 import aligned_levels, box_w4a16_matmul
    from .e8_decode_gemm import e8_decode_gemm
    from .hadamard import hadamard_transform

    timer = timer or _time_cuda
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    g = generator_matrix("E8")
    w16_codec = _box_codec("lattice")
    w16_betas = w16_codec.betas.to(dev, torch.float32).contiguous().clone()
    # the level-table paths: the shipped W4A16 configs' code (non-uniform levels, the kernel's TABLE path) and the
    # per-β tables (PER_BETA: a 16 x 16 table, 1024-byte aligned as the dispatcher passes it)
    tables = []
    for variant in ("table", "beta_tables"):
        codec = _box_codec(variant)
        tables.append((variant, codec.betas.to(dev, torch.float32).contiguous().clone(),
                       aligned_levels(codec.levels.to(dev, torch.float32))))
    pairs = [(_box_codec(a), _box_codec(w), f"box {a}/{w}") for a, w in W4A4_VARIANTS]
    half = torch.float16 if on_gpu else torch.float32
    rows = []
    for k, n in shapes:
        codes, bidx, betas, scale = _random_weight(k, n, q, n_betas, gen, dev)
        words = _random_words(n, k // 8, gen, dev)
        rs = (torch.rand(n, generator=gen) * 0.02 + 0.01).half().to(dev)
        w16 = torch.randn(n, k, generator=gen).to(dev, half)
        wbf = w16.to(torch.bfloat16) if on_gpu else w16
        signs = random_signs(k, seed).to(dev)
        for m in ms:
            x = torch.randn(m, k, generator=gen).to(dev, half)
            xbf = x.to(torch.bfloat16) if on_gpu else x
            t16 = timer(partial(torch.matmul, x, w16.T))
            tbf = timer(partial(torch.matmul, xbf, wbf.T))
            act_bytes = 2 * m * k + 2 * m * n
            n_before = len(rows)
            if "box-w4a16" in kernels:
                t = timer(partial(box_w4a16_matmul, x, words, rs, w16_betas))
                r = _row("w4a16", k, n, m, t, tbf, n * k / 2 + 2 * n + act_bytes, "torch_bf16")
                r.update(config="box b=3 lattice", torch_fp16_us=round(t16, 3), speedup_vs_fp16=round(t16 / t, 3),
                         timer=TIMER_USED)
                if on_gpu:  # the same call timed eagerly: what a caller without graphs pays, host work included
                    r["eager_us"] = round(_time_cuda_eager(partial(box_w4a16_matmul, x, words, rs, w16_betas)), 3)
                    r["torch_fp16_eager_us"] = round(_time_cuda_eager(partial(torch.matmul, x, w16.T)), 3)
                rows.append(r)
                for variant, t_betas, t_levels in tables:
                    t = timer(partial(box_w4a16_matmul, x, words, rs, t_betas, levels=t_levels))
                    r = _row("w4a16", k, n, m, t, tbf, n * k / 2 + 2 * n + act_bytes, "torch_bf16")
                    r.update(config=f"box b=3 {variant}", torch_fp16_us=round(t16, 3),
                             speedup_vs_fp16=round(t16 / t, 3), timer=TIMER_USED)
                    rows.append(r)
            if "voronoi-w4a16" in kernels:
                t = timer(partial(e8_decode_gemm, x, codes, bidx, betas, scale, g, q))
                r = _row("w4a16", k, n, m, t, tbf, n * k * 5 / 8 + 4 * n + act_bytes, "torch_bf16")
                r.update(config=f"voronoi q={q} k={n_betas}", torch_fp16_us=round(t16, 3),
                         speedup_vs_fp16=round(t16 / t, 3))
                rows.append(r)
            t_had = timer(partial(hadamard_transform, x, signs)) if "box-w4a4" in kernels else None
            for x_codec, w_codec, label in (pairs if "box-w4a4" in kernels else []):
                act = RowQuantizer("box", codec=x_codec)

                def encode(act=act, x=x):
                    act.clear_memo()  # time a fresh encode, not the memo
                    return quantizer_encode_rows_int8(act, x, rule=dispatch_rule())

                xw, xs, xp = encode()
                ww = _random_words(n, k // 8, gen, dev)
                t_enc = timer(encode)
                t_gemm = timer(partial(box_w4a4_matmul, xw, xs, x_codec, ww, rs, w_codec, out_dtype=x.dtype,
                                       x_planes=xp))
                r = _row("w4a4", k, n, m, t_enc + t_gemm, tbf, n * k / 2 + 2 * n + m * k / 2 + act_bytes,
                         "torch_bf16")
                r.update({"config": label, "encode_us": round(t_enc, 3), "gemm_us": round(t_gemm, 3), "timer": TIMER_USED,
                          "gemm_speedup": round(tbf / t_gemm, 3), "hadamard_us": round(t_had, 3),
                          "torch_fp16_us": round(t16, 3)})
                rows.append(r)
            if on_row is not None:
                for r in rows[n_before:]:
                    on_row(r)
    return rows


def bench_cpu(shapes, ms, q, n_betas, seed, repeats, device="cpu") -> list[dict]:
    """The PyTorch reference forward of ``LatticeLinear`` (fp32) vs fp32 matmul on ``device`` (CPU, or CUDA
    with ``--backend reference``)."""
    from llmquant.quant.linear import LatticeLinear

    device = torch.device(device)
    timer = _time_cuda if device.type == "cuda" else partial(_time_cpu, repeats=repeats)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k, n in shapes:
        codes, bidx, betas, scale = _random_weight(k, n, q, n_betas, gen, "cpu")
        layer = LatticeLinear(k, n, q=q, k=n_betas, backend="reference")
        layer.codes.copy_(codes)
        layer.beta_idx.copy_(bidx)
        layer.betas.copy_(betas)
        layer.row_scale.copy_(scale)
        layer.to(device)
        t_decode = (_time_cuda(layer.decode_weight) if device.type == "cuda"
                    else _time_cpu(layer.decode_weight, max(1, repeats // 2)))
        w = torch.randn(n, k, generator=gen).to(device)
        for m in ms:
            x = torch.randn(m, k, generator=gen).to(device)
            t_ref = timer(partial(torch.matmul, x, w.T))
            with torch.no_grad():
                t = timer(partial(layer, x))
            r = _row("reference_forward", k, n, m, t, t_ref, 4 * n * k + 4 * m * (k + n), "torch_fp32")
            r["reference_decode_us"] = round(t_decode, 1)
            rows.append(r)
    return rows


def _generate_tps(model, tokenizer, new_tokens: int, device) -> float:
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device) if tokenizer is not None else \
        torch.tensor([[1, 2, 3, 4]], device=device)
    kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up (and autotune)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - t0)


def bench_end_to_end(checkpoint: str, fp_spec: str, new_tokens: int, device, backend: str = "auto") -> dict:
    from llmquant.api import load, load_fp
    from llmquant.quant.linear import set_backend

    fp_dtype = "float16" if device.type == "cuda" else "float32"
    qmodel, qtok = load(checkpoint, device=device, backend=backend)
    counts = set_backend(qmodel, backend)  # (load set it already; this counts the modules)
    n_lattice = counts["lattice_linear"]
    if device.type == "cuda":
        qmodel = qmodel.half()
    q_tps = _generate_tps(qmodel, qtok, new_tokens, device)
    del qmodel
    fmodel, ftok = load_fp(fp_spec, dtype=fp_dtype, device=device)
    f_tps = _generate_tps(fmodel, ftok or qtok, new_tokens, device)
    return {"checkpoint": checkpoint, "fp_model": fp_spec, "fp_dtype": fp_dtype, "batch": 1,
            "new_tokens": new_tokens, "backend": backend, "lattice_linears": n_lattice,
            "online_hadamards": counts["hadamard"], "quantized_tokens_per_s": round(q_tps, 2),
            "fp_tokens_per_s": round(f_tps, 2), "speedup": round(q_tps / f_tps, 3)}


def main_sass(args) -> int:
    """``--sass``: the rows of :func:`llmquant.kernels.sass.bench_rows` as a JSON list or a table."""
    from .sass import bench_rows, sass_tools_available

    reason = sass_tools_available()
    if reason is not None:
        print(f"llmquant bench kernels --sass: {reason}")
        return 2
    rows = bench_rows(args.arch)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"llmquant bench kernels --sass  arch={args.arch}  (static SASS analysis; speedups are *predicted*, "
          "no GPU run)")
    print(f"{'kernel':>8}  {'config':<32} {'instr/weight':>12} {'regs':>5} {'spills':>6} {'shfl/weight':>11} "
          f"{'H100 x':>7} {'H200 x':>7}")
    for r in rows:
        sp = r["predicted_speedup_vs_bf16"]
        print(f"{r['kernel']:>8}  {r['config']['label']:<32} {r['instructions_per_weight']:>12} {r['registers']:>5} "
              f"{r['spills']:>6} {r['shuffles']:>11} {sp['H100']:>7} {sp['H200']:>7}")
        for key, what in (("predicted_speedup_vs_bf16_with_encode", "  + its activation encode"),
                          ("predicted_speedup_vs_bf16_with_reference_encode", "  + encode, reference rule")):
            we = r.get(key)
            if we:
                print(f"{'':>8}  {what:<32} {'':>12} {'':>5} {'':>6} {'':>11} {we['H100']:>7} {we['H200']:>7}   "
                      "(one Llama-3-8B layer)")
    return 0


def main(args) -> int:
    from .availability import describe, kernel_device_ok

    if getattr(args, "sass", False):
        return main_sass(args)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("llmquant bench kernels: --device cuda but CUDA is not available; use --device cpu")
        return 2
    if not 2 <= args.q <= 16:
        print(f"llmquant bench kernels: --q {args.q} must be in [2, 16] (4-bit packed codes)")
        return 2
    kernels_ok = device.type == "cuda" and kernel_device_ok(device, allow_interpreter=False)
    if args.backend == "triton" and not kernels_ok:
        print(f"llmquant bench kernels: --backend triton needs CUDA and triton (device {device}); the Triton "
              "interpreter is a correctness tool and is never timed; use --backend reference or auto")
        return 2
    on_gpu = kernels_ok and args.backend != "reference"
    shapes_key = args.shapes or ("all" if on_gpu else "smollm2")
    shapes = [s for key in (sorted(SHAPES) if shapes_key == "all" else [shapes_key]) for s in SHAPES[key]]
    ms = args.m or (GPU_M if on_gpu else CPU_M)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backend": "triton" if on_gpu else "reference",
        "note": ("Triton kernels on CUDA vs torch matmul in the same run" if on_gpu else
                 ("--backend reference: " if args.backend == "reference" else "no CUDA GPU (or no triton): ")
                 + f"timing the PyTorch *reference* backend on {device.type} vs torch fp32 matmul; "
                 "these are not kernel numbers"),
        "environment": describe(),
        "q": args.q, "k_betas": args.k_betas,
    }
    if on_gpu:
        result["rows"] = bench_cuda(shapes, ms, args.q, args.k_betas, args.seed,
                                    on_row=lambda r: print(json.dumps(r), file=sys.stderr, flush=True),
                                    kernels=tuple(args.kernels))
        result["note"] += ("; w4a16 rows: the box b=3 lattice kernel and the Voronoi reference-scheme kernel; "
                           "w4a4 rows: box activation encode (Triton, kernels/box_encode.py) + the box W4A4 int8 kernel")
    else:
        result["rows"] = bench_cpu(shapes, ms, args.q, args.k_betas, args.seed, args.repeats, device)
    if args.checkpoint:
        result["end_to_end"] = bench_end_to_end(args.checkpoint, args.fp_model, args.new_tokens, device,
                                                args.backend)
    else:
        result["end_to_end"] = None
        result["end_to_end_note"] = "pass --checkpoint PATH (an llmquant checkpoint) for decode tokens/s vs FP"
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"llmquant bench kernels  device={result['device']}  backend={result['backend']}")
    print(result["note"])
    cols = ["kernel", "config", "K", "N", "M", "time_us", "speedup", "GBps", "TFLOPs"]
    print("  ".join(f"{c:>17}" for c in cols))
    for r in result["rows"]:
        print("  ".join(f"{r.get(c, '-')!s:>17}" for c in cols))
    if result["end_to_end"]:
        print("end to end:", json.dumps(result["end_to_end"]))
    else:
        print(result["end_to_end_note"])
    return 0
