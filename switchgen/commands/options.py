"""What every command shares: the configuration flags, number types that refuse bad values, the output helpers.

A bad flag is a one-line `switchgen: error:` like every other mistake (the parser raises UsageError
instead of printing its usage and exiting), and each kind of number is checked by one type here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from switchgen.core.errors import SwitchgenError
from switchgen.core.files import atomic_write_text
from switchgen.core.seeds import MAX_SEED

if TYPE_CHECKING:
    from switchgen.core.config import SwitchConfig


class UsageError(SwitchgenError):
    """A flag the parser refused."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError (main prints one line) rather than usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _number(kind: Callable[[str], float], name: str, ok: Callable[[float], bool]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _number(int, "a whole number >= 1", lambda v: v >= 1)
non_negative_int = _number(int, "a whole number >= 0", lambda v: v >= 0)
positive_float = _number(float, "a finite number > 0", lambda v: v > 0)
non_negative_float = _number(float, "a finite number >= 0", lambda v: v >= 0)
fraction = _number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
port = _number(int, "a port in 0..65535", lambda v: 0 <= v <= 65535)
seed = _number(int, "a seed in 0..2**64-1", lambda v: 0 <= v <= MAX_SEED)


def host_names(text: str) -> list[str]:
    """Comma-separated host names a server answers in Host/Origin, e.g. `localhost,myhost.lan`; `*`: any."""
    names = [h.strip() for h in text.split(",") if h.strip()]
    if not names or any(" " in h or "/" in h for h in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated host names (or *), got {text!r}")
    return names


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers >= 1, e.g. `1,4,8`."""
    try:
        return tuple(positive_int(x) for x in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 1, got {text!r}") from None


def add_config_args(parser: argparse.ArgumentParser, *, preset_default: str | None = None) -> None:
    """--preset / --config and the flags that override the configuration's seed, budget and patch size."""
    source = parser.add_mutually_exclusive_group()
    default = f" (default: {preset_default})" if preset_default else " (default: olmo2-1b)"
    source.add_argument("--preset", default=preset_default, help=f"a named preset{default}; see `switchgen presets`")
    source.add_argument("--config", type=Path, help="a YAML configuration file")
    parser.add_argument("--seed", type=seed, help="seed for switcher and generator sampling")
    parser.add_argument("--max-new-tokens", type=positive_int, help="token budget of each response")
    parser.add_argument("--patch-size", type=positive_int, help="tokens per patch")


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    """--overwrite: start an output over instead of resuming it (one made with other settings is refused)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start {what} over (default: resume it; an output made with other settings is refused)")


DEFAULT_HOST = "127.0.0.1"  # loopback: a server is reachable from elsewhere only when asked


def add_listen_args(parser: argparse.ArgumentParser, *, default_port: int, port_help: str) -> None:
    """Where a server listens, and the key it requires: `switchgen serve` and `switchgen api` alike."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=port, default=default_port, help=port_help)
    parser.add_argument(
        "--api-key", default=os.environ.get("SWITCHGEN_API_KEY"),
        help="require `Authorization: Bearer KEY` on every route but /health (default: $SWITCHGEN_API_KEY; none)",
    )
    parser.add_argument(
        "--allowed-hosts", type=host_names,
        help="names accepted in Host and Origin, comma-separated, * for any (default: a loopback server without a key "
        "answers only localhost, 127.0.0.1 and ::1: no DNS rebinding, no cross-origin posts from web pages)",
    )


def add_sft_args(parser: argparse.ArgumentParser, defaults: object, *, lr_hint: str) -> None:
    """The LoRA SFT flags of `switchgen train` and `switchgen distill`, defaulting to their settings class."""
    epochs, batch, lr, rank = (getattr(defaults, f) for f in ("epochs", "batch_size", "lr", "lora_r"))
    parser.add_argument("--epochs", type=positive_float, default=epochs, help=f"default {epochs:g}")
    parser.add_argument("--batch-size", type=positive_int, default=batch, help=f"per device; default {batch}")
    parser.add_argument("--lr", type=positive_float, default=lr, help=f"default {lr:g}; {lr_hint}")
    parser.add_argument("--lora-r", type=positive_int, default=rank, help=f"LoRA rank (alpha = 2r); default {rank}")


def load_command_config(args: argparse.Namespace) -> SwitchConfig:
    """The configuration the command names (--preset or --config) with add_config_args's flags applied."""
    from switchgen.core.config import load_config

    overrides = {"seed": args.seed, "max_new_tokens": args.max_new_tokens, "patch_size": args.patch_size}
    try:
        return load_config(args.config or args.preset, **overrides)
    except SwitchgenError as err:  # a flag that conflicts with the file (patch size over the budget, say)
        flags = [f"--{name.replace('_', '-')} {value}" for name, value in overrides.items() if value is not None]
        raise type(err)(f"{err} (with {' '.join(flags)})" if flags else str(err)) from None


def source_args(args: argparse.Namespace) -> list[str]:
    """The configuration flags as given, to print a command that reproduces this one."""
    source = [f"--config {args.config}"] if args.config else [f"--preset {args.preset}"] if args.preset else []
    for flag in ("seed", "max_new_tokens", "patch_size"):
        if getattr(args, flag) is not None:
            source.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return source


def write_text(text: str, output: Path | None) -> int:
    """`text` to stdout, or atomically to `output` (no half-written file)."""
    if output is None:
        sys.stdout.write(text)
        return 0
    atomic_write_text(output, text)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def log(line: str) -> None:
    """A progress or warning line for the user, on stderr (stdout holds results)."""
    print(f"switchgen: {line}", file=sys.stderr)


def quiet_transformers() -> None:
    """Loading bars and warnings from transformers would bury our progress bar."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # peft reads transformers' deprecated alias on every adapter load: nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    from transformers.utils import logging

    logging.disable_progress_bar()
