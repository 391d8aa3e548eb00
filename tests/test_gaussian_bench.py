"""Gaussian matrix-product benchmark: exact rates, ratios >= 1, E8 beats scalar, CLI output."""

import json
import math

import pytest
import torch

from llmquant.cli import main as cli_main
from llmquant.lattice import (
    BoxCodec,
    NestedLatticeQuantizer,
    load_beta_set,
    load_box_setting,
    pack_nested_stream,
)
from llmquant.lattice.codec import VoronoiNibbleCodec, packed_bits
from llmquant.theory.gamma import gamma
from llmquant.theory.gaussian import (
    Method,
    _gauss_mse_scalar,
    gaussian_pair,
    jl_sketch_apply,
    measure,
    optimal_scalar_step,
)
from llmquant.theory.gaussian_bench import run_bench

ROW_KEYS = {"method", "lattice", "q", "num_betas", "rate", "mse", "gamma", "ratio", "gap_db", "deployable", "info_rate",
            "info_ratio"}


def test_optimal_scalar_quantizer_matches_known_gaussian_values():
    # uniform (clipped) quantizers for N(0,1), Max (1960): 1 bit 0.3634, 2 bits 0.1188, 3 bits 0.03744
    for levels, mse in ((2, 0.3634), (4, 0.1188), (8, 0.03744)):
        assert _gauss_mse_scalar(levels, optimal_scalar_step(levels)) == pytest.approx(mse, rel=2e-3)


def test_sketch_has_orthonormal_rows():
    m = torch.randn(256, 5, dtype=torch.float64)
    full = jl_sketch_apply(m, 256, seed=3)
    assert torch.allclose(full.T @ full, m.T @ m)
    half = jl_sketch_apply(torch.eye(256, dtype=torch.float64), 128, seed=3)
    assert torch.allclose(half @ half.T, torch.eye(128, dtype=torch.float64))


def test_reported_rate_is_what_the_packer_writes():
    n, cols = 1024, 4
    A, B = gaussian_pair(n, cols, cols, seed=1)
    m = measure(A, B, Method("lattice", "E8", 14, 4))
    nq = NestedLatticeQuantizer("E8", 14, load_beta_set("E8", 14, 4))
    u = (A[:, 0] / (A[:, 0].norm() / math.sqrt(n))).float().reshape(-1, 8)
    codes, idx = nq.quantize(u)
    _, n_bits = pack_nested_stream(codes, idx, 14, 4)
    assert m.info_rate == pytest.approx((n_bits + 16) / n, abs=1e-12)
    # stored: the nibble layout (what the adapter packs), + fp16 gain
    codec = VoronoiNibbleCodec(nq)
    stored = packed_bits(codec.pack(codec.encode(u)))
    assert m.rate == pytest.approx((stored + 16) / n, abs=1e-12) == 4 + 2 / 8 + 16 / n


@pytest.mark.parametrize("b", [1, 2, 3])
def test_box_rows_store_exactly_their_rate(b):
    n, cols = 1024, 4
    A, B = gaussian_pair(n, cols, cols, seed=2)
    for variant in ("lattice", "best"):
        m = measure(A, B, Method("box", "E8", b, 16, box=variant))
        s = load_box_setting(b, variant)
        codec = BoxCodec(b, s["betas"], s["code"], s.get("gamma"), s.get("levels"))
        u = (A[:, 0] / (A[:, 0].norm() / math.sqrt(n))).float().reshape(-1, 8)
        stored = packed_bits(codec.pack(codec.encode(u)))
        assert stored == n * (b + 1)
        assert m.rate == m.info_rate == pytest.approx((stored + 16) / n, abs=1e-12)


