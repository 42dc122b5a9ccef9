"""Confidence intervals: of a mean (Wilson's score interval for 0/1 scores, else the percentile
bootstrap), and of a paired difference of means (paired bootstrap).

A percentile bootstrap collapses on 0/1 scores that are all equal: 20 correct of 20 resamples to
20 of 20 every time, [1.000, 1.000], as if the method could not fail. Wilson's interval is the
standard fix for a proportion (20/20: [0.839, 1]); `mean_interval` picks it whenever every score is 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

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


def wilson_ci(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion of `successes` in `n` trials (nan, nan for n = 0)."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not float dust
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> tuple[tuple[float, float], str]:
    """(the 95% interval of the mean of `values`, its method): "wilson" when every value is 0 or 1, else "bootstrap"."""
    if values and all(v in (0.0, 1.0) for v in values):
        return wilson_ci(int(sum(values)), len(values), level=level), "wilson"
    return bootstrap_ci(values, level=level), "bootstrap"
