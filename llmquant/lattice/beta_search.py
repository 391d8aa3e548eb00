"""Search for the β sets of :class:`.nested.NestedLatticeQuantizer`, and loading of the shipped sets.

Objective: the Monte-Carlo mean squared error per entry of unit-variance Gaussian
vectors after the best scalar gain (MMSE shrinkage, which callers realise for free by
fitting their per-row/column scale),

    MSE(B) = min_γ E ||x - γ x_hat_B(x)||^2 / d = (E||x||^2 - (E<x, x_hat>)^2 / E||x_hat||^2) / d,

``x ~ N(0, I_d)``, for a set ``B`` of ``k`` scales under the quantizer's choice rule
(default ``first_fit``).  At high rate γ -> 1 and this is the plain MSE; at low rate
(q = 2, 4) the gain matters and without it the best β would be a different one.

Method (grid + coordinate descent):

1. Draw ``n_samples`` vectors from ``torch.Generator().manual_seed(seed)``.
2. On a geometric grid ``β_g = lo/q * (hi/lo)^(g/(G-1))``, g = 0..G-1, compute for every
   sample its squared error ``e[i, g]`` (Voronoi-reduced reconstruction, so overload
   errors are counted as they really are), ``<x, x_hat>``, ``||x_hat||^2`` and its overload flag
   ``o[i, g]``.  Any set ``B`` drawn from the grid is then evaluated exactly from these
   tables without re-quantizing:
   first-fit takes the first non-overloaded β of ``B`` in ascending order (the least
   error when all overload), min-error takes ``min_g e[i, g]``.
3. k = 1: exhaustive over the grid.  k > 1: greedy (add the grid point that lowers the
   MSE most, k times), then coordinate-descent sweeps: each β in turn moves to the best
   grid point with the others fixed, until a sweep changes nothing (or ``max_sweeps``).

The objective is piecewise smooth in ``B`` and the grid spacing is ``(hi/lo)^(1/(G-1))``
(about 3% with the defaults), which bounds how far the result can be from a local optimum.
The shipped table ``data/beta_sets.json`` records the command, seed, sample size and grid
that produced it; ``python -m llmquant.lattice.beta_search --out FILE`` regenerates it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .beta_sets import SET_KEYS, load_beta_set  # noqa: F401  (load_beta_set: also importable from here)
from .closest_point import LATTICE_DIMS, closest_point
from .voronoi import VoronoiCodec

#: What the shipped table holds: lattice -> q -> k values.
SHIPPED = {
    "E8": {3: (1, 4), 4: (1, 2, 4), 8: (1, 2, 4), 12: (5, 6, 8), 14: (1, 2, 4), 16: (1, 2, 4), 32: (1, 2)},
    "D4": {4: (2,), 8: (2,), 14: (2,), 16: (1, 2)},
    "Z": {4: (1,), 16: (1,)},
}
DEFAULTS = {"n_samples": 16384, "seed": 0, "grid_size": 96, "lo": 0.75, "hi": 12.0, "max_sweeps": 4}



def _dim(name: str) -> int:
    return LATTICE_DIMS[name] or 8


def beta_grid(q: int, grid_size: int, lo: float, hi: float) -> torch.Tensor:
    """Geometric grid ``lo/q .. hi/q`` (float64, ascending)."""
    return torch.logspace(torch.log10(torch.tensor(lo / q)), torch.log10(torch.tensor(hi / q)), grid_size,
                          dtype=torch.float64)


def error_tables(name: str, q: int, grid: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e, o)``: per sample and grid point (N, G, 3) float32 ``[||x - x_hat||^2, <x, x_hat>,
    ||x_hat||^2]`` and overload flags (N, G) bool."""
    codec = VoronoiCodec(name, q, x.shape[-1] if name == "Z" else None)
    lim = 2.0 * q + 2.0
    errs, overs = [], []
    for beta in grid.tolist():
        y2 = 2 * closest_point((x / beta).clamp(-lim, lim), name)
        x2, l2 = codec.reduce2(y2)
        xh = beta * 0.5 * x2
        errs.append(torch.stack([(x - xh).square().sum(-1), (x * xh).sum(-1), xh.square().sum(-1)], -1).float())
        overs.append((l2 != 0).any(-1))
    return torch.stack(errs, 1), torch.stack(overs, 1)


def set_mse(e: torch.Tensor, o: torch.Tensor, idx: list[int], d: int, choose: str = "first_fit") -> float:
    """Gain-optimised MSE per entry of the grid subset ``idx`` (ascending grid indices) under ``choose``."""
    es = e[:, idx]  # (N, k, 3)
    err = es[..., 0]
    best = err.argmin(1, keepdim=True)
    if choose == "min_error":
        pick = best
    else:
        ok = ~o[:, idx]
        first = ok.to(torch.int8).argmax(1, keepdim=True)
        pick = torch.where(ok.any(1, keepdim=True), first, best)
    sel = es.gather(1, pick[..., None].expand(-1, 1, 3))[:, 0].double().mean(0)
    x2 = sel[0] + 2 * sel[1] - sel[2]  # E||x||^2 = E||x - xh||^2 + 2 E<x, xh> - E||xh||^2
    if float(sel[2]) <= 0:
        return float(x2) / d
    return float(x2 - sel[1] ** 2 / sel[2]) / d


