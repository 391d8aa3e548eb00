"""``llmquant theory``: Γ(R) for iid Gaussian matrix products, and its plot with measured points."""

from __future__ import annotations

import argparse
import json
import sys


def _rates(text: str) -> list[float]:
    try:
        rates = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates must be comma-separated numbers, e.g. 0.5,1,2,4; got {text!r}")
    if not rates or any(r < 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rates needs at least one rate >= 0, got {text!r}")
    return rates


def register(sub) -> None:
    p = sub.add_parser("theory", help="the rate-distortion limit Gamma(R) for Gaussian matrix products")
    p.add_argument("--rates", type=_rates, default=[0.5, 1.0, 2.0, 3.0, 4.0, 5.0],
                   help="comma-separated rates in bits per entry (default 0.5,1,2,3,4,5)")
    p.add_argument("--json", action="store_true", help='print {"r_star": ..., "points": [{"rate", "gamma"}, ...]}')
    p.add_argument("--plot", metavar="FILE", help="draw Gamma(R) with the measured points of the methods (PNG)")
    p.add_argument("--bench-json", metavar="FILE",
                   help="measured rows from `llmquant bench gaussian --json` to plot (default: measure now)")
    p.add_argument("--n", type=int, default=1024, help="rows for the measurement when plotting (default 1024)")
    p.add_argument("--cols", type=int, default=32, help="columns for the measurement when plotting (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llmquant.theory.gamma import gamma, r_star

    points = [{"rate": r, "gamma": gamma(r)} for r in args.rates]
    if args.json:
        print(json.dumps({"r_star": r_star(), "points": points}, indent=1))
    else:
        print(f"R* = {r_star():.6f}  Gamma(R*) = {gamma(r_star()):.6f}")
        for pt in points:
            print(f"R = {pt['rate']:<8g} Gamma = {pt['gamma']:.6g}")
    if args.plot:
        from llmquant.theory.plot import plot_gamma

        if args.bench_json:
            with open(args.bench_json) as f:
                rows = json.load(f)
        else:
            from llmquant.theory.gaussian_bench import run_bench

            rows = run_bench(args.n, args.cols, args.seed)
        plot_gamma(args.plot, rows)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
