"""Print a short table of the JSON logs scripts/gpu_bench.sh wrote (the last lines of the device reply)."""

import json
import sys
from pathlib import Path


def _json(path: Path):
    text = path.read_text() if path.exists() else ""
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


def main(out: str) -> None:
    out = Path(out)
    k = _json(out / "bench_kernels.log")
    if k:
        print("kernels", k.get("device"), k.get("backend"))
        for r in k["rows"]:
            extra = f" enc {r['encode_us']} gemm {r['gemm_us']} (x{r['gemm_speedup']})" if "gemm_us" in r else ""
            print(f"{r['kernel']:6} {r.get('config', ''):22} K{r['K']:>6} N{r['N']:>6} M{r['M']:>5} "
                  f"{r['time_us']:>9.1f}us bf16 {r['torch_bf16_us']:>9.1f}us x{r['speedup']:<6} {r['GBps']:>7}GB/s{extra}")
    else:
        print("kernels: no JSON;", (out / "bench_kernels.log").read_text()[-1500:] if (out / "bench_kernels.log").exists() else "")
    for name in ("decode_smollm2", "decode_llama1b"):
        d = _json(out / f"{name}.log")
        if not d:
            p = out / f"{name}.log"
            print(name, "no JSON;", p.read_text()[-1500:] if p.exists() else "")
            continue
        print(name, d["shape"], d["device"], "batch", d["batch"], "prompt", d["prompt_tokens"], "new", d["new_tokens"])
        for r in d["rows"]:
            print(f"  {r['model']:28} {r['decode_tokens_per_s']!s:>9} tok/s x{r.get('speedup_vs_fp16', 1.0)!s:<6} "
                  f"prefill {r['prefill_ms']}ms weights {r['weight_bytes'] / 1e6:.1f}MB "
                  f"peak {r.get('peak_bytes', 0) / 1e6:.0f}MB fallbacks {r.get('kernel_fallbacks', [])}")


if __name__ == "__main__":
    main(sys.argv[1])
