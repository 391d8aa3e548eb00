"""Reports over run directories: one markdown table and PNG plots.

Input: each run directory holds ``results.json`` shaped like
``{"method": str, "setting": str, "bits": {"weights", "activations", "kv": float | null},
"ppl": {dataset: float}, "tasks": {task: {metric: value}}, "config": {...}}``
(``null`` bits = that tensor kind stays in floating point).  A missing ``setting`` is derived
(``W4A16``, ``W4A4KV4``; FP entries count as 16): nominal bits of the config's
``weights``/``activations``/``kv`` sections when present, else the measured bits.  Missing
``method`` falls back to ``config.method``, ``config.name``, then the directory name.

Table columns: run, method, setting, bits W/A/KV (``FP`` for null), perplexity per dataset and
the task accuracy (``acc`` unless ``task_metric`` says otherwise; in percent), each followed by
its difference to the floating-point reference run in parentheses.  The reference is the run
named by ``fp`` or else the first run whose method is ``fp``/``fp16``/``fp32``/``bf16`` or whose
bits are all null.

Plots (matplotlib, Agg backend, imported lazily): ``ppl_vs_bits_<dataset>.png`` (perplexity
against weight bits per entry, the FP reference as a dashed line) and, given a Gaussian bench
JSON (rows ``{"method","lattice","q","num_betas","rate","mse","gamma","ratio","gap_db"}``),
``gaussian_rd.png`` with Γ(R) drawn by :func:`llmquant.theory.plot.plot_gamma`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

FP_METHODS = {"fp", "fp16", "fp32", "bf16", "float"}


class ReportError(ValueError):
    """A run directory or input file cannot be used for the report."""


def load_run(path: str | os.PathLike) -> dict:
    """``results.json`` of a run directory (or the file itself) plus ``name``/``path`` keys."""
    p = Path(path)
    file = p / "results.json" if p.is_dir() else p
    if not file.is_file():
        raise ReportError(f"{p}: no results.json (run `llmquant quantize`/`llmquant eval` on it first)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{file}: expected a JSON object, got {type(data).__name__}")
    # a run directory (or its results.json) is named by the directory; a copied file (results/<model>/<run>.json)
    # by its own stem, so that copies of many runs in one folder keep their names
    name = p.name if p.is_dir() else (p.parent.name if p.name == "results.json" else p.stem)
    bits = data.get("bits") or {}
    run = {
        "name": name,
        "path": str(p),
        "bits": {k: bits.get(k) for k in ("weights", "activations", "kv")},
        "ppl": dict(data.get("ppl") or {}),
        "tasks": dict(data.get("tasks") or {}),
        "config": data.get("config") or {},
    }
    cfg = run["config"]
    run["method"] = data.get("method") or cfg.get("method") or cfg.get("name") or name
    run["setting"] = data.get("setting") or setting_from_config(cfg, run["bits"]) or setting_from_bits(run["bits"])
    return run


def setting_from_config(cfg: dict, measured: dict | None = None) -> str | None:
    """Nominal ``W4A4KV4`` label from a run config's ``weights``/``activations``/``kv`` sections
    (their ``bits``; a section whose ``method`` is none/fp counts as 16 bits, KV then omitted).  Lattice
    sections ignore ``bits`` (their rate comes from ``q``/``k`` or the box width): they are labelled with
    the run's measured bits (``measured``, results.json ``bits``: stored bits for weights) rounded to an
    integer, so E8 W3/W2 runs are not called W4; without a measured figure, ``bits`` as before."""
    if not all(isinstance(cfg.get(k), dict) for k in ("weights", "activations", "kv")):
        return None
    measured = measured or {}

    def nominal(key):
        section = cfg[key]
        if str(section.get("method", "none")).lower() in ("none", "fp", "null", ""):
            return None
        if str(section.get("method")).lower() == "lattice" and isinstance(measured.get(key), (int, float)):
            return float(round(measured[key]))
        if section.get("bits") is None:
            return None
        return float(section["bits"])

    return setting_from_bits({k: nominal(k) for k in ("weights", "activations", "kv")})


def setting_from_bits(bits: dict) -> str:
    """``W4A16``-style label; ``null`` counts as 16 bits, KV shown only when quantized."""

    def b(v):
        return "16" if v is None else f"{float(v):g}"

    label = f"W{b(bits.get('weights'))}A{b(bits.get('activations'))}"
    if bits.get("kv") is not None:
        label += f"KV{b(bits['kv'])}"
    return label


def is_fp(run: dict) -> bool:
    return str(run["method"]).lower() in FP_METHODS or all(v is None for v in run["bits"].values())


def find_reference(runs: list[dict], fp: str | None = None) -> dict | None:
    if fp is not None:
        for r in runs:
            if fp in (r["name"], r["path"], r["method"]):
                return r
        raise ReportError(f"--fp {fp!r} matches no run (names: {', '.join(r['name'] for r in runs)})")
    return next((r for r in runs if is_fp(r)), None)


def _task_value(metrics: dict, metric: str) -> float | None:
    v = metrics.get(metric, metrics.get("acc"))
    return float(v) if isinstance(v, (int, float)) else None


def _fmt_bits(v) -> str:
    return "FP" if v is None else f"{float(v):.3g}"


def _cell(value, ref, fmt: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = format(value * scale, fmt)
    if ref is not None:
        text += f" ({format((value - ref) * scale, '+' + fmt)})"
    return text


def build_table(runs: list[dict], fp: str | None = None, task_metric: str = "acc") -> str:
    """The markdown table (see the module docstring)."""
    if not runs:
        raise ReportError("no runs given")
    ref = find_reference(runs, fp)
    datasets = sorted({d for r in runs for d in r["ppl"]})
    tasks = sorted({t for r in runs for t in r["tasks"]})
    head = ["run", "method", "setting", "bits W/A/KV"] + [f"ppl {d}" for d in datasets] + \
        [f"{t} {task_metric} %" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        bits = "/".join(_fmt_bits(r["bits"][k]) for k in ("weights", "activations", "kv"))
        row = [r["name"], str(r["method"]), str(r["setting"]), bits]
        for d in datasets:
            v = r["ppl"].get(d)
            rv = ref["ppl"].get(d) if ref is not None and ref is not r else None
            row.append(_cell(v, rv, ".2f"))
        for t in tasks:
            v = _task_value(r["tasks"].get(t, {}), task_metric)
            rv = _task_value(ref["tasks"].get(t, {}), task_metric) if ref is not None and ref is not r else None
            row.append(_cell(v, rv, ".1f", 100.0))
        lines.append("| " + " | ".join(row) + " |")
    note = f"Δ in parentheses: against `{ref['name']}`." if ref is not None else "No FP reference run: no Δ."
    return "\n".join(lines) + "\n\n" + note + "\n"


def series_label(run: dict) -> str:
    """The plot series of a run: its method, the weight code when the config names one (``box`` / ``voronoi``), and
    what is quantized besides the weights (``A16``, ``A4``, ``A4KV4``: the setting without its ``W<bits>``), so a
    line joins only runs that differ in weight bits."""
    code = ((run.get("config") or {}).get("weights") or {}).get("code")
    rest = re.sub(r"^W[\d.]+", "", str(run.get("setting") or "")) or "?"
    return f"{run['method']}{' ' + code if code else ''} · {rest}"


def plot_ppl_vs_bits(runs: list[dict], out_dir: str | os.PathLike, fp: str | None = None) -> list[Path]:
    """One PNG per perplexity dataset: ppl against weight bits per entry, one line per :func:`series_label`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref = find_reference(runs, fp)
    paths = []
    for d in sorted({d for r in runs for d in r["ppl"]}):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        groups: dict[str, list[tuple[float, float, str]]] = {}
        for r in runs:
            if d not in r["ppl"] or r is ref or r["bits"]["weights"] is None:
                continue
            groups.setdefault(series_label(r), []).append((float(r["bits"]["weights"]), float(r["ppl"][d]),
                                                          str(r["setting"])))
        markers = "osD^v<>ph*"
        for i, (method, pts) in enumerate(sorted(groups.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], ls="-",
                    alpha=0.85, label=method)
            for x, y, s in pts:
                ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if ref is not None and d in ref["ppl"]:
            ax.axhline(ref["ppl"][d], color="k", ls="--", lw=1, label=f"{ref['method']} ({ref['ppl'][d]:.2f})")
        ax.set_xlabel("weight bits per entry (side information included)")
        ax.set_ylabel(f"perplexity ({d})")
        values = [p[1] for pts in groups.values() for p in pts] + ([ref["ppl"][d]] if ref and d in ref["ppl"] else [])
        if values and max(values) / min(values) > 5:
            # Broken settings (ppl in the thousands) would flatten everything else on a linear axis.
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{d} perplexity vs bits")
        path = out_dir / f"ppl_vs_bits_{d}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def load_gaussian_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``llmquant bench gaussian --json`` output (a list, or ``{"rows": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReportError(f"--gaussian {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"--gaussian {path}: not valid JSON ({exc})") from None
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ReportError(f"--gaussian {path}: expected a non-empty list of rows")
    for i, r in enumerate(rows):
        missing = [k for k in ("method", "rate", "mse") if not isinstance(r, dict) or k not in r]
        if missing:
            raise ReportError(f"--gaussian {path}: row {i} lacks {', '.join(missing)}")
        r.setdefault("lattice", "")
    return rows


