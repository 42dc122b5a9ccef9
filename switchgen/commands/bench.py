"""`switchgen bench`: what switching costs against a single model and the reference (switchgen/bench.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switchgen.commands.options import non_negative_int, positive_int, positive_ints, quiet_transformers
from switchgen.core.files import check_writable


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure switching's cost against a single model and the reference")
    bench.add_argument("--preset", default="toy", help="a named preset (default: toy)")
    bench.add_argument("--config", type=Path, help="a YAML configuration file")
    bench.add_argument("--device", help="run every checkpoint on this device (e.g. cuda)")
    bench.add_argument("--budget", type=positive_int, default=512, help="tokens per response for the variants")
    bench.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per variant, after a warm-up")
    bench.add_argument("--budgets", type=positive_ints, default=(128, 256, 512, 1024), help="budget sweep")
    bench.add_argument("--concurrency", type=positive_ints, default=(1, 4, 8), help="concurrency sweep")
    bench.add_argument(
        "--load-reps", type=non_negative_int, default=5,
        help="repetitions with 2 busy processes started beside the bench, for the spread under load (0: skip)",
    )
    bench.add_argument("--json", type=Path, default=Path("bench.json"), help="raw figures (default: bench.json)")
    bench.add_argument("--rollouts", action="store_true",
                       help="instead: switcher-training rollouts/s, shared KV prefix vs independent generations, "
                       "at each --concurrency")
    bench.add_argument("--instances", type=positive_int, default=2, help="--rollouts: instances per rep (default 2)")
    bench.add_argument("--k", type=positive_int, default=4, help="--rollouts: continuations per candidate (default 4)")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.bench import markdown, rollouts_markdown, run_bench, run_rollouts_bench, write_json
    from switchgen.core.config import load_config

    check_writable(args.json, "--json")  # before minutes of benchmarking
    config = load_config(args.config or args.preset)
    if args.rollouts:
        report = run_rollouts_bench(config, budget=args.budget, instances=args.instances, k=args.k, reps=args.reps,
                                    concurrency=args.concurrency, device=args.device, progress=_progress)
        text = rollouts_markdown(report)
    else:
        report = run_bench(config, budget=args.budget, reps=args.reps, load_reps=args.load_reps, budgets=args.budgets,
                           concurrency=args.concurrency, device=args.device, progress=_progress)
        text = markdown(report)
    write_json(report, args.json)
    print(text)
    print(f"\nraw figures: {args.json}")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr)
