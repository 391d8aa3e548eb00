"""Plot Γ(R) with measured (rate, mse) points of the methods (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from .gamma import gamma, r_star


def plot_gamma(path: str | Path, rows: list[dict] | None = None, max_rate: float | None = None) -> Path:
    """Write a log-scale plot of Γ(R) (and the rows' measured points, grouped by method) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    rows = rows or []
    top = max([5.5] + [r["rate"] + 0.3 for r in rows]) if max_rate is None else max_rate
    grid = [i * top / 400 for i in range(401)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(grid, [gamma(r) for r in grid], "k-", label="Γ(R)")
    rs = r_star()
    ax.axvline(rs, color="0.7", lw=0.8, ls=":")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = r["method"] if r["method"].startswith("scalar") else f"{r['method']} {r['lattice']}"
        groups.setdefault(key, []).append(r)
    markers = "osD^v<>ph*"
    for i, (key, pts) in enumerate(sorted(groups.items())):
        ax.semilogy([p["rate"] for p in pts], [p["mse"] for p in pts], markers[i % len(markers)], label=key, alpha=0.8)
    ax.set_xlabel("rate R (bits per entry, all side information included)")
    ax.set_ylabel("E||AᵀB − ÂᵀB̂||² / (n a b)")
    ax.set_title(f"iid Gaussian matrix products; R* = {rs:.4f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