def gaussian_table(rows: list[dict]) -> str:
    from llmquant.theory import gamma

    lines = ["| method | lattice | q | betas | rate | mse | Γ(R) | mse/Γ | gap dB |", "|" + "---|" * 9]
    for r in rows:
        g = gamma(float(r["rate"]))
        lines.append(f"| {r['method']} | {r.get('lattice', '')} | {r.get('q', '')} | {r.get('num_betas', '')} | "
                     f"{float(r['rate']):.3f} | {float(r['mse']):.4g} | {g:.4g} | {float(r['mse']) / g:.3f} | "
                     f"{10 * math.log10(float(r['mse']) / g):.2f} |")
    return "\n".join(lines) + "\n"


def write_report(run_dirs, out: str | os.PathLike = "report.md", gaussian: str | os.PathLike | None = None,
                 fp: str | None = None, task_metric: str = "acc", plots: bool = True) -> dict:
    """Write the markdown report (and PNGs next to it); returns ``{"report": Path, "plots": [Path]}``."""
    runs = [load_run(p) for p in run_dirs]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = ["# llmquant report", "", build_table(runs, fp, task_metric)]
    pngs: list[Path] = []
    if plots:
        pngs += plot_ppl_vs_bits(runs, out.parent, fp)
    if gaussian is not None:
        rows = load_gaussian_rows(gaussian)
        parts += ["## Gaussian matrix products vs Γ(R)", "", gaussian_table(rows)]
        if plots:
            from llmquant.theory.plot import plot_gamma

            pngs.append(plot_gamma(out.parent / "gaussian_rd.png", rows))
    if pngs:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    out.write_text("\n".join(parts))
    return {"report": out, "plots": pngs, "runs": runs}
