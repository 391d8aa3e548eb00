"""Search for Williamson sequences of odd order n (symmetric circulant +-1 matrices A, B, C, D with
``A^2 + B^2 + C^2 + D^2 = 4n I``), which give Hadamard matrices of order 4n via the Williamson array
(:func:`llmquant.rotation.constructions.williamson_hadamard`).

Run as ``python -m llmquant.rotation.williamson_search --n 43 --out FILE``; the JSON written there is the
format of ``llmquant/rotation/data/williamson.json`` (first rows as "+"/"-" strings plus provenance).

Representation.  A symmetric circulant of odd order n is fixed by its first row
``(a_0, a_1, ..., a_h, a_h, ..., a_1)`` with ``h = (n - 1) / 2``.  Its eigenvalues are real,
``lam(j) = a_0 + 2 sum_{k=1..h} a_k cos(2 pi j k / n)``, with ``lam(j) = lam(n - j)``, so the Williamson
condition is ``sum_X lam_X(j)^2 = 4n`` for j = 0..h (j = 0: the row sums, four odd squares summing to 4n).
Equivalently (exact, integer) the periodic autocorrelations add to zero at every shift k = 1..h.

Normalizations used (each maps solutions to solutions, so no solution class is lost):

* negating one matrix leaves its square unchanged: WLOG ``a_0 = b_0 = c_0 = d_0 = +1``.  A sequence is then
  an h-bit integer: bit k-1 set means ``a_k = -1``.  Its row sum is ``1 + 2 sum a_k``;
* the four matrices can be permuted freely (the array works for any order), so the row sums are taken as
  one fixed assignment of a decomposition ``4n = s_A^2 + s_B^2 + s_C^2 + s_D^2``, A having the rarest row sum;
* a multiplier ``k -> t k (mod n)``, t a unit mod n, applied to all four at once keeps symmetric circulants
  symmetric circulant and keeps the condition: WLOG A is the smallest integer of its multiplier orbit.

Pruning and pairing:

* PSD bound: every single sequence has ``lam(j)^2 <= 4n`` for all j; once A is fixed,
  ``lam_X(j)^2 <= 4n - lam_A(j)^2`` for X = B, C, D;
* Williamson's product condition (n odd, all first entries +1): ``a_k b_k c_k d_k = -1`` for k = 1..h.  In
  the bit representation ``D = A ^ B ^ C ^ (2^h - 1)``, so for fixed A every candidate pair (B, C) names
  its D, and one table lookup tells whether that D passed the PSD bound.  Survivors are verified exactly
  with integer autocorrelations.  The condition is only used to pick D; every reported solution is checked
  against the full Williamson condition independently of it.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import platform
import sys
import time

import numpy as np

EPS = 1e-7


def four_odd_squares(total: int) -> list[tuple[int, int, int, int]]:
    """All ``s1 >= s2 >= s3 >= s4 >= 1``, odd, with ``s1^2 + s2^2 + s3^2 + s4^2 = total``."""
    odd = [s for s in range(1, math.isqrt(total) + 1, 2)]
    out = []
    for combo in itertools.combinations_with_replacement(sorted(odd, reverse=True), 4):
        if sum(s * s for s in combo) == total:
            out.append(tuple(combo))
    return out


def bits_to_signs(code: np.ndarray | int, h: int) -> np.ndarray:
    """Integer code(s) -> +-1 int8 array [..., h] of ``a_1..a_h`` (bit k-1 set means ``a_k = -1``)."""
    code = np.asarray(code, dtype=np.int64)
    return (1 - 2 * ((code[..., None] >> np.arange(h)) & 1)).astype(np.int8)


def first_row(code: int, n: int) -> list[int]:
    """Full first row (length n) of the symmetric circulant with code ``code``, ``a_0 = +1``."""
    h = (n - 1) // 2
    a = bits_to_signs(code, h).tolist()
    return [1] + a + a[::-1]


def row_to_string(row) -> str:
    return "".join("+" if int(x) > 0 else "-" for x in row)


def string_to_row(s: str) -> list[int]:
    return [1 if c == "+" else -1 for c in s]


def paf(row) -> np.ndarray:
    """Periodic autocorrelation ``sum_i r_i r_{i+k}`` for k = 0..n-1 (exact, int64)."""
    r = np.asarray(row, dtype=np.int64)
    return np.array([int(np.dot(r, np.roll(r, -k))) for k in range(len(r))], dtype=np.int64)


def is_williamson(rows) -> bool:
    """Exact check: four symmetric +-1 first rows of equal odd length n whose periodic autocorrelations sum
    to 4n at shift 0 and to 0 at every other shift (i.e. ``A^2 + B^2 + C^2 + D^2 = 4n I``)."""
    if len(rows) != 4:
        return False
    n = len(rows[0])
    total = np.zeros(n, dtype=np.int64)
    for r in rows:
        r = [int(x) for x in r]
        if len(r) != n or any(x not in (1, -1) for x in r):
            return False
        if any(r[k] != r[(n - k) % n] for k in range(n)):
            return False
        total += paf(r)
    return int(total[0]) == 4 * n and not total[1:].any()


def _multiplier_perms(n: int) -> list[np.ndarray]:
    """For each unit t mod n (one of t, -t), the permutation p of 0..h-1 with a'_k = a_{p(k)}, i.e.
    ``a'_k = a_{fold(t k mod n)}``, fold(x) = min(x, n - x)."""
    h = (n - 1) // 2
    perms, seen = [], set()
    for t in range(1, n):
        if math.gcd(t, n) != 1 or t in seen:
            continue
        seen.update({t, n - t})
        p = np.array([min(t * k % n, n - t * k % n) - 1 for k in range(1, h + 1)], dtype=np.int64)
        perms.append(p)
    return perms


