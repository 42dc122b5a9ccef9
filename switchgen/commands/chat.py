"""`switchgen chat`: an interactive conversation (switchgen/chat.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from switchgen.commands.options import add_config_args, load_command_config, quiet_transformers


def register(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="an interactive conversation, tokens coloured by the candidate writing them")
    add_config_args(chat)
    chat.add_argument("--thread", help="resume this conversation (default: a new one; its id is printed)")
    chat.add_argument("--db", type=Path, help="SQLite file of the threads (default: $SWITCHGEN_HOME/chat.sqlite)")
    chat.add_argument("--color", choices=["auto", "always", "never"], default="auto", help="ANSI colours (default: auto)")
    chat.add_argument("--review", action="store_true", help="pause before each patch to choose its author")
    chat.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    from switchgen.chat import run_chat

    return run_chat(load_command_config(args), db=args.db, thread=args.thread, color=args.color, review=args.review)
