"""`switchgen lm-eval ARGS...`: lm-evaluation-harness's own CLI with the switchgen model registered."""

from __future__ import annotations

import argparse
import sys

from switchgen.commands.options import quiet_transformers
from switchgen.core.errors import SwitchgenError


def register(sub: argparse._SubParsersAction) -> None:
    # Listed for --help only: main() hands `lm-eval ...` to run() before parsing (its flags are lm-eval's).
    sub.add_parser("lm-eval", help="lm-evaluation-harness's CLI with the switchgen model registered",
                   description="Runs `lm_eval ARGS...` with --model switchgen available, e.g. "
                   "switchgen lm-eval --model switchgen --model_args preset=toy --tasks gsm8k --limit 5", add_help=False)


def run(argv: list[str]) -> int:
    """lm-eval's own command line (lm-eval 0.4 discovers no plug-ins, so the model is registered here first)."""
    quiet_transformers()
    from lm_eval.__main__ import cli_evaluate

    import switchgen.evaluation.lm_eval_plugin  # noqa: F401  (registers --model switchgen)

    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SwitchgenError as err:
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    return 0
