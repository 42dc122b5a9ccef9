"""`switchgen presets`, `switchgen tasks`, `switchgen toy-models`: what comes with switchgen."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("presets", help="list the named presets").set_defaults(func=presets)
    sub.add_parser("tasks", help="list the built-in tasks with their data and metric").set_defaults(func=tasks)
    toy = sub.add_parser("toy-models", help="build the tiny offline checkpoints (P, F, A, switcher)")
    toy.add_argument("directory", type=Path, nargs="?", help="default: the toy preset's cache folder")
    toy.add_argument("--overwrite", action="store_true", help="rebuild the kit there (only a kit is ever replaced)")
    toy.set_defaults(func=toy_models)


def presets(args: argparse.Namespace) -> int:
    from switchgen.core.config import DEFAULT_PRESET, preset_names

    for name in preset_names():
        print(name + ("  (default)" if name == DEFAULT_PRESET else ""))
    return 0


def tasks(args: argparse.Namespace) -> int:
    from switchgen.tasks import load_task, task_names

    for name in task_names():
        task = load_task(name)
        print(f"{name:<16} {task.metric_name:<12} {task.describe()}")
    return 0


def toy_models(args: argparse.Namespace) -> int:
    from switchgen.kits.toy import build_toy_models, default_toy_dir

    for name, path in build_toy_models(args.directory or default_toy_dir(), overwrite=args.overwrite).items():
        print(f"{name}\t{path}")
    return 0
