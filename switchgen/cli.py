"""The `switchgen` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from switchgen.errors import SwitchgenError


def _config_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a named preset (default: olmo2-1b); see `switchgen presets`")
    source.add_argument("--config", type=Path, help="a YAML configuration file")
    parser.add_argument("--seed", type=int, help="seed for switcher and generator sampling")
    parser.add_argument("--max-new-tokens", type=int, help="token budget of each response")
    parser.add_argument("--patch-size", type=int, help="tokens per patch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="switch generation over a JSONL file of queries")
    gen.add_argument("--input", type=Path, required=True, help='JSONL, one object with "input" per line')
    gen.add_argument("--output", type=Path, help="default: INPUT_switch_generation.jsonl beside the input")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_args(gen)

    toy = sub.add_parser("toy-models", help="build the tiny offline checkpoints (P, F, A, switcher)")
    toy.add_argument("directory", type=Path, nargs="?", help="default: the toy preset's cache folder")
    toy.add_argument("--overwrite", action="store_true")

    sub.add_parser("presets", help="list the named presets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except SwitchgenError as err:
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("switchgen: interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "presets":
        from switchgen.graph.config import DEFAULT_PRESET, preset_names

        for name in preset_names():
            print(name + ("  (default)" if name == DEFAULT_PRESET else ""))
        return 0
    if args.command == "toy-models":
        from switchgen.servers.toy import build_toy_models, default_toy_dir

        paths = build_toy_models(args.directory or default_toy_dir(), overwrite=args.overwrite)
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return 0
    if args.command == "generate":
        return _generate(args)
    raise AssertionError(args.command)


def _generate(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from switchgen.batch import default_output, read_inputs, run_file
    from switchgen.graph import build_graph, load_config

    inputs = read_inputs(args.input)
    config = load_config(
        args.config or args.preset,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        patch_size=args.patch_size,
    )
    output = args.output or default_output(args.input)
    graph = build_graph(config)
    start, written = run_file(graph, config, inputs, output, progress=not args.no_progress)
    resumed = f" (resumed after {start})" if start else ""
    print(f"{start + written} records in {output}{resumed}")
    return 0


def _quiet_transformers() -> None:
    """Loading bars and warnings from transformers would bury our progress bar."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging

    logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
