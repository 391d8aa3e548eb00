"""``llmquant bench gaussian``: lattice and scalar codes on iid Gaussian matrix products vs Γ(R).

Every row is one method at one rate (see :mod:`.gaussian` for the encoding and the exact
rate accounting); ``rate`` is the *stored* bits per entry (fp16 gain included), ``ratio = mse / Γ(rate)``
and ``gap_db = 10 log10(ratio)``.  A ratio below 1 would mean the rate accounting misses bits.
``deployable``: the stored layout is what a kernel reads with shifts, masks and a table (scalar and
box codes); the Voronoi rows are not (their decoder needs the ``mod qΛ`` reduction, and the current
``LatticeLinear`` stores a whole uint8 β index and an fp32 scale, more than their ``rate`` counts).
``info_rate`` / ``info_ratio``: the mixed-radix information rate and ``mse / Γ(info_rate)`` (what the
Voronoi rows reported as ``rate`` before stored bits were counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

from .gamma import gamma
from .gaussian import Method, box_codec, gaussian_pair, measure

#: (method, target rate for a JL sketch or None).  Rates near 0.5 (sketch), 1, 2, 3, 4, 5.
#: At 2, 3, 4 and 5 bits there are E8 rows at a total rate <= the scalar row's (issue 2: strict
#: equal-rate comparison): q=3 k=9 (1.985), q=7 k=2 (2.936), q=6 k=9 (2.985), q=12 k=8 (3.964),
#: q=28 k=2 (4.936), q=24 k=8 (4.964) vs scalar 2.004, 3.004, 4.004, 5.004.
#: ``shift=True`` rows: E8 q=2 and q=4 shifted Voronoi codes with nearest-codeword encoding (1 and 2
#: bits/entry, one β; ``llmquant/lattice/data/shifts.json``); q=4 is the 2-bit row at the scalar's rate.
DEFAULT_METHODS: tuple[tuple[Method, float | None], ...] = (
    (Method("scalar", "Z", 2), 0.5),
    (Method("lattice", "E8", 3, 1), 0.5),
    (Method("lattice", "E8", 4, 4, "min_error"), 0.5),
    (Method("lattice", "E8", 2, 1, shift=True), 0.5),
    (Method("scalar", "Z", 2), None),
    (Method("lattice", "E8", 2, 1, shift=True), None),
    (Method("scalar", "Z", 4), None),
    (Method("lattice", "E8", 4, 1, shift=True), None),
    (Method("lattice", "E8", 3, 9, "min_error"), None),
    (Method("lattice", "D4", 4, 2), None),
    (Method("lattice", "E8", 3, 4, "min_error"), None),
    (Method("lattice", "E8", 4, 2), None),
    (Method("lattice", "E8", 4, 4), None),
    (Method("lattice", "E8", 4, 4, "min_error"), None),
    (Method("scalar", "Z", 8), None),
    (Method("lattice", "E8", 7, 2), None),
    (Method("lattice", "E8", 6, 9, "min_error"), None),
    (Method("lattice", "D4", 8, 2), None),
    (Method("lattice", "E8", 8, 1), None),
    (Method("lattice", "E8", 8, 2), None),
    (Method("lattice", "E8", 8, 4, "min_error"), None),
    (Method("scalar", "Z", 16), None),
    (Method("lattice", "D4", 14, 2), None),
    (Method("lattice", "E8", 16, 1), None),
    (Method("lattice", "E8", 14, 4), None),
    (Method("lattice", "E8", 14, 4, "min_error"), None),
    (Method("lattice", "E8", 12, 5, "min_error"), None),
    (Method("lattice", "E8", 12, 8, "min_error"), None),
    (Method("scalar", "Z", 32), None),
    (Method("lattice", "E8", 28, 2), None),
    (Method("lattice", "E8", 24, 8, "min_error"), None),
    (Method("lattice", "E8", 32, 1), None),
    (Method("lattice", "E8", 32, 2, "min_error"), None),
    # deployable box codes (stored bits = counted bits): b + 1 bits per entry + the fp16 gain
    (Method("box", "E8", 1, 16, box="lattice"), None),
    (Method("box", "E8", 1, 16, box="best"), None),
    (Method("box", "E8", 2, 16, box="lattice"), None),
    (Method("box", "E8", 2, 16, box="best"), None),
    (Method("box", "E8", 3, 16, box="lattice"), None),
    (Method("box", "E8", 3, 16, box="best"), None),
    (Method("box", "E8", 3, 16, box="int"), None),
    (Method("box", "E8", 2, 16, box="table"), None),
    (Method("box", "E8", 3, 16, box="table"), None),
    (Method("box", "E8", 1, 16, box="best"), 0.5),
    # one level table per β (llmquant/lattice/box_tables.py: Lloyd iterations from `table`)
    (Method("box", "E8", 1, 16, box="beta_tables"), None),
    (Method("box", "E8", 2, 16, box="beta_tables"), None),
    (Method("box", "E8", 3, 16, box="beta_tables"), None),
    # known-variance protocol (no per-column gain: only the words are stored, exactly b + 1 bits per entry)
    (Method("scalar", "Z", 16, gain=False), None),
    (Method("box", "E8", 3, 16, box="table", gain=False), None),
    (Method("box", "E8", 3, 16, box="beta_tables", gain=False), None),
)


def run_bench(n: int = 4096, cols: int = 128, seed: int = 0, methods=None, dither_seed=None,
              progress=None) -> list[dict]:
    """Measure every (method, target) (default :data:`DEFAULT_METHODS`) on one seeded Gaussian pair
    ``A, B (n×cols)``; rows as dicts."""
    methods = DEFAULT_METHODS if methods is None else methods
    A, B = gaussian_pair(n, cols, cols, seed)
    rows = []
    for method, target in methods:
        if dither_seed is not None and method.kind == "lattice":
            method = dataclasses.replace(method, dither_seed=dither_seed)
        t0 = time.perf_counter()
        m = measure(A, B, method, target_rate=target, sketch_seed=seed + 1)
        g = gamma(m.rate)
        lattice, num_betas, choose = method.lattice, method.k if method.kind == "lattice" else 0, None
        if method.kind == "lattice":
            choose = method.choose
        elif method.kind == "box":
            codec = box_codec(method)
            lattice = "E8" if codec.code == "hamming" else "D8"
            num_betas = int(codec.betas.numel())
            choose = method.box + (" per-β tables" if codec.per_beta_levels else " table" if codec.gamma is None
                                   else f" g={codec.gamma:g}")
        row = {
            "method": {"scalar": "scalar", "box": "box"}.get(method.kind, "nested") + ("+jl" if target is not None else ""),
            "lattice": lattice,
            "q": method.q,
            "num_betas": num_betas,
            "choose": choose,
            "shift": bool(method.shift),
            "gain": bool(method.gain),
            "deployable": method.kind in ("scalar", "box"),
            "rate": m.rate,
            "mse": m.mse,
            "gamma": g,
            "ratio": m.mse / g,
            "gap_db": 10 * math.log10(m.mse / g),
            "info_rate": m.info_rate,
            "info_ratio": m.mse / gamma(m.info_rate),
            "sketch_rows": m.sketch,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        rows.append(row)
        if progress:
            progress(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'method':<10}{'lattice':<8}{'q/b':>4}{'k':>3} {'choose':<18}{'dep':>4}{'rate':>8}{'mse':>11}{'gamma':>11}"
            f"{'ratio':>7}{'gap dB':>8}{'info':>8}{'iratio':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<10}{r['lattice']:<8}{r['q']:>4}{r['num_betas']:>3} {(r['choose'] or '-') + ('+sh' if r.get('shift') else ''):<18}"
            f"{'yes' if r.get('deployable') else 'no':>4}{r['rate']:>8.4f}{r['mse']:>11.4g}{r['gamma']:>11.4g}{r['ratio']:>7.3f}"
            f"{r['gap_db']:>8.2f}{r.get('info_rate', r['rate']):>8.4f}{r.get('info_ratio', r['ratio']):>7.3f}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4096, help="rows of A and B (entries per encoded column)")
    parser.add_argument("--cols", type=int, default=128, help="columns of A and of B")
    parser.add_argument("--seed", type=int, default=0, help="seed of A, B and the JL sketch")
    parser.add_argument("--dither-seed", type=int, default=None, help="subtractive dither for lattice codes")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument("--plot", metavar="FILE", help="also draw Γ(R) with the measured points (PNG)")


def main(args: argparse.Namespace) -> int:
    if args.n < 8 or args.n % 8 or args.n & (args.n - 1):
        print(f"error: --n must be a power of two >= 8 (lattice blocks and the Hadamard sketch), got {args.n}",
              file=sys.stderr)
        return 2
    if args.cols < 1:
        print(f"error: --cols must be >= 1, got {args.cols}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = run_bench(args.n, args.cols, args.seed, dither_seed=args.dither_seed)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
        print(f"\nn={args.n} cols={args.cols} seed={args.seed}; {time.perf_counter() - t0:.1f}s")
    if args.plot:
        from .plot import plot_gamma

        plot_gamma(args.plot, rows)
    return 0