def test_small_bench_ratios_and_e8_beats_scalar():
    methods = (
        (Method("scalar", "Z", 2), 0.5),
        (Method("lattice", "E8", 4, 4, "min_error"), 0.5),
        (Method("scalar", "Z", 16), None),
        (Method("lattice", "E8", 14, 4), None),
        (Method("lattice", "E8", 14, 4, "min_error"), None),
        (Method("scalar", "Z", 8), None),
        (Method("lattice", "E8", 8, 2), None),
    )
    rows = run_bench(n=1024, cols=24, seed=0, methods=methods)
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert r["ratio"] >= 1.0 and r["info_ratio"] >= 1.0, f"below the limit: rate accounting misses bits? {r}"
        assert r["gamma"] == pytest.approx(gamma(r["rate"]))
        assert r["deployable"] == r["method"].startswith("scalar")
        assert r["rate"] >= r["info_rate"] - 1e-12
    by = {(r["method"], r["q"], r["num_betas"], r["choose"]): r for r in rows}
    jl = by[("scalar+jl", 2, 0, None)]
    assert 0.49 < jl["rate"] <= 0.51
    e8 = by[("nested", 14, 4, "first_fit")]
    sc = by[("scalar", 16, 0, None)]
    # default size (n=4096, 128 columns) gives 1.68; n=1024 pays 4x the per-column side information.
    # (At the information rate: the nibble layout it is stored in costs 4.25 bits, see "rate".)
    assert e8["info_ratio"] < 1.8 and e8["info_ratio"] < 0.7 * sc["ratio"]
    assert e8["rate"] == pytest.approx(4 + 2 / 8 + 16 / 1024)
    assert by[("nested", 14, 4, "min_error")]["mse"] < e8["mse"]
    assert by[("nested", 8, 2, "first_fit")]["info_ratio"] < by[("scalar", 8, 0, None)]["ratio"]


def test_bench_cli_json_is_seeded(capsys, monkeypatch):
    import llmquant.theory.gaussian_bench as gb

    monkeypatch.setattr(gb, "DEFAULT_METHODS", ((Method("lattice", "D4", 8, 2), None), (Method("scalar", "Z", 4), None)))
    args = ["bench", "gaussian", "--json", "--n", "256", "--cols", "8", "--seed", "3"]
    assert cli_main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli_main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert [(r["rate"], r["mse"]) for r in first] == [(r["rate"], r["mse"]) for r in second]
    assert [r["lattice"] for r in first] == ["D4", "Z"]
    assert cli_main(["bench", "gaussian", "--n", "100"]) == 2
    assert "power of two" in capsys.readouterr().err


def test_shifted_e8_q2_beats_scalar_at_half_and_one_bit():
    methods = (
        (Method("scalar", "Z", 2), 0.5),
        (Method("lattice", "E8", 2, 1, shift=True), 0.5),
        (Method("scalar", "Z", 2), None),
        (Method("lattice", "E8", 2, 1, shift=True), None),
    )
    rows = run_bench(n=1024, cols=32, seed=0, methods=methods)
    for r in rows:
        assert r["ratio"] >= 1.0, r
    (sj, ej, s1, e1) = rows
    assert sj["rate"] == ej["info_rate"] and s1["rate"] == e1["info_rate"]  # Voronoi JL sketch sized by info rate
    assert ej["shift"] and not sj["shift"]
    # default size (n=4096, 128 columns): 1.083 vs 1.107 and 1.273 vs 1.372 (at the information rate; the
    # Voronoi code is stored as a nibble per coordinate, 4 bits: not deployable at 1 bit)
    assert ej["info_ratio"] < sj["ratio"] and e1["info_ratio"] < 0.97 * s1["ratio"]
    assert not e1["deployable"] and e1["rate"] == pytest.approx(4 + 16 / 1024)


def test_shifted_e8_q4_beats_scalar_at_two_bits():
    # equal total rate (2.004 b: 8 codes of 2 bits + the fp16 gain).  Default size: 0.1760 vs 0.2252.
    methods = ((Method("scalar", "Z", 4), None), (Method("lattice", "E8", 4, 1, shift=True), None))
    s2, e2 = run_bench(n=1024, cols=32, seed=0, methods=methods)
    assert e2["info_rate"] == s2["rate"] and e2["shift"] and e2["lattice"] == "E8"
    assert 1.0 <= e2["info_ratio"] and e2["mse"] < 0.85 * s2["mse"]


