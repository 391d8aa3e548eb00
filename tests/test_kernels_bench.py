"""``llmquant bench kernels --json`` runs on a machine without a GPU and says it timed the reference."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.kernels


def test_bench_kernels_json_on_cpu(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU report; on CUDA the benchmark times the kernels")
    from llmquant.cli import main

    rc = main(["bench", "kernels", "--json", "--m", "1", "4", "--repeats", "1"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "reference" and report["device"] == "cpu"
    assert "reference" in report["note"] and "not kernel numbers" in report["note"]
    assert len(report["rows"]) == 4 * 2  # the four SmolLM2 shapes x two M
    for row in report["rows"]:
        assert row["kernel"] == "reference_forward"
        assert row["time_us"] > 0 and row["torch_fp32_us"] > 0
        # GB/s and TFLOP/s are printed rounded (a loaded machine can round them to 0): check them against the
        # timing they derive from, within their rounding, never against a floor
        flops = 2.0 * row["M"] * row["N"] * row["K"]
        assert row["TFLOPs"] == pytest.approx(flops / (row["time_us"] * 1e-6) / 1e12, rel=1e-2, abs=5e-5)
        assert row["GBps"] >= 0
        # speedup is printed rounded to 3 decimals
        assert row["speedup"] == pytest.approx(row["torch_fp32_us"] / row["time_us"], rel=1e-2, abs=5e-4)
    assert report["end_to_end"] is None and "--checkpoint" in report["end_to_end_note"]


def test_bench_kernels_rejects_bad_q(capsys):
    from llmquant.cli import main

    assert main(["bench", "kernels", "--q", "17"]) == 2
    assert "--q 17" in capsys.readouterr().out
