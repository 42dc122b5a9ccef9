"""`switchgen generate`: switch generation over a JSONL file of queries (switchgen/generate.py)."""

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


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="switch generation over a JSONL file of queries")
    gen.add_argument("--input", type=Path, required=True, help='JSONL, one object with "input" per line')
    gen.add_argument("--output", type=Path, help="default: INPUT_switch_generation.jsonl beside the input")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument(
        "--concurrency", type=positive_int,
        help="queries run at once (batched together); default: 16 in process (fills the engine's batches), 1 with servers",
    )
    add_overwrite(gen, "--output")
    add_config_args(gen)
    gen.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.core.jobs import check_resumable
    from switchgen.core.records import is_permanent, read_jsonl
    from switchgen.generate import check_output, default_output, fingerprint, read_inputs, run_file
    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    inputs = read_inputs(args.input)
    output = args.output or default_output(args.input)
    check_output(output, args.input)  # before any model loads
    config = load_command_config(args)
    check_resumable(output, fingerprint(config), inputs=inputs, overwrite=args.overwrite, flag="--output")
    check_servers(server_probes(config))  # every server answers before any query runs
    fresh: list[dict] = []  # this run's permanent failures

    def note(record: dict) -> None:
        if is_permanent(record):
            fresh.append(record)

    start, written, failed = run_file(build_graph(config), config, inputs, output, progress=not args.no_progress,
                                      concurrency=args.concurrency, on_record=note, overwrite=args.overwrite)
    resumed = f" (resumed after {start})" if start else ""
    print(f"{start + written} records in {output}{resumed}")
    # Permanent failures of earlier runs stay in the file (a rerun skips them): said on every run.
    refused = sum(is_permanent(r) for r in read_jsonl(output))
    _report_failures(failed - len(fresh), refused)
    return 1 if failed or refused else 0


def _report_failures(server_failed: int, refused: int) -> None:
    if refused:
        print(
            f"switchgen: {refused} queries are too long for a model; their records hold \"error\" and "
            "\"permanent\": true (a rerun skips them): shorten those inputs",
            file=sys.stderr,
        )
    if server_failed:
        print(
            f"switchgen: {server_failed} queries failed on a server; their records hold \"error\": rerun to retry them",
            file=sys.stderr,
        )
