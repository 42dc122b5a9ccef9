"""`switchgen bench`: what switching costs against a single model and the reference (switchgen/bench.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switchgen.commands.options import (
    non_negative_int,
    positive_float,
    positive_int,
    positive_ints,
    quiet_transformers,
)
from switchgen.core.files import check_writable

# What --quick changes (each still overridable by its own flag): one budget, two reps, concurrency 1 and 32,
# no budget sweep, no load spread, 25 s per section: about 2 minutes at the 1B shape on one GPU.
QUICK = {"budget": 256, "reps": 2, "budgets": (), "concurrency": (1, 32), "load_reps": 0, "section_seconds": 25.0}


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure switching's cost against a single model and the reference")
    bench.add_argument("--preset", default="toy", help="a named preset (default: toy)")
    bench.add_argument("--config", type=Path, help="a YAML configuration file (e.g. real-size checkpoints on cuda)")
    bench.add_argument("--device", help="run every checkpoint on this device (e.g. cuda)")
    bench.add_argument("--quick", action="store_true",
                       help="a short run: budget 256, 2 reps, concurrency 1,32, no budget sweep or load spread, "
                       "25 s per section (flags given override these)")
    bench.add_argument("--budget", type=positive_int, help="tokens per response for the variants (default 512)")
    bench.add_argument("--reps", type=positive_int, help="timed repetitions per variant, after a warm-up (default 5)")
    bench.add_argument("--budgets", type=positive_ints, help="budget sweep (default 128,256,512,1024)")
    bench.add_argument("--concurrency", type=positive_ints, help="concurrency sweep (default 1,4,8)")
    bench.add_argument(
        "--load-reps", type=non_negative_int,
        help="repetitions with 2 busy processes started beside the bench, for the spread under load (default 5; 0: skip)",
    )
    bench.add_argument("--section-seconds", type=positive_float,
                       help="each section stops repeating once this long has passed (at least one rep each)")
    bench.add_argument("--json", type=Path, default=Path("bench.json"), help="raw figures (default: bench.json)")
    bench.add_argument("--rollouts", action="store_true",
                       help="instead: switcher-training rollouts/s, shared KV prefix vs independent generations, "
                       "at each --concurrency")
    bench.add_argument("--instances", type=positive_int, default=2, help="--rollouts: instances per rep (default 2)")
    bench.add_argument("--k", type=positive_int, default=4, help="--rollouts: continuations per candidate (default 4)")
    bench.set_defaults(func=run)


def settings(args: argparse.Namespace, full: object) -> dict:
    """The bench's settings: each flag given, else --quick's value or the full bench's (`full`'s)."""
    base = QUICK if args.quick else {name: getattr(full, name) for name in QUICK}
    return {name: getattr(args, name) if getattr(args, name) is not None else value for name, value in base.items()}


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.bench import BenchSettings, run_bench, write_json
    from switchgen.bench_rollouts import run_rollouts_bench
    from switchgen.bench_tables import rollouts_markdown
    from switchgen.core.config import load_config

    check_writable(args.json, "--json")  # before minutes of benchmarking
    config = load_config(args.config or args.preset)
    s = settings(args, BenchSettings())
    if args.rollouts:
        report = run_rollouts_bench(config, budget=s["budget"], instances=args.instances, k=args.k, reps=s["reps"],
                                    concurrency=s["concurrency"], device=args.device, progress=_progress,
                                    section_seconds=s["section_seconds"])
        _show(rollouts_markdown(report))
    else:
        report = run_bench(config, BenchSettings(device=args.device, **s), progress=_progress, show=_show)
    write_json(report, args.json)
    print(f"raw figures: {args.json}", flush=True)
    return 0


def _show(text: str) -> None:
    print(text + "\n", flush=True)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
