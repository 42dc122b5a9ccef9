"""`switchgen analyze`: a report over `switchgen eval` outputs (analysis/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import log, non_negative_float


def register(sub: argparse._SubParsersAction) -> None:
    analyze = sub.add_parser(
        "analyze", help="report (markdown + PNG plots) over `switchgen eval` outputs: who wrote where and why it helped"
    )
    analyze.add_argument("directory", type=Path, help="the --out folder of `switchgen eval`")
    analyze.add_argument("--out", type=Path, help="report folder (default: DIRECTORY/report)")
    analyze.add_argument("--method", help="method whose author sequences are analysed, one of the run's "
                         "(default: switch, else the first switching method; the report names it)")
    analyze.add_argument(
        "--correct-threshold", type=non_negative_float,
        help="score counted as correct in the single-vs-switch table (default: 1 for 0/1 metrics, else 0.5)",
    )
    analyze.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from switchgen.analysis import analyze

    report = analyze(args.directory, args.out, method=args.method, threshold=args.correct_threshold, log=log)
    print(f"wrote {report} (figures and analysis.json beside it)")
    return 0
