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


#: Box-code search defaults (grid in units of the box half-width: β 2^b in [lo, hi]).
BOX_DEFAULTS = {"n_samples": 32768, "seed": 0, "grid_size": 96, "lo": 0.4, "hi": 8.0, "max_sweeps": 8}
#: Largest integer ratio r with (2^(b+1) - 1) r <= 127: β_j (2 x_i) = c r_j (odd integer) fits int8.
INT8_RMAX = {1: 42, 2: 18, 3: 8}
#: level companding exponents tried by ``--box`` (1 = the lattice code)
BOX_GAMMAS = (1.0, 1.2, 1.35)


def box_error_tables(b: int, grid: torch.Tensor, x: torch.Tensor, code: str = "hamming",
                     gamma: float | None = 1.0, levels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e, o)`` as :func:`error_tables` for the box code (width ``b``, ``code``, ``gamma``) with one β per
    grid point (exact nearest codeword, :func:`.box.box_nearest`); no overload flag (``o`` all False)."""
    from .box import box_nearest

    errs = []
    for beta in grid.tolist():
        xh = box_nearest(x, b, torch.tensor([beta]), code, gamma, levels=levels)[3].to(x.dtype)
        errs.append(torch.stack([(x - xh).square().sum(-1), (x * xh).sum(-1), xh.square().sum(-1)], -1).float())
    e = torch.stack(errs, 1)
    return e, torch.zeros(e.shape[:2], dtype=torch.bool)


def search_box_betas(b: int, k: int | None = None, code: str = "hamming", gamma: float | None = 1.0, n_samples: int = BOX_DEFAULTS["n_samples"], seed: int = BOX_DEFAULTS["seed"],
                     grid_size: int = BOX_DEFAULTS["grid_size"], lo: float = BOX_DEFAULTS["lo"],
                     hi: float = BOX_DEFAULTS["hi"], max_sweeps: int = BOX_DEFAULTS["max_sweeps"],
                     integer_rmax: int | None = None, n_c: int = 16, levels=None) -> dict:
    """β set of the box code of width ``b`` (:mod:`.box`; ``code``, level companding ``gamma``): ``k``
    scales (default ``2^K`` of the code: 16 Hamming, 2 parity) minimising the Gaussian MSE per entry after
    the best gain (module docstring's objective) with the exact min-error encoder.  Grids are in units of
    the outer level ``λ_max = (2^b - ½)^γ`` (``lo``, ``hi`` apply to ``β λ_max / (1 - 1/2^(b+1))``).

    Free search (``integer_rmax=None``): grid ``β = (lo/2^b) (hi/lo)^(g/(G-1))``, greedy then coordinate
    descent (:func:`search_betas`).  Integer ratios (``integer_rmax=R``): ``β_j = c r_j`` with distinct
    integers ``1 <= r_j <= R`` (so ``2 x_i / c = r_j · odd`` is an integer, e.g. int8 when
    ``R <= INT8_RMAX[b]``); for each of ``n_c`` values ``c`` geometric in ``[2, 8] / (2^b R)`` the same
    search over the grid ``c·{1..R}`` (``k <= R``), best ``c`` kept.  Returns ``{"betas", "mse",
    "sweeps"}`` (+ ``"c"``, ``"ratios"`` for integer sets)."""
    from .box import CODES

    if k is None:
        k = 1 << CODES[code][1]
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n_samples, 8, generator=gen, dtype=torch.float32)
    top = float(levels[-1]) if levels is not None else float((1 << b) - 0.5) ** float(gamma)
    half = top / (1 - 0.5 ** (b + 1))
    if integer_rmax is None:
        grid = torch.logspace(torch.log10(torch.tensor(lo / half)), torch.log10(torch.tensor(hi / half)), grid_size,
                              dtype=torch.float64)
        e, o = box_error_tables(b, grid, x, code, gamma, levels)
        r = search_betas("E8", 2, k, grid_size=grid.numel(), max_sweeps=max_sweeps, choose="min_error",
                         tables=(grid, e, o))
        out = {"code": code, "gamma": None if levels is not None else float(gamma), "betas": r["betas"], "mse": r["mse"],
               "sweeps": r["sweeps"]}
        if levels is not None:
            out["levels"] = [float(v) for v in levels]
        return out
    R = int(integer_rmax)
    if not 1 <= k <= R:
        raise ValueError(f"k={k} distinct integer ratios need integer_rmax >= k, got {R}")
    best = None
    ratios = torch.arange(1, R + 1, dtype=torch.float64)
    for c in torch.logspace(torch.log10(torch.tensor(2.0 / (half * R))), torch.log10(torch.tensor(8.0 / (half * R))),
                            n_c, dtype=torch.float64).tolist():
        grid = c * ratios
        e, o = box_error_tables(b, grid, x, code, gamma)
        r = search_betas("E8", 2, k, grid_size=R, max_sweeps=max_sweeps, choose="min_error", tables=(grid, e, o))
        if best is None or r["mse"] < best["mse"]:
            rs = [round(bb / c) for bb in r["betas"]]
            best = {"code": code, "gamma": float(gamma), "betas": [c * q for q in rs], "mse": r["mse"], "sweeps": r["sweeps"], "c": c, "ratios": rs}
    return best


def _gain_mse(x: torch.Tensor, xh: torch.Tensor) -> float:
    x, xh = x.double(), xh.double()
    g = (x * xh).sum() / xh.square().sum()
    return float((x - g * xh).square().mean())


def search_box_levels(b: int, code: str, betas, levels0, n_samples: int = BOX_DEFAULTS["n_samples"],
                      seed: int = BOX_DEFAULTS["seed"], sweeps: int = 4,
                      steps=(0.95, 1.05, 0.98, 1.02, 0.99, 1.01)) -> dict:
    """Free level table of the box code: coordinate descent on the 2^b positive levels (antisymmetric
    table, :func:`.box.box_levels`), each level in turn multiplied by every factor in ``steps`` (kept when
    the gain-optimised Gaussian MSE drops and the order holds), ``betas`` fixed.  Returns
    ``{"levels", "mse", "sweeps"}``."""
    from .box import box_nearest

    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n_samples, 8, generator=gen, dtype=torch.float32)
    betas = torch.as_tensor(betas, dtype=torch.float32)

    def f(pos):
        return _gain_mse(x, box_nearest(x, b, betas, code, None, levels=pos)[3])

    pos = torch.as_tensor(levels0, dtype=torch.float64).clone()
    cur, done = f(pos), 0
    for done in range(1, sweeps + 1):
        changed = False
        for i in range(pos.numel()):
            for step in steps:
                p2 = pos.clone()
                p2[i] *= step
                if (p2.diff() <= 0).any():
                    continue
                v = f(p2)
                if v < cur - 1e-12:
                    cur, pos, changed = v, p2, True
        if not changed:
            break
    return {"levels": [round(float(v), 6) for v in pos], "mse": cur, "sweeps": done}


def box_levels_main(args) -> int:
    """``--box-levels FILE``: add the ``"table"`` variant (free level table, alternating level descent and
    β search, started from the best γ of the Hamming code for b = 3 and of the overall ``best`` for b = 1, 2)
    to an existing box table (written by ``--box``) in place."""
    from .box import box_levels

    path = Path(args.box_levels)
    table = json.loads(path.read_text())
    kw = {"n_samples": args.n_samples, "seed": args.seed}
    t0 = time.time()
    for b in (1, 2, 3):
        if b == 3:
            cands = [c for c in table["candidates"][str(b)] if c["code"] == "hamming"]
            start = min(cands, key=lambda c: c["mse"])
            start = search_box_betas(b, None, "hamming", start["gamma"], grid_size=args.grid_size,
                                     max_sweeps=args.max_sweeps, **kw)
        else:
            start = table["sets"]["best"][str(b)]
        code, betas = start["code"], start["betas"]
        pos = box_levels(b, start["gamma"])[1 << b:].tolist()
        r = None
        for _ in range(2):
            lv = search_box_levels(b, code, betas, pos, **kw)
            pos = lv["levels"]
            r = search_box_betas(b, None, code, None, grid_size=args.grid_size, max_sweeps=args.max_sweeps,
                                 levels=pos, **kw)
            betas = r["betas"]
            print(f"box b={b} table {code} levels={pos} mse={r['mse']:.6g} ({time.time() - t0:.0f}s)", file=sys.stderr)
        r = dict(r, betas=[round(v, 7) for v in r["betas"]], start_gamma=start["gamma"])
        table["sets"].setdefault("table", {})[str(b)] = r
    cmd = "python -m llmquant.lattice.beta_search " + " ".join(args.argv)
    table.setdefault("added_commands", []).append(cmd)
    table["table_note"] = ("'table': free antisymmetric level table (search_box_levels: coordinate descent on the 2^b "
                           "positive levels, factors 0.95..1.05) alternated twice with the beta search, started from the "
                           "best gamma of the Hamming code (b=3) or from 'best' (b=1, 2); same samples (n_samples, seed)")
    path.write_text(json.dumps(table, indent=1) + "\n")
    return 0


def box_main(args) -> int:
    """``--box``: search the shipped box-code sets (float and integer ratios) and write the table."""
    cfg = {k: getattr(args, k) for k in BOX_DEFAULTS}
    table = {
        "description": "16 beta scales for the E8 box code (llmquant/lattice/box.py) per width b; objective: "
                       "Monte-Carlo MSE per entry of unit-variance Gaussian 8-vectors after the best gain, exact "
                       "nearest-codeword (min-error) encoder; 'float': free grid search, 'int': beta_j = c r_j with "
                       "distinct integers r_j <= rmax; 'int8': rmax = INT8_RMAX[b] (r_j times the odd value fits int8; "
                       "at b=3 only 8 ratios exist, so k=8 there: not a 16-beta set, recorded for the comparison)",
        "command": "python -m llmquant.lattice.beta_search " + " ".join(args.argv),
        "config": {**cfg, "dtype": "float32", "torch": torch.__version__},
        "sets": {"lattice": {}, "best": {}, "int": {}, "int8": {}},
        "candidates": {},
    }
    t0 = time.time()
    for b in (1, 2, 3):
        kw = {"n_samples": cfg["n_samples"], "seed": cfg["seed"], "max_sweeps": cfg["max_sweeps"]}
        fl = {"grid_size": cfg["grid_size"], "lo": cfg["lo"], "hi": cfg["hi"]}
        cands = []
        for code in ("hamming", "parity"):
            for gamma in BOX_GAMMAS:
                r = search_box_betas(b, None, code, gamma, **fl, **kw)
                cands.append(r)
                print(f"box b={b} {code} gamma={gamma} mse={r['mse']:.6g} ({time.time() - t0:.0f}s)", file=sys.stderr)
        table["candidates"][str(b)] = [{k: r[k] for k in ("code", "gamma", "mse")} for r in cands]
        runs = {
            "lattice": next(r for r in cands if r["code"] == "hamming" and r["gamma"] == 1.0),
            "best": min(cands, key=lambda r: r["mse"]),
            "int": search_box_betas(b, 16, integer_rmax=max(INT8_RMAX[b], 24), **kw),
            "int8": search_box_betas(b, min(16, INT8_RMAX[b]), integer_rmax=INT8_RMAX[b], **kw),
        }
        for kind, r in runs.items():
            r = dict(r, betas=[round(v, 7) for v in r["betas"]])
            table["sets"][kind][str(b)] = r
            print(f"box b={b} {kind} {r['code']} gamma={r['gamma']} mse={r['mse']:.6g} betas={r['betas']} "
                  f"({time.time() - t0:.0f}s)", file=sys.stderr)
    return _emit(table, args.out)


def _emit(table: dict, out: str | None) -> int:
    """Write the JSON table to ``out`` (or print it); the CLI's exit code."""
    text = json.dumps(table, indent=1)
    if out:
        Path(out).write_text(text + "\n")
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmquant.lattice.beta_search", description=__doc__.split("\n")[0])
    p.add_argument("--lattice", action="append", help="lattice(s) to search (default: all shipped)")
    p.add_argument("--q", type=int, action="append", help="q value(s) (default: the shipped ones)")
    p.add_argument("--k", type=int, action="append", help="k value(s) (default: the shipped ones)")
    for key, val in DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(val), default=val)
    p.add_argument("--choose", action="append", choices=sorted(SET_KEYS), help="rule(s) (default: both)")
    p.add_argument("--out", help="write the JSON table here (default: print it)")
    p.add_argument("--box", action="store_true", help="search the E8 box-code sets instead (BOX_DEFAULTS apply)")
    p.add_argument("--box-levels", metavar="FILE", help="add the free-level-table box variant to FILE (from --box)")
    raw = argv if argv is not None else sys.argv[1:]
    if "--box" in raw or "--box-levels" in raw:
        for key, val in BOX_DEFAULTS.items():
            p.set_defaults(**{key: val})
    args = p.parse_args(argv)
    if args.box or args.box_levels:
        args.argv = list(raw)
        return box_levels_main(args) if args.box_levels else box_main(args)
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
    return _emit(table, args.out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
