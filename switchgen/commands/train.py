"""`switchgen train`: LoRA SFT of a switcher on rollouts (training/train.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import (
    add_sft_args,
    fraction,
    non_negative_float,
    quiet_transformers,
    seed,
)
from switchgen.training.settings import TrainSettings

DEFAULTS = TrainSettings()


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="LoRA-train a switcher on rollouts (TRL SFT); several --data files: switch-global",
        description="Supervised fine-tuning of a LoRA switcher on `switchgen rollouts` files. The defaults are "
        "the paper's (8B models); tiny models (toy, skills kits) need a larger --lr, e.g. 2e-3. On GPUs: "
        "accelerate launch -m switchgen.cli train ... (docs/training.md).",
    )
    train.add_argument("--data", type=Path, action="append", required=True, help="a rollouts JSONL (repeatable)")
    train.add_argument("--out", type=Path, required=True, help="the adapter folder (must not exist or be empty)")
    train.add_argument("--base", help="the switcher's base model (default: the aligned model the rollouts recorded)")
    add_sft_args(train, DEFAULTS, lr_hint="the paper's, for 8B models; tiny models: ~2e-3")
    train.add_argument("--min-margin", type=non_negative_float, default=DEFAULTS.min_margin,
                       help=f"drop records whose margin is below (default {DEFAULTS.min_margin:g})")
    train.add_argument("--keep-uninformative", action="store_true",
                       help="also train on records where every candidate's utility is equal (left out by default)")
    train.add_argument("--eval-fraction", type=fraction, default=DEFAULTS.eval_fraction,
                       help=f"held out for the report (default {DEFAULTS.eval_fraction:g})")
    train.add_argument("--seed", type=seed, default=DEFAULTS.seed, help=f"split and training seed (default {DEFAULTS.seed})")
    train.add_argument("--merge", action="store_true", help="also write OUT/merged: base + adapter merged")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.training.train import snippet, summary, train_switcher

    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lora_r=args.lora_r,
                             min_margin=args.min_margin, keep_uninformative=args.keep_uninformative,
                             eval_fraction=args.eval_fraction, seed=args.seed)
    report = train_switcher(args.data, args.out, base=args.base, settings=settings, merge=args.merge,
                            progress=not args.no_progress)
    if report:
        # Paths as the user gave them (the report files hold them resolved): the output shows no folder above them.
        shown = {**report, "adapter": str(args.out), **({"merged": str(args.out / "merged")} if "merged" in report else {})}
        print(summary(report))
        print(f"\nadapter in {args.out}; use it with this configuration (paths relative to where you ran this):\n")
        print(snippet(shown))
    return 0
