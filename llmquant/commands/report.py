"""``llmquant report RUN_DIR... [--out report.md] [--gaussian FILE.json] [--fp RUN]``: table + plots.

See :mod:`llmquant.eval.report` for the table columns and the plots.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("report", help="markdown table and PNG plots over run directories")
    p.add_argument("runs", nargs="+", help="run directories (each with results.json) or results.json files")
    p.add_argument("--out", default="report.md", help="markdown file; PNGs go next to it (default: %(default)s)")
    p.add_argument("--gaussian", default=None, metavar="FILE.json",
                   help="rows from `llmquant bench gaussian --json` for the rate-distortion figure with Γ(R)")
    p.add_argument("--fp", default=None, help="run (name or path) used as the FP reference for Δ columns")
    p.add_argument("--task-metric", default="acc", choices=("acc", "acc_norm"),
                   help="task metric shown in the table (default: %(default)s; acc when a task lacks it)")
    p.add_argument("--no-plots", action="store_true", help="write the table only")
    p.set_defaults(func=main)


def main(args) -> int:
    from llmquant.eval.report import ReportError, write_report

    try:
        res = write_report(args.runs, args.out, gaussian=args.gaussian, fp=args.fp, task_metric=args.task_metric,
                           plots=not args.no_plots)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(res["report"].read_text())
    for p in res["plots"]:
        print(f"wrote {p}")
    print(f"wrote {res['report']}")
    return 0