def _apply_perm(codes: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Codes of the sequences ``a'_k = a_{p(k)}`` (bit k of the result = bit p(k) of the input)."""
    out = np.zeros_like(codes)
    for k, src in enumerate(p.tolist()):
        out |= ((codes >> src) & 1) << k
    return out


def enumerate_candidates(n: int, chunk: int = 1 << 16):
    """All codes (a_0 = +1) passing the PSD bound ``lam(j)^2 <= 4n`` (j = 0..h), with their row sums and
    eigenvalues ``lam(1..h)`` (float64 [N, h])."""
    h = (n - 1) // 2
    cosm = 2.0 * np.cos(2.0 * np.pi * np.outer(np.arange(1, h + 1), np.arange(1, h + 1)) / n)  # [k, j]
    codes, sums, lams = [], [], []
    bound = 4 * n + EPS
    for start in range(0, 2**h, chunk):
        c = np.arange(start, min(start + chunk, 2**h), dtype=np.int64)
        a = bits_to_signs(c, h).astype(np.float64)
        lam = 1.0 + a @ cosm
        s = 1 + 2 * a.sum(1).astype(np.int64)
        ok = ((lam * lam) <= bound).all(1) & (s * s <= 4 * n - 3)
        codes.append(c[ok]), sums.append(s[ok]), lams.append(lam[ok])
    return np.concatenate(codes), np.concatenate(sums), np.concatenate(lams)


def search(
    n: int,
    max_solutions: int = 1,
    time_limit: float | None = None,
    pair_chunk: int = 1 << 22,
    log=None,
    reverse_decompositions: bool = False,
) -> dict:
    """Find up to ``max_solutions`` Williamson quadruples of odd order n (n >= 3).

    Returns a dict with ``solutions`` (list of [A, B, C, D] first rows as "+"/"-" strings, each verified
    with :func:`is_williamson`) and search statistics.  Stops at ``max_solutions`` or ``time_limit``
    seconds; ``exhausted`` says whether every decomposition and every canonical A was tried.
    ``reverse_decompositions`` tries the row-sum decompositions from the most balanced one first (for
    n = 43 that finds a solution in about a minute; the default order needs far longer).
    """
    if n < 3 or n % 2 == 0:
        raise ValueError(f"Williamson search needs odd n >= 3, got {n}")
    t0 = time.time()
    say = log or (lambda *_: None)
    h = (n - 1) // 2
    mask = (1 << h) - 1
    codes, sums, lams = enumerate_candidates(n)
    say(f"n={n}: {len(codes)} of 2^{h} first rows pass the PSD bound ({time.time() - t0:.1f}s)")
    perms = _multiplier_perms(n)
    pos = np.full(1 << h, -1, dtype=np.int64)  # code -> row of the candidate arrays
    pos[codes] = np.arange(len(codes))
    by_sum = {}
    for s in np.unique(sums).tolist():
        sel = sums == s
        # s = 1 + 2 (h - 2 #neg) is fixed mod 4, and s, -s differ mod 4, so |s| determines s.
        by_sum[abs(s)] = (codes[sel], lams[sel])
    decomps = [d for d in four_odd_squares(4 * n) if all(abs_s in by_sum for abs_s in d)]
    if reverse_decompositions:
        decomps = decomps[::-1]
    say(f"row-sum decompositions of {4 * n}: {decomps}")
    solutions, seen, tried_a, pairs_checked, hits_screened = [], set(), 0, 0, 0
    timed_out = False
    for dec in decomps:
        # A takes the rarest row sum of this decomposition; B, C, D the rest, in a fixed order.
        rest = list(dec)
        sa = min(set(dec), key=lambda s: len(by_sum[s][0]))
        rest.remove(sa)
        sb, sc, sd = rest
        a_codes, a_lams = by_sum[sa]
        canon = a_codes.copy()
        for p in perms:
            canon = np.minimum(canon, _apply_perm(a_codes, p))
        a_sel = np.flatnonzero(canon == a_codes)
        say(
            f"  decomposition {dec}: A row sum {sa}: {len(a_codes)} candidates, {len(a_sel)} multiplier-canonical"
        )
        d_table = np.zeros(1 << h, dtype=bool)
        for i in a_sel.tolist():
            if time_limit is not None and time.time() - t0 > time_limit:
                timed_out = True
                break
            tried_a += 1
            a_code = int(a_codes[i])
            room = 4 * n - a_lams[i] ** 2 + EPS  # [h]

            def fit(s, room=room):
                c, lam = by_sum[s]
                return c[((lam * lam) <= room).all(1)]

            b_c, c_c, d_c = fit(sb), fit(sc), fit(sd)
            if not (len(b_c) and len(c_c) and len(d_c)):
                continue
            d_table[d_c] = True
            base = a_code ^ mask
            rows_per = max(1, pair_chunk // len(c_c))
            for st in range(0, len(b_c), rows_per):
                bb = b_c[st : st + rows_per]
                dd = (base ^ bb)[:, None] ^ c_c[None, :]
                pairs_checked += dd.size
                hit_b, hit_c = np.nonzero(d_table[dd])
                if len(hit_b):
                    # float screen on all h eigenvalues before the exact integer check
                    tot = (
                        a_lams[i] ** 2
                        + lams[pos[bb[hit_b]]] ** 2
                        + lams[pos[c_c[hit_c]]] ** 2
                        + lams[pos[dd[hit_b, hit_c]]] ** 2
                    )
                    keep = (np.abs(tot - 4 * n) < 1e-6).all(1)
                    hit_b, hit_c = hit_b[keep], hit_c[keep]
                    hits_screened += int(keep.size)
                for ib, ic in zip(hit_b.tolist(), hit_c.tolist()):
                    quad = [a_code, int(bb[ib]), int(c_c[ic]), int(dd[ib, ic])]
                    rows = [first_row(q, n) for q in quad]
                    if not is_williamson(rows):
                        continue
                    key = tuple(sorted(quad))
                    if key in seen:
                        continue
                    seen.add(key)
                    solutions.append([row_to_string(r) for r in rows])
                    say(
                        f"  solution {len(solutions)} after {time.time() - t0:.1f}s: row sums "
                        f"{[sum(r) for r in rows]}"
                    )
                    if len(solutions) >= max_solutions:
                        break
                if len(solutions) >= max_solutions:
                    break
            d_table[d_c] = False
            if len(solutions) >= max_solutions:
                break
        if len(solutions) >= max_solutions or timed_out:
            break
    return {
        "n": n,
        "solutions": solutions,
        "stats": {
            "psd_candidates": len(codes),
            "decompositions": [list(d) for d in decomps],
            "canonical_A_tried": tried_a,
            "pairs_checked": int(pairs_checked),
            "table_hits_screened": hits_screened,
            "multipliers": len(perms),
            "exhausted": not timed_out and len(solutions) < max_solutions,
            "runtime_s": round(time.time() - t0, 2),
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, required=True, help="odd order n (Hadamard order 4n)")
    ap.add_argument("--out", required=True, help="JSON file to write (merged into if it exists)")
    ap.add_argument("--max-solutions", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds")
    ap.add_argument("--reverse-decompositions", action="store_true",
                    help="try the most balanced row-sum decomposition first")
    args = ap.parse_args(argv)
    res = search(args.n, args.max_solutions, args.time_limit, log=lambda m: print(m, flush=True),
                 reverse_decompositions=args.reverse_decompositions)
    try:
        with open(args.out) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    data.setdefault("sequences", {})
    data["sequences"][str(args.n)] = {
        "solutions": [dict(zip("ABCD", s)) for s in res["solutions"]],
        "provenance": {
            "command": "python -m llmquant.rotation.williamson_search " + " ".join(argv or sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "parameters": {"max_solutions": args.max_solutions, "time_limit": args.time_limit, "eps": EPS,
                           "reverse_decompositions": args.reverse_decompositions},
            "python": platform.python_version(),
            "numpy": np.__version__,
            **res["stats"],
        },
    }
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(res["stats"]))
    return 0 if res["solutions"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
