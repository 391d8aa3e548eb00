"""Per-β level tables for the box code, by Lloyd iterations on Gaussian 8-vectors (variant ``beta_tables``).

The box code (:mod:`.box`) reconstructs coordinate ``i`` of an 8-vector as ``β_j λ[ℓ_i]`` with one level table
``λ`` shared by every scale.  Here every β gets its own table: the codebook is the ``k × 2^(b+1)`` table
``T[j, ℓ] = β_j λ_j[ℓ]`` (antisymmetric per row, ``T[j, 2^(b+1) - 1 - ℓ] = -T[j, ℓ]``), with the same words, the
same parity structure (``ℓ_i mod 2 = h_i``, ``h`` a codeword), the same stored bits and the same exact encoder.

Lloyd's algorithm for this structured codebook, on ``n_samples`` iid N(0, 1) 8-vectors ``x`` (float32, seeded):

1. encode every ``x`` exactly (:meth:`.box.BoxCodec.quantize`: the nearest of all ``k 2^M 2^(8b)`` codewords);
2. replace every entry ``T[j, ℓ]`` by the mean of the coordinates ``x_i`` encoded with ``(j, ℓ_i) = (j, ℓ)``
   (the MSE-optimal value for the fixed assignment; an entry nobody used keeps its value), then symmetrise
   each row, ``T <- (T - reverse(T)) / 2`` (the source is symmetric and ``x -> -x`` maps codewords to codewords);
3. repeat until the MSE of step 1 drops by less than ``rtol`` (relative) or ``max_iters``.

The encode and the centroid step cannot raise the sample MSE (the encoder is exact; the centroid is the
least-squares value); the symmetrisation can, by a sampling-noise amount (the sample is not exactly symmetric), so
the iteration settles near a local optimum of the start (the recorded training MSE falls monotonically here).  The codec form: ``β_j`` = RMS of row ``j``'s
positive entries, rows ordered by ``β`` (strictly ascending, as :class:`.box.BoxCodec` needs; the order of the
rows only changes tie-breaks), ``λ_j = T[j, 2^b:] / β_j`` (each must stay strictly ascending, checked).
Started from the shipped ``table`` variant (one table for all β).

Measured (``python -m llmquant.lattice.box_tables --max-iters 400 --n-samples 262144``; MSE per entry after the
best gain on the shipped table's own evaluation samples, ``config.n_samples`` = 16,384 8-vectors, seed 0): b = 3
0.006121 (shared ``table``: 0.006603, -7.3%), b = 2 0.026972 (0.027291), b = 1 0.10241 (0.10261); the entries of
``data/box_beta_sets.json`` record every iteration's training MSE.  The README's Gaussian table has the matrix-
product figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .beta_search import _gain_mse
from .box import BOX_BETA_FILE, BoxCodec, codewords, shipped_box_codec

#: Lloyd defaults: training samples (8-vectors), seed, stopping rule
LLOYD_DEFAULTS = {"n_samples": 1 << 17, "seed": 1, "max_iters": 80, "rtol": 2e-5}


def table_codec(b: int, code: str, T: torch.Tensor) -> BoxCodec:
    """The :class:`BoxCodec` of the per-β table ``T (k, 2^(b+1))`` (antisymmetric rows; module docstring)."""
    pos = T[:, 1 << b:].to(torch.float64)
    beta = pos.square().mean(1).sqrt()
    order = beta.argsort()
    beta, pos = beta[order], pos[order]
    return BoxCodec(b, beta, code, None, pos / beta[:, None])


def full_table(codec: BoxCodec) -> torch.Tensor:
    """``T[j, ℓ] = β_j λ_j[ℓ]`` float64 ``(k, 2^(b+1))`` of any box codec (a shared table repeated per β)."""
    lv = codec.levels.to(torch.float64)
    return codec.betas.to(torch.float64)[:, None] * (lv if lv.dim() == 2 else lv.expand(codec.betas.numel(), -1))


def lloyd_tables(b: int, start: str = "table", n_samples: int = LLOYD_DEFAULTS["n_samples"],
                 seed: int = LLOYD_DEFAULTS["seed"], max_iters: int = LLOYD_DEFAULTS["max_iters"],
                 rtol: float = LLOYD_DEFAULTS["rtol"], progress=None) -> dict:
    """Lloyd iterations (module docstring) from the shipped setting ``(b, start)``; returns ``{"code", "betas",
    "levels" (k rows of 2^b), "train_mse" (per iteration, plain MSE), "iterations"}``."""
    c0 = shipped_box_codec(b, start)
    code, nl2 = c0.code, 1 << (b + 1)
    k = c0.betas.numel()
    H = codewords(code)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(int(n_samples), 8, generator=gen, dtype=torch.float32)
    xf = x.double().flatten()
    T = full_table(c0)
    codec, hist = c0, []
    for it in range(int(max_iters)):
        words, xh = codec.quantize(x)
        hist.append(float((x.double() - xh.double()).square().mean()))
        if progress:
            progress(it, hist[-1])
        if it and hist[-2] - hist[-1] < rtol * hist[-1]:
            break
        u, m, j = codec.fields(words)
        T = full_table(codec)  # rows in the codec's (β-sorted) order, which j indexes
        idx = (j[:, None] * nl2 + 2 * u + H[m]).flatten()
        s = torch.zeros(k * nl2, dtype=torch.float64).index_add_(0, idx, xf)
        cnt = torch.zeros(k * nl2, dtype=torch.float64).index_add_(0, idx, torch.ones_like(xf))
        Tn = T.flatten().clone()
        used = cnt > 0
        Tn[used] = s[used] / cnt[used]
        Tn = Tn.view(k, nl2)
        T = 0.5 * (Tn - Tn.flip(1))
        codec = table_codec(b, code, T)
    return {"code": code, "betas": codec.betas.tolist(), "levels": codec.level_table.tolist(),
            "train_mse": hist, "iterations": len(hist)}


def evaluate(codec: BoxCodec, n_samples: int, seed: int) -> float:
    """Gain-optimised MSE per entry on fresh seeded Gaussian 8-vectors (the shipped sets' protocol)."""
    x = torch.randn(int(n_samples), 8, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
    return _gain_mse(x, codec.fake_quant(x))  # MSE per entry after the least-squares gain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmquant.lattice.box_tables", description=__doc__.split("\n")[0])
    p.add_argument("--add", metavar="FILE", default=str(BOX_BETA_FILE),
                   help="box table to add the 'beta_tables' variant to, in place (default: the shipped one)")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3])
    for key, val in LLOYD_DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=type(val), default=val)
    args = p.parse_args(argv)
    path = Path(args.add)
    table = json.loads(path.read_text())
    ev = table["config"]  # the shipped sets' evaluation protocol (n_samples, seed)
    t0 = time.time()
    for b in args.widths:
        r = lloyd_tables(b, "table", args.n_samples, args.seed, args.max_iters, args.rtol,
                         progress=lambda it, v, b=b: print(f"box b={b} iteration {it}: train mse {v:.6g} "
                                                           f"({time.time() - t0:.0f}s)", file=sys.stderr))
        betas = [round(v, 7) for v in r["betas"]]
        levels = [[round(v, 6) for v in row] for row in r["levels"]]
        codec = BoxCodec(b, betas, r["code"], None, levels)
        mse = evaluate(codec, ev["n_samples"], ev["seed"])
        start_mse = evaluate(shipped_box_codec(b, "table"), ev["n_samples"], ev["seed"])
        table["sets"].setdefault("beta_tables", {})[str(b)] = {
            "code": r["code"], "gamma": None, "betas": betas, "levels": levels, "mse": mse,
            "start": "table", "start_mse": start_mse, "iterations": r["iterations"],
            "train_mse": [round(v, 8) for v in r["train_mse"]]}
        print(f"box b={b} beta_tables mse={mse:.6g} (table: {start_mse:.6g}) ({time.time() - t0:.0f}s)",
              file=sys.stderr)
    table.setdefault("added_commands", []).append("python -m llmquant.lattice.box_tables " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    table["beta_tables_note"] = (
        "'beta_tables': one antisymmetric level table per beta (BoxCodec levels of shape (k, 2^b)), Lloyd "
        f"iterations from 'table' on {args.n_samples} Gaussian 8-vectors (seed {args.seed}, until the MSE drops by "
        f"< {args.rtol} relative, at most {args.max_iters}); 'mse' on the table's own evaluation samples "
        "(config.n_samples, config.seed) after the best gain, as the other sets")
    path.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
