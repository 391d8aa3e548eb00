"""Print a short table of what scripts/gpu_bench.sh wrote to $OUT (the last lines of the device reply).

Kernel rows come from the benchmark's stderr (one JSON row per line, written as each is measured, so a step
stopped by its time limit still shows what it measured); decode rows from the JSON document on stdout."""

import json
import statistics
import sys
from pathlib import Path


def _doc(path: Path):
    text = path.read_text() if path.exists() else ""
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "kernel" in row:
                rows.append(row)
    return rows


def _tail(path: Path) -> str:
    return path.read_text()[-1200:] if path.exists() else "(missing)"


def main(out: str) -> None:
    out = Path(out)
    for name in sorted(p.stem for p in out.glob("kernels_*.err")):
        rows = _rows(out / f"{name}.err")
        print(f"{name}: {len(rows)} rows")
        if not rows:
            print(_tail(out / f"{name}.err"))
        for r in rows:
            extra = f" enc {r['encode_us']} gemm {r['gemm_us']} (x{r['gemm_speedup']})" if "gemm_us" in r else ""
            print(f"{r['kernel']:6} {r.get('config', ''):22} K{r['K']:>6} N{r['N']:>6} M{r['M']:>5} "
                  f"{r['time_us']:>9.1f}us bf16 {r['torch_bf16_us']:>9.1f}us x{r['speedup']:<6} "
                  f"{r['GBps']:>7}GB/s{extra} [{r.get('timer')}]"
                  + (f" eager {r['eager_us']} (fp16 eager {r['torch_fp16_eager_us']})" if "eager_us" in r else ""))
    for name in sorted(p.stem for p in out.glob("sweep_*.log")):
        # gpu_gemv_sweep.py: one JSON line per shape; the default tile against the best, and FUSED_REDUCE on/off
        for line in (out / f"{name}.log").read_text().splitlines():
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            fused = {c: v for c, v in d["all"].items() if c.endswith("F") and isinstance(v, float)}
            pairs = [(c[:-1], d["all"].get(c[:-1]), v) for c, v in fused.items()]
            gain = [a / b for _, a, b in pairs if isinstance(a, float) and b > 0]
            print(f"{name} K{d['K']:>6} N{d['N']:>6} M{d['M']}: fp16 {d['torch_fp16_us']}us default "
                  f"{d['default_us']}us best {d['best']} {d['best_us']}us; FUSED_REDUCE speedup over host reduce "
                  + (f"median {statistics.median(gain):.2f} ({len(gain)} configs)" if gain else "n/a"))
    log = out / "pytest_kernels.log"
    if log.exists():
        print("pytest_kernels:", (log.read_text().strip().splitlines() or ["(empty)"])[-1])
    for name in sorted(p.stem for p in out.glob("decode_*.log")):
        d = _doc(out / f"{name}.log")
        if not d:
            print(name, "no JSON;", _tail(out / f"{name}.err"))
            continue
        print(name, d["shape"], d["device"], "batch", d["batch"], "prompt", d["prompt_tokens"], "new", d["new_tokens"])
        for r in d["rows"]:
            graph = (f"graph {r['graph_decode_tokens_per_s']} tok/s x{r.get('graph_speedup_vs_fp16', 1.0)} "
                     f"match {r.get('graph_tokens_match')}" if "graph_decode_tokens_per_s" in r
                     else f"graph error {r.get('graph_error')}")
            print(f"  {r['model']:28} {r['decode_tokens_per_s']!s:>9} tok/s x{r.get('speedup_vs_fp16', 1.0)!s:<6} "
                  f"prefill {r['prefill_ms']}ms weights {r['weight_bytes'] / 1e6:.1f}MB "
                  f"peak {r.get('peak_bytes', 0) / 1e6:.0f}MB fallbacks {r.get('kernel_fallbacks', [])} | {graph}")


if __name__ == "__main__":
    main(sys.argv[1])
