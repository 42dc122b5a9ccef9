"""`switchgen eval`: score methods (single models, switching, baselines) on tasks (evaluation/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import (
    add_config_args,
    add_overwrite,
    load_command_config,
    log,
    positive_int,
    positive_ints,
    quiet_transformers,
)
from switchgen.core.errors import SwitchgenError


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="score methods (single models, switching, baselines) on tasks")
    ev.add_argument("--task", action="append", required=True, help="a task name or YAML (repeatable); see `switchgen tasks`")
    ev.add_argument("--methods", default="", help="comma-separated, e.g. single:P,single:A,switch,random,fixed:A+P+A,oracle")
    ev.add_argument(
        "--patch-sizes", type=positive_ints,
        help="the patch-size ablation, e.g. 10,20,30,50,100: switch, random and untuned at each size "
        "(methods switch@10, random@10, ...) beside --methods",
    )
    ev.add_argument("--split", choices=["test", "train"], default="test",
                    help="the tasks' split (default test; train: outputs to distill from, `switchgen distill`)")
    ev.add_argument("--out", type=Path, required=True, help="folder for TASK/METHOD.jsonl, results.json and results.md")
    ev.add_argument("--limit", type=positive_int, help="the first N test examples of each task")
    ev.add_argument("--concurrency", type=positive_int, help="queries run at once (default: as switchgen generate)")
    ev.add_argument("--adapter", help="the switch method's LoRA adapter (a trained switcher)")
    ev.add_argument("--import", dest="imports", action="append", default=[], help="a module that registers methods")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite(ev, "the --out records of these tasks")
    add_config_args(ev)
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.evaluation import prepare, run_eval

    _import_plugins(args.imports)
    config = load_command_config(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.patch_sizes:
        from switchgen.evaluation.methods import with_patch_sizes

        methods = with_patch_sizes(methods, args.patch_sizes)
    _check_adapter(args.adapter, methods)
    prepared = prepare(args.task, methods, config, args.limit, split=args.split)  # bad input stops here, before any model loads
    seed = 0 if args.seed is None else args.seed
    run_eval(config, prepared, args.out, seed=seed, concurrency=args.concurrency, adapter=args.adapter,
             progress=not args.no_progress, log=log, overwrite=args.overwrite)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"records and results in {args.out}")
    return 0


def _import_plugins(modules: list[str]) -> None:
    """The --import modules, which register their methods when imported."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise SwitchgenError(f"--import {module}: {err}") from None


def _check_adapter(adapter: str | None, methods: list[str]) -> None:
    if adapter and not any(m.partition("@")[0] == "switch" for m in methods):
        raise SwitchgenError("--adapter is the switch method's adapter: add switch to --methods")
    if adapter and adapter.startswith((".", "/", "~")) and not Path(adapter).expanduser().exists():
        raise SwitchgenError(f"--adapter {adapter}: no such folder")
