"""Γ(R) at known points, the tangent branch, and the `llmquant theory` command."""

import json
import math

import pytest

from llmquant.cli import main as cli_main
from llmquant.theory import gamma, gap_db, r_star
from llmquant.theory.gamma import gamma_high


def test_known_values():
    assert gamma(1.0) == pytest.approx(7 / 16, abs=1e-15)
    assert gamma(2.0) == pytest.approx(31 / 256, abs=1e-15)
    assert gamma(0.0) == 1.0
    assert r_star() == pytest.approx(0.906324, abs=1e-6)
    assert gamma(r_star()) == pytest.approx(0.4883, abs=1e-4)


def test_tangent_branch():
    rs = r_star()
    # continuous at R*, with the slope of the high-rate branch there (a tangent through (0, 1))
    h = 1e-6
    slope_high = (gamma_high(rs + h) - gamma_high(rs - h)) / (2 * h)
    assert (gamma(rs) - 1) / rs == pytest.approx(slope_high, rel=1e-6)
    assert gamma(rs - 1e-9) == pytest.approx(gamma(rs), abs=1e-8)
    for r in (0.1, 0.5, 0.8):
        assert gamma(r) < gamma_high(r), "time sharing beats the curve below R*"
        assert gamma(r) == pytest.approx(1 - (1 - gamma(rs)) * r / rs)
    assert gap_db(2 * gamma(3.0), 3.0) == pytest.approx(10 * math.log10(2))


def test_gamma_rejects_bad_rates():
    with pytest.raises(ValueError, match="rate"):
        gamma(-1)
    with pytest.raises(ValueError, match="rate"):
        gamma(float("nan"))


def test_theory_cli_json(capsys):
    assert cli_main(["theory", "--rates", "0.5,1,2,4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["r_star"] == pytest.approx(r_star())
    assert [p["rate"] for p in out["points"]] == [0.5, 1.0, 2.0, 4.0]
    assert out["points"][1]["gamma"] == pytest.approx(7 / 16)
    assert out["points"][0]["gamma"] == pytest.approx(gamma(0.5))


def test_theory_cli_bad_rates(capsys):
    with pytest.raises(SystemExit):
        cli_main(["theory", "--rates", "a,b"])
    assert "comma-separated" in capsys.readouterr().err


def test_theory_plot_from_rows(tmp_path):
    rows = [{"method": "nested", "lattice": "E8", "rate": 4.06, "mse": 0.0115},
            {"method": "scalar", "lattice": "Z", "rate": 4.0, "mse": 0.023}]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    png = tmp_path / "gamma.png"
    assert cli_main(["theory", "--plot", str(png), "--bench-json", str(path)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