def test_e8_beats_scalar_at_equal_or_lower_total_rate_at_3_and_4_bits():
    # issue 2: strict comparison, the E8 row spends no more bits (codes + β indices + fp16 gain) than
    # the scalar row.  Default size (n=4096, 128 columns): 3 bits 0.0537 (2.985 b) vs 0.0747 (3.004 b);
    # 4 bits 0.0128 (3.964 b) vs 0.0233 (4.004 b).  Here (n=1024, 64 columns) the MSE ratio E8/scalar
    # is 0.70-0.74 at 3 bits and 0.56-0.60 at 4 bits over seeds 0-3.  (E8 q=7 k=2 at 2.936 b wins by
    # only ~12% at the default size and is too noisy to test at this size; at 2 bits E8 q=3 k=9,
    # 1.985 b, loses: 0.2615 vs 0.2252, the shifted q=4 code above wins.)
    methods = (
        (Method("scalar", "Z", 8), None),
        (Method("lattice", "E8", 6, 9, "min_error"), None),
        (Method("scalar", "Z", 16), None),
        (Method("lattice", "E8", 12, 8, "min_error"), None),
    )
    rows = run_bench(n=1024, cols=64, seed=0, methods=methods)
    s3, e3, s4, e4 = rows
    for r in rows:
        assert r["ratio"] >= 1.0, r
    for e, s in ((e3, s3), (e4, s4)):
        assert e["lattice"] == "E8" and s["lattice"] == "Z"
        assert e["info_rate"] <= s["rate"], (e, s)
    assert e3["mse"] < 0.85 * s3["mse"]
    assert e4["mse"] < 0.7 * s4["mse"]


def test_deployable_box_codes_beat_scalar_at_equal_stored_bits():
    # issue 9: stored bits = counted bits.  Default size (n=4096, 128 columns), mse and ratio to Γ:
    # 2 bits: scalar 0.2252 (1.87), box D8 γ=1.2 0.1931 (1.60), box E8 lattice 0.2648 (2.20, loses);
    # 3 bits: scalar 0.0747 (2.42), box E8 lattice 0.0660 (2.14), box D8 γ=1.2 0.0567 (1.84);
    # 4 bits: scalar 0.0233 (3.00), box E8 lattice 0.0154 (1.99), box E8 γ=1.35 0.0136 (1.75).
    methods = (
        (Method("scalar", "Z", 4), None),
        (Method("box", "E8", 1, 16, box="best"), None),
        (Method("scalar", "Z", 8), None),
        (Method("box", "E8", 2, 16, box="lattice"), None),
        (Method("box", "E8", 2, 16, box="best"), None),
        (Method("scalar", "Z", 16), None),
        (Method("box", "E8", 3, 16, box="lattice"), None),
        (Method("box", "E8", 3, 16, box="best"), None),
    )
    s2, b2, s3, e3, b3, s4, e4, b4 = run_bench(n=1024, cols=32, seed=0, methods=methods)
    for r in (b2, e3, b3, e4, b4):
        assert r["deployable"] and r["method"] == "box" and r["ratio"] >= 1.0, r
    for s, rows in ((s2, (b2,)), (s3, (e3, b3)), (s4, (e4, b4))):
        for r in rows:
            assert r["rate"] == s["rate"], (r, s)
    assert b2["lattice"] == "D8" and b2["mse"] < 0.93 * s2["mse"]
    assert e3["lattice"] == "E8" and e3["mse"] < 0.95 * s3["mse"] and b3["mse"] < 0.85 * s3["mse"]
    assert e4["mse"] < 0.72 * s4["mse"] and b4["mse"] < e4["mse"]
