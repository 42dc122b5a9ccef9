"""Calibrating the learned switcher against the order of the candidates.

The switcher answers with a digit, and a model that was never trained to switch (an untuned
switcher) prefers some digits whatever the trace says: on real small models its choice followed
the candidates' order in the YAML file, not the candidates (docs/real-models.md). Calibration
asks the switcher more than once and reads the answers per candidate, not per digit:

    none          one pass: the digit distribution as the switcher gives it
    shifts        n passes: the candidates' labels in the prompt (the "<model i begins>" tags and the
                  digit read back) cyclically shifted, each candidate's probability averaged over the
                  shifts, so every candidate is read once at every digit. With two candidates these are
                  all the orders: the distribution is the same for either order of the YAML file
    permutations  n! passes: every relabelling (the same for any order of the file; 6 passes for 3)
    contextual    2 passes: the distribution divided by the one the switcher gives a content-free
                  prompt (the query and every segment replaced by "N/A", same tags; Zhao et al., 2021),
                  renormalised: the prior on each digit cancels, the order still shows in the tags
    auto          `shifts` for an untuned switcher (no adapter, on a candidate's own model), else `none`
                  (SwitchConfig.switcher_calibration)

A trained switcher has learned which digit names which candidate under one order; asked under
another labelling it answers out of distribution, so `auto` leaves it alone (measured in
docs/real-models.md and the README). Each pass is one prefill of the switcher's prompt through the
engine's prefix cache: the labellings share the query's tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from switchgen.servers.base import ChoiceScores

CONCRETE = ("none", "shifts", "permutations", "contextual")  # `auto` is resolved by SwitchConfig.switcher_calibration
CONTENT_FREE = "N/A"

# ask(query, segment texts, the tag of each segment's author) -> the switcher's distribution over the digits
Ask = Callable[[str, Sequence[str], Sequence[int]], ChoiceScores]


@dataclass(frozen=True)
class Calibrated:
    """The switcher's distribution over the candidates (None: no usable one), its digit mass (the mean over
    the passes), and how many switcher passes it took."""

    probs: list[float] | None
    mass: float
    passes: int


def labellings(calibration: str, n: int) -> list[tuple[int, ...]]:
    """The labellings asked: labels[c] is the digit candidate c is called in that pass."""
    if calibration == "shifts":
        return [tuple((c + s) % n for c in range(n)) for s in range(n)]
    if calibration == "permutations":
        return list(itertools.permutations(range(n)))
    return [tuple(range(n))]


def passes(calibration: str, n: int) -> int:
    """Switcher passes per decision under a concrete calibration."""
    return 2 if calibration == "contextual" else len(labellings(calibration, n))


def distribution(ask: Ask, query: str, texts: Sequence[str], authors: Sequence[int], n: int, calibration: str) -> Calibrated:
    """The switcher's distribution over the n candidates under a concrete `calibration` (not `auto`)."""
    if calibration == "contextual":
        return _contextual(ask, query, texts, authors, n)
    if calibration not in CONCRETE:
        raise ValueError(f"calibration {calibration!r}: one of {', '.join(CONCRETE)} (SwitchConfig.switcher_calibration resolves auto)")
    orders = labellings(calibration, n)
    total = [0.0] * n
    mass = 0.0
    usable = True
    for labels in orders:
        scores = ask(query, texts, [labels[a] for a in authors])
        mass += scores.mass
        if scores.probs is None:
            usable = False
            continue
        for c in range(n):
            total[c] += scores.probs[labels[c]]
    probs = [t / len(orders) for t in total] if usable else None
    return Calibrated(probs, mass / len(orders), len(orders))


def _contextual(ask: Ask, query: str, texts: Sequence[str], authors: Sequence[int], n: int) -> Calibrated:
    scores = ask(query, texts, authors)
    free = ask(CONTENT_FREE, [CONTENT_FREE] * len(texts), authors)
    if scores.probs is None or free.probs is None or min(free.probs) <= 0.0:
        return Calibrated(None, scores.mass, 2)
    ratio = [p / q for p, q in zip(scores.probs, free.probs, strict=True)]
    total = sum(ratio)
    return Calibrated([r / total for r in ratio], scores.mass, 2)
