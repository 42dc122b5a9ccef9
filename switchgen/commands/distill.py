"""`switchgen distill`: fine-tune the aligned model on switch generation's answers, and evaluate it (training/distill.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import (
    add_config_args,
    add_overwrite,
    add_sft_args,
    load_command_config,
    log,
    positive_int,
    quiet_transformers,
)
from switchgen.training.settings import DistillSettings

DEFAULTS = DistillSettings()


def register(sub: argparse._SubParsersAction) -> None:
    distill = sub.add_parser(
        "distill", help="fine-tune the aligned model on switch generation's train-split answers and evaluate it",
        description="LoRA SFT (TRL) of the aligned model on switch generation's answers to the task's train split "
        "(make them with `switchgen eval --split train --methods switch`), merged into OUT; then the distilled model "
        "(single:D), the aligned model and switching are evaluated on the test split, and the fraction of "
        "switching's gain recovered and the inference cost are reported.",
    )
    distill.add_argument("--outputs", type=Path, required=True, help="a `switchgen eval --split train` --out folder")
    distill.add_argument("--task", required=True, help="the task (its train split was answered; its test split evaluates)")
    distill.add_argument("--out", type=Path, required=True,
                         help="folder for the distilled model (new or empty; one holding this run's model resumes its evaluation)")
    distill.add_argument("--base", help="model to fine-tune (default: the aligned candidate's)")
    distill.add_argument("--rounds", type=positive_int, default=DEFAULTS.rounds,
                         help=f"rounds of regenerate + fine-tune (default {DEFAULTS.rounds})")
    add_sft_args(distill, DEFAULTS, lr_hint="the skills kit: 5e-4 with --epochs 20")
    distill.add_argument("--method", default=DEFAULTS.method,
                         help=f"the method whose answers are distilled (default {DEFAULTS.method})")
    distill.add_argument("--limit", type=positive_int, help="the first N test examples in the evaluation")
    distill.add_argument("--adapter", help="the switch method's LoRA adapter (a trained switcher)")
    distill.add_argument("--compare", type=Path,
                         help="a test-split `switchgen eval` folder holding the aligned model and --method: reuse its results")
    distill.add_argument("--concurrency", type=positive_int,
                         help="queries in flight while evaluating (default: the --compare run's, else as switchgen eval)")
    distill.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite(distill, "--out (its model and evaluations)")
    add_config_args(distill)
    distill.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.training.distill import distill, summary

    settings = DistillSettings(rounds=args.rounds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               lora_r=args.lora_r, seed=0 if args.seed is None else args.seed, method=args.method,
                               limit=args.limit, concurrency=args.concurrency)
    report = distill(load_command_config(args), args.task, args.outputs, args.out, base=args.base, settings=settings,
                     adapter=args.adapter, compare=args.compare, progress=not args.no_progress, log=log,
                     overwrite=args.overwrite)
    print(summary({**report, "model": str(args.out)}))  # the path as given (switchgen-distill.json holds it resolved)
    print(f"distilled model and report (switchgen-distill.json) in {args.out}")
    return 0
