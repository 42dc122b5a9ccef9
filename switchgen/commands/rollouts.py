"""`switchgen rollouts`: a switcher's training data, the paper's rollouts on a task's train split (training/rollouts.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from switchgen.commands.options import (
    add_config_args,
    add_overwrite,
    load_command_config,
    positive_int,
    quiet_transformers,
)
from switchgen.core.files import check_writable
from switchgen.training.settings import RolloutSettings


def register(sub: argparse._SubParsersAction) -> None:
    roll = sub.add_parser(
        "rollouts", help="a switcher's training data: the paper's rollouts on a task's train split",
        description="For each train query: a trace by random switching cut at 10-90% of the budget, one patch "
        "by each candidate, K random-switching continuations per candidate scored by the task metric; the "
        "label is the best mean (ties: the aligned candidate, else the lowest index). Resumable; --seed "
        "(default 0) makes the file reproducible.",
    )
    roll.add_argument("--task", required=True, help="a built-in task or a task YAML (its train split is used)")
    roll.add_argument("--out", type=Path, required=True, help="the rollouts JSONL (resumed if it exists)")
    roll.add_argument("--instances", type=positive_int,
                      help="the first N train records (default: all); beyond the split, it starts over with new traces")
    roll.add_argument("--k", type=positive_int, default=RolloutSettings.k,
                      help=f"continuations per candidate (default {RolloutSettings.k})")
    roll.add_argument("--concurrency", type=positive_int, default=1, help="graph runs at once (servers batch them); default 1")
    roll.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overwrite(roll, "--out")
    add_config_args(roll)
    roll.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.core.jobs import check_resumable
    from switchgen.tasks import load_task
    from switchgen.training.rollouts import fingerprint, instances, task_scorer

    settings = RolloutSettings(k=args.k, seed=0 if args.seed is None else args.seed)
    settings.check()
    check_writable(args.out, "--out")  # before any model loads
    task = load_task(args.task)
    records = instances(task.records("train"), args.instances)
    config = load_command_config(args)
    check_resumable(args.out, fingerprint(config, settings, task.fingerprint()),
                    inputs=[{"id": str(r["id"])} for r in records], key="id", overwrite=args.overwrite)
    scorer = task_scorer(task.metric())  # a bad metric (or a reward model that cannot load) fails first
    result = _run(args, config, task, records, scorer, settings)
    resumed = f" (resumed after {result.start})" if result.start else ""
    print(f"{result.start + result.written} records in {args.out}{resumed}; {result.tokens} tokens in "
          f"{result.seconds:.1f} s ({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s)")
    if result.failed:
        print(f"switchgen: {result.failed} instances failed on a server; their records hold \"error\": rerun to retry",
              file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace, config, task, records: list[dict], scorer, settings: RolloutSettings):
    """The rollouts through the graph, `args.concurrency` graph runs at once."""
    from concurrent.futures import ThreadPoolExecutor

    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers
    from switchgen.training.rollouts import Rollouts, rollout_config, run_rollouts

    check_servers(server_probes(rollout_config(config)))
    graph = build_graph(rollout_config(config))
    pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="switchgen-rollout") if args.concurrency > 1 else None
    try:
        rollouts = Rollouts(graph, config, scorer, settings, task=task, pool=pool)
        return run_rollouts(rollouts, records, args.out, concurrency=args.concurrency, progress=not args.no_progress,
                            overwrite=args.overwrite)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
