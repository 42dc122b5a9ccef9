"""What a user may set for each training job, with its defaults: the CLI's flags take their defaults from here.

Kept apart from the jobs (no torch, TRL or graph imports), so the command line is built quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from switchgen.core.errors import InputError

# The numbers that must be finite and > 0 (a zero or NaN learning rate trains nothing, silently).
_POSITIVE = ("epochs", "batch_size", "lr", "lora_r", "rounds", "limit", "concurrency")


def _check_positive(settings: object) -> None:
    for f in fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if f.name in _POSITIVE and value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{f.name.replace('_', '-')} must be a finite number > 0, got {value}")


@dataclass(frozen=True)
class RolloutSettings:
    """What a rollouts file was made with; a resumed file must be continued with the same."""

    k: int = 4
    seed: int = 0
    cut: tuple[float, float] = (0.1, 0.9)  # the trace's length, as fractions of max_new_tokens

    def check(self) -> None:
        lo, hi = self.cut
        if self.k < 1:
            raise InputError(f"--k must be at least 1, got {self.k}")
        if not 0.0 <= lo <= hi < 1.0:
            raise InputError(f"the trace cut must satisfy 0 <= lo <= hi < 1, got {self.cut}")


@dataclass(frozen=True)
class TrainSettings:
    """A switcher's LoRA SFT (the paper's defaults, for 8B models)."""

    epochs: float = 5
    batch_size: int = 32
    lr: float = 1e-5
    lora_r: int = 16
    min_margin: float = 0.0
    keep_uninformative: bool = False
    eval_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive(self)
        if not (math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise InputError(f"min-margin must be a finite number >= 0, got {self.min_margin}")
        if not 0 <= self.eval_fraction < 1:
            raise InputError(f"eval-fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass(frozen=True)
class DistillSettings:
    """Distilling a method's answers into the aligned model."""

    rounds: int = 1
    epochs: float = 3
    batch_size: int = 8
    lr: float = 1e-4  # real models; the skills kit: 5e-4 for 20 epochs
    lora_r: int = 16
    seed: int = 0
    method: str = "switch"  # the method whose train-split answers are distilled
    limit: int | None = None  # test examples in the evaluation (default: all)
    concurrency: int | None = None  # queries in flight (default: the --compare run's, else as switchgen eval)

    def __post_init__(self) -> None:
        _check_positive(self)
