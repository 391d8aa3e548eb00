"""``llmquant bench decode`` on CPU (tiny shape) and the CUDA kernel benchmark's rows under the interpreter."""

from __future__ import annotations

import json

import pytest


def test_bench_decode_tiny_cpu(capsys):
    from llmquant.cli import main

    rc = main(["bench", "decode", "--shape", "tiny", "--json", "--config", "configs/smollm2-135m-e8-w4a16.yaml",
               "--set", "weights.algorithm=rtn", "--set", "calibration.seq_len=16", "--prompt-tokens", "8",
               "--new-tokens", "3", "--repeats", "1", "--calib-samples", "1", "--device", "cpu"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    fp, q = report["rows"]
    assert report["device"] == "cpu" and report["shape"] == "tiny"
    assert fp["model"] == "fp" and q["model"] == "smollm2-135m-e8-w4a16" and q["backend"] == "reference"
    for r in (fp, q):
        assert r["decode_tokens_per_s"] > 0 and r["prefill_ms"] > 0
    # the box code stores ~4 bits per decoder weight; the tiny model's fp32 embeddings stay
    assert q["weight_bytes"] < fp["weight_bytes"]
    assert q["weight_bytes_vs_fp"] == pytest.approx(q["weight_bytes"] / fp["weight_bytes"], abs=1e-4)
    assert 3.9 < q["bits"]["weights"] < 4.6
    assert q["speedup_vs_fp16"] == pytest.approx(q["decode_tokens_per_s"] / fp["decode_tokens_per_s"], rel=1e-2)
    assert q["kernel_fallbacks"] == []  # reference backend: the dispatcher is never asked


@pytest.mark.parametrize("flag", ["--new-tokens", "--batch"])
def test_bench_decode_rejects_bad_counts(capsys, flag):
    from llmquant.cli import main

    assert main(["bench", "decode", "--shape", "tiny", flag, "0", "--device", "cpu"]) == 2
    assert flag in capsys.readouterr().out


@pytest.mark.kernels
def test_bench_cuda_rows_under_interpreter():
    """Every kernel the GPU benchmark times runs (interpreter, trivial timer) and yields its row."""
    from tests._kernels_support import kernel_device

    dev = kernel_device()
    from llmquant.kernels.bench import W4A4_VARIANTS, bench_cuda

    seen = []
    rows = bench_cuda([(64, 16)], [2], 14, 2, 0, timer=lambda f: (f(), 2.0)[1], device=str(dev), on_row=seen.append)
    assert rows == seen
    configs = [(r["kernel"], r["config"]) for r in rows]
    assert configs == [("w4a16", "box b=3 lattice"), ("w4a16", "box b=3 table"), ("w4a16", "voronoi q=14 k=2")] + [
        ("w4a4", f"box {a}/{w}") for a, w in W4A4_VARIANTS]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["torch_bf16_us"] / r["time_us"], rel=1e-3)
