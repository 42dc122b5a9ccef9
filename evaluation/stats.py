"""Confidence intervals: percentile bootstrap of a mean, and of a paired difference of means."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REPS = 2000


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, reps: int = REPS, level: float = 0.95) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the mean of `values` (resampling examples)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(reps, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """mean(a - b) over the same examples, with the bootstrap interval of the per-example differences."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in size: {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(diff.mean()) if diff.size else float("nan"), bootstrap_ci(diff, seed=seed)
