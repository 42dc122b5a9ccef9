"""The `switchgen` command line: one subcommand per module of switchgen/commands/."""

from __future__ import annotations

import sys

from switchgen.commands import COMMANDS, lm_eval
from switchgen.commands.options import Parser
from switchgen.core.errors import SwitchgenError


def parser() -> Parser:
    root = Parser(prog="switchgen", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # lm-eval's own flags, parsed by lm-eval
        return lm_eval.run(argv[1:])
    try:
        args = parser().parse_args(argv)
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