def search_betas(
    name: str,
    q: int,
    k: int,
    n_samples: int = DEFAULTS["n_samples"],
    seed: int = DEFAULTS["seed"],
    grid_size: int = DEFAULTS["grid_size"],
    lo: float = DEFAULTS["lo"],
    hi: float = DEFAULTS["hi"],
    max_sweeps: int = DEFAULTS["max_sweeps"],
    choose: str = "first_fit",
    tables=None,
    window: int = 16,
) -> dict:
    """Run the search (module docstring); returns ``{"betas", "mse", "overload", "sweeps"}``.

    ``tables``: optional precomputed ``(grid, e, o)`` to share across k.
    """
    if k < 1 or k > grid_size:
        raise ValueError(f"k must be in [1, grid_size={grid_size}], got {k}")
    d = _dim(name)
    if tables is None:
        tables = make_tables(name, q, n_samples, seed, grid_size, lo, hi)
    grid, e, o = tables
    G = grid.numel()

    def f(idx):
        return set_mse(e, o, sorted(idx), d, choose)

    chosen: list[int] = []
    for _ in range(k):  # greedy
        best = min((g for g in range(G) if g not in chosen), key=lambda g: f(chosen + [g]))
        chosen.append(best)
    cur = f(chosen)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        changed = False
        chosen.sort()
        for pos in range(k):
            others = chosen[:pos] + chosen[pos + 1:]
            # keep the order: move between the neighbours, at most `window` grid steps
            left = chosen[pos - 1] + 1 if pos > 0 else 0
            right = chosen[pos + 1] - 1 if pos + 1 < k else G - 1
            lo_g, hi_g = max(left, chosen[pos] - window), min(right, chosen[pos] + window)
            cand = min(range(lo_g, hi_g + 1), key=lambda g: f(others + [g]))
            val = f(others + [cand])
            if val < cur - 1e-12 and cand != chosen[pos]:
                chosen[pos], cur, changed = cand, val, True
        if not changed or k == 1:
            break
    idx = sorted(chosen)
    ok = ~o[:, idx]
    return {
        "betas": [float(grid[i]) for i in idx],
        "mse": cur,
        "overload": float((~ok.any(1)).float().mean()),
        "sweeps": sweeps,
    }


def make_tables(name, q, n_samples, seed, grid_size, lo, hi):
    """Samples (seeded) and error tables for :func:`search_betas`: ``(grid, e, o)``."""
    d = _dim(name)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n_samples, d, generator=gen, dtype=torch.float32)
    grid = beta_grid(q, grid_size, lo, hi)
    e, o = error_tables(name, q, grid, x)
    return grid, e, o


def evaluate_betas(name: str, q: int, betas, n_samples: int, seed: int, choose: str = "first_fit") -> float:
    """Monte-Carlo MSE per entry of a given β set on fresh seeded Gaussian samples."""
    from .nested import NestedLatticeQuantizer

    d = _dim(name)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n_samples, d, generator=gen, dtype=torch.float32)
    nq = NestedLatticeQuantizer(name, q, torch.as_tensor(betas, dtype=torch.float64), choose=choose,
                                d=d if name == "Z" else None)
    return float((nq.fake_quant(x) - x).square().double().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmquant.lattice.beta_search", description=__doc__.split("\n")[0])
    p.add_argument("--lattice", action="append", help="lattice(s) to search (default: all shipped)")
    p.add_argument("--q", type=int, action="append", help="q value(s) (default: the shipped ones)")
    p.add_argument("--k", type=int, action="append", help="k value(s) (default: the shipped ones)")
    for key, val in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(val), default=val)
    p.add_argument("--choose", action="append", choices=sorted(SET_KEYS), help="rule(s) (default: both)")
    p.add_argument("--out", help="write the JSON table here (default: print it)")
    args = p.parse_args(argv)
    lattices = args.lattice or list(SHIPPED)
    cfg = {k: getattr(args, k) for k in DEFAULTS}
    table = {
        "description": "beta sets for NestedLatticeQuantizer (ascending); objective: Monte-Carlo MSE per entry of "
                       "unit-variance Gaussian vectors under the choice rule ('sets': first_fit, 'sets_min_error': "
                       "min_error); grid + coordinate descent (see llmquant/lattice/beta_search.py)",
        "command": "python -m llmquant.lattice.beta_search " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {**cfg, "dtype": "float32", "torch": torch.__version__},
    }
    rules = args.choose or list(SET_KEYS)
    t0 = time.time()
    for name in lattices:
        for q in args.q or SHIPPED[name]:
            tables = make_tables(name, q, cfg["n_samples"], cfg["seed"], cfg["grid_size"], cfg["lo"], cfg["hi"])
            for k in args.k or SHIPPED[name].get(q, (1, 2, 4)):
                for rule in rules:
                    r = search_betas(name, q, k, max_sweeps=cfg["max_sweeps"], tables=tables,
                                     grid_size=cfg["grid_size"], choose=rule)
                    r["betas"] = [round(b, 6) for b in r["betas"]]
                    table.setdefault(SET_KEYS[rule], {}).setdefault(name, {}).setdefault(str(q), {})[str(k)] = r
                    print(f"{name} q={q} k={k} {rule} mse={r['mse']:.6g} overload={r['overload']:.4f} "
                          f"betas={r['betas']} ({time.time() - t0:.0f}s)", file=sys.stderr)
    text = json.dumps(table, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
