"""The `switchgen` command line: one subcommand per module of switchgen/commands/."""

from __future__ import annotations

import sys

from switchgen.commands import COMMANDS, lm_eval
from switchgen.commands.options import Parser, UsageError
from switchgen.core.errors import SwitchgenError

DESCRIPTION = ("Switch Generation: pretrained, finetuned and aligned checkpoints of one model write one answer "
               "together, a patch at a time, a switcher LM choosing who writes next. `switchgen COMMAND --help` "
               "for each command.")


def parser() -> Parser:
    root = Parser(prog="switchgen", description=DESCRIPTION)
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # lm-eval's own flags, parsed by lm-eval
        return lm_eval.run(argv[1:])
    try:
        args, extra = parser().parse_known_args(argv)
        if extra:  # named here, where the subcommand is known, so the hint points at its --help
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see `switchgen {args.command} --help`)")
        return args.func(args)
    except SwitchgenError as err:
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine, not switchgen: a full disk, a permission, a vanished file
        print(f"switchgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("switchgen: interrupted; finished records are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
