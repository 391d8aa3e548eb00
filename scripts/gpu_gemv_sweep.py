"""Time the box W4A16 GEMV (M = 1) over tile configs on the GPU (CUDA-graph replay: GPU time, no host work): BLOCK_N x num_warps x SPLIT_K, per weight shape,
against torch fp16 ``x @ W^T``; prints one JSON line per shape with every config's µs and the default's.

Usage (GPU): python scripts/gpu_gemv_sweep.py [--shapes llama-3.2-1b] [--m 1]"""

import argparse
import json
from functools import partial

import torch
from llmquant.kernels.bench import SHAPES, _box_codec, _random_words, _time_cuda
from llmquant.kernels.box_w4a16 import box_w4a16_matmul, choose_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--m", type=int, default=1)
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    codec = _box_codec("int")
    betas = codec.betas.to(dev, torch.float32).contiguous().clone()
    for k, n in SHAPES[args.shapes]:
        words = _random_words(n, k // 8, gen, dev)
        rs = (torch.rand(n, generator=gen) * 0.02 + 0.01).half().to(dev)
        x = torch.randn(args.m, k, generator=gen).to(dev, torch.float16)
        w = torch.randn(n, k, generator=gen).to(dev, torch.float16)
        t16 = _time_cuda(partial(torch.matmul, x, w.T))
        default = choose_config(args.m, n, k // 8, on_gpu=True, sm_count=torch.cuda.get_device_properties(dev).multi_processor_count)
        t_def = _time_cuda(partial(box_w4a16_matmul, x, words, rs, betas))
        res = {}
        for bn in (256, 512, 1024):
            for nw in (2, 4, 8):
                if bn < 32 * nw:
                    continue
                for split, fused in [(1, False)] + [(sp, f) for sp in (2, 4, 8, 16) for f in (False, True)]:
                    if (k // 8) // split < 4:
                        continue
                    # FUSED_REDUCE: split-K reduced inside the kernel (off by default until timed here)
                    cfg = {"BLOCK_N": bn, "BLOCK_G": 4, "SPLIT_K": split, "num_warps": nw, "FUSED_REDUCE": fused}
                    try:
                        t = _time_cuda(partial(box_w4a16_matmul, x, words, rs, betas, config=cfg))
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile is reported
                        res[f"{bn}/{nw}/{split}{'F' if fused else ''}"] = f"error {type(exc).__name__}"
                        continue
                    res[f"{bn}/{nw}/{split}{'F' if fused else ''}"] = round(t, 2)
        best = min((v, c) for c, v in res.items() if isinstance(v, float))
        print(json.dumps({"K": k, "N": n, "M": args.m, "torch_fp16_us": round(t16, 2), "default": default,
                          "default_us": round(t_def, 2), "best": best[1], "best_us": best[0], "all": res}), flush=True)


if __name__ == "__main__":
    main()
