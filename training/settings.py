"""What a user may set for each training job, with its defaults: the CLI's flags take their defaults from here.

Kept apart from the jobs (no torch, TRL or graph imports), so the command line is built quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchgen.core.errors import InputError


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
    epochs: float = 5
    batch_size: int = 32
    lr: float = 1e-5
    lora_r: int = 16
    min_margin: float = 0.0
    keep_uninformative: bool = False
    eval_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class DistillSettings:
    rounds: int = 1
    epochs: float = 3
    batch_size: int = 8
    lr: float = 1e-4  # real models; the skills kit: 5e-4 for 20 epochs
    lora_r: int = 16
    seed: int = 0
    method: str = "switch"  # the method whose train-split answers are distilled
    limit: int | None = None  # test examples in the evaluation (default: all)
    concurrency: int | None = None  # queries in flight (default: the --compare run's, else as switchgen eval)
