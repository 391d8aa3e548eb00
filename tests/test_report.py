"""``llmquant report``: table with Δ vs FP, setting labels, plots, Gaussian figure, bad input."""

from __future__ import annotations

import json

import pytest
from llmquant.eval.report import ReportError, build_table, load_run, setting_from_bits, write_report

from llmquant.cli import main as cli_main


def _run(tmp_path, name, **results):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return d


@pytest.fixture()
def runs(tmp_path):
    fp = _run(tmp_path, "fp", method="fp", setting="FP16", bits={"weights": None, "activations": None, "kv": None},
              ppl={"wikitext2": 20.0, "c4": 25.0}, tasks={"piqa": {"acc": 0.65, "acc_norm": 0.66}})
    e8 = _run(tmp_path, "e8-w4", method="e8", setting="W4A16", bits={"weights": 4.25, "activations": None, "kv": None},
              ppl={"wikitext2": 21.5}, tasks={"piqa": {"acc": 0.64, "acc_norm": 0.62}}, config={"name": "x"})
    sc = _run(tmp_path, "rtn-w4a4", bits={"weights": 4.0, "activations": 4.0, "kv": 4.0},
              ppl={"wikitext2": 30.0, "c4": 40.0}, config={"name": "rtn"})
    return [fp, e8, sc]


def test_setting_labels():
    assert setting_from_bits({"weights": 4.0, "activations": None, "kv": None}) == "W4A16"
    assert setting_from_bits({"weights": 4.25, "activations": 4, "kv": 4}) == "W4.25A4KV4"


def test_table_rows_and_deltas(runs):
    table = build_table([load_run(r) for r in runs])
    lines = table.splitlines()
    assert lines[0] == "| run | method | setting | bits W/A/KV | ppl c4 | ppl wikitext2 | piqa acc % |"
    assert lines[2] == "| fp | fp | FP16 | FP/FP/FP | 25.00 | 20.00 | 65.0 |"
    assert lines[3] == "| e8-w4 | e8 | W4A16 | 4.25/FP/FP | – | 21.50 (+1.50) | 64.0 (-1.0) |"
    # method from config.name, setting derived from bits
    assert lines[4] == "| rtn-w4a4 | rtn | W4A4KV4 | 4/4/4 | 40.00 (+15.00) | 30.00 (+10.00) | – |"
    assert "against `fp`" in table
    norm = build_table([load_run(r) for r in runs], task_metric="acc_norm")
    assert "62.0 (-4.0)" in norm


def test_write_report_with_plots_and_gaussian(runs, tmp_path):
    rows = [{"method": "scalar", "lattice": "Z", "q": 16, "num_betas": 1, "rate": 4.0, "mse": 0.01,
             "gamma": None, "ratio": None, "gap_db": None},
            {"method": "nested", "lattice": "E8", "q": 14, "num_betas": 4, "rate": 4.06, "mse": 0.004,
             "gamma": None, "ratio": None, "gap_db": None}]
    gfile = tmp_path / "gauss.json"
    gfile.write_text(json.dumps(rows))
    out = tmp_path / "rep" / "report.md"
    rc = cli_main(["report", *map(str, runs), "--out", str(out), "--gaussian", str(gfile)])
    assert rc == 0
    text = out.read_text()
    assert "| e8-w4 |" in text and "Γ(R)" in text
    for png in ("ppl_vs_bits_wikitext2.png", "ppl_vs_bits_c4.png", "gaussian_rd.png"):
        data = (out.parent / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # Γ(4) = 2*2^-8 - 2^-16
    g4 = 2 * 2**-8 - 2**-16
    assert f"{g4:.4g}" in text


def test_bad_inputs(tmp_path, runs, capsys):
    with pytest.raises(ReportError, match="no results.json"):
        load_run(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{nope")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(bad)
    with pytest.raises(ReportError, match="matches no run"):
        build_table([load_run(r) for r in runs], fp="nothing")
    assert cli_main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.md")]) == 2
    assert "no results.json" in capsys.readouterr().err
    g = tmp_path / "g.json"
    g.write_text(json.dumps([{"method": "x"}]))
    with pytest.raises(ReportError, match="row 0 lacks rate, mse"):
        write_report(runs, tmp_path / "r.md", gaussian=g, plots=False)


def test_setting_and_method_from_config(tmp_path):
    cfg = {"name": "n", "method": "e8", "weights": {"method": "lattice", "bits": 4},
           "activations": {"method": "none", "bits": 4}, "kv": {"method": "none"}}
    d = _run(tmp_path, "r", bits={"weights": 4.155, "activations": None, "kv": None}, ppl={"wikitext2": 1.0},
             config=cfg)
    run = load_run(d)
    assert run["method"] == "e8" and run["setting"] == "W4A16"
    cfg["kv"] = {"method": "lattice", "bits": 4}
    cfg["activations"] = {"method": "scalar", "bits": 8}
    (d / "results.json").write_text(json.dumps({"config": cfg, "bits": {}}))
    assert load_run(d)["setting"] == "W4A8KV4"


def test_copied_result_files_keep_their_names(runs, tmp_path):
    """results/<model>/<run>.json copies of many runs in one folder are named by their file stems; a run directory
    and its results.json by the directory."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for r in runs:
        (folder / f"model-{r.name}.json").write_text((r / "results.json").read_text())
    names = [load_run(folder / f"model-{r.name}.json")["name"] for r in runs]
    assert names == ["model-fp", "model-e8-w4", "model-rtn-w4a4"]
    assert load_run(runs[1])["name"] == load_run(runs[1] / "results.json")["name"] == "e8-w4"


def test_series_label_separates_codes_and_settings():
    from llmquant.eval.report import series_label

    box = {"method": "e8", "setting": "W4A16", "config": {"weights": {"code": "box"}}}
    vor = {"method": "e8", "setting": "W3A16", "config": {"weights": {"code": "voronoi"}}}
    kv = {"method": "e8", "setting": "W4A4KV4", "config": {"weights": {"code": "box"}}}
    plain = {"method": "quarot", "setting": "W4A4", "config": {}}
    assert series_label(box) == "e8 box · A16" and series_label(vor) == "e8 voronoi · A16"
    assert series_label(kv) == "e8 box · A4KV4" and series_label(plain) == "quarot · A4"
