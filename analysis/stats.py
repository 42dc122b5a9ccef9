"""The paper's analyses of who wrote what (arXiv 2510.09913, Fig. 5 and Table 5), as plain functions.

Everything here is computed from eval records alone (authors per patch, scores, tokens, seconds),
so it runs on any `switchgen eval` output, local or from GPU servers.

Conventions, written once:
- An answer's author sequence is the author of each patch in order, one entry per patch (a
  candidate writing two patches in a row appears twice: each patch is one switcher decision).
- An author sequence of length n "is used" by an answer when it occurs as n consecutive patches.
- Frequency = share of answers using it; treatment effect = mean score of the answers using it
  minus the mean score of those not using it (undefined when every answer or none uses it).
- "Correct" (Table 5): a score at the metric's maximum for 0/1 metrics (every score seen on the
  task is 0 or 1), else a score >= 0.5 for continuous metrics (F1, rewards); `threshold` overrides.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from switchgen.core.records import EvalRecord

SINGLE_PREFIX = "single:"


def candidates_of(records: Iterable[EvalRecord]) -> list[str]:
    """The authors seen in `records`, in order of first appearance."""
    seen: dict[str, None] = {}
    for r in records:
        for author in r.authors:
            seen.setdefault(author, None)
    return list(seen)


@dataclass(frozen=True)
class PositionShares:
    """shares[c][i]: the share of answers with a patch i whose patch i candidate c wrote."""

    candidates: list[str]
    shares: list[list[float]]
    answers: list[int]  # answers that have a patch i


def authors_by_position(records: Sequence[EvalRecord], candidates: Sequence[str] | None = None) -> PositionShares:
    names = list(candidates) if candidates else candidates_of(records)
    length = max((len(r.segments) for r in records), default=0)
    counts = [Counter(r.authors[i] for r in records if len(r.authors) > i) for i in range(length)]
    answers = [sum(c.values()) for c in counts]
    shares = [[counts[i][c] / answers[i] for i in range(length)] for c in names]
    return PositionShares(names, shares, answers)


def ngrams(authors: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The distinct runs of n consecutive authors in one answer."""
    return {tuple(authors[i : i + n]) for i in range(len(authors) - n + 1)}


@dataclass(frozen=True)
class SequenceStat:
    sequence: tuple[str, ...]
    used: int  # answers using it
    frequency: float  # used / answers
    mean_with: float
    mean_without: float | None  # None when every answer uses it

    @property
    def effect(self) -> float | None:
        """Mean score when used minus when not; None when every answer uses it."""
        return None if self.mean_without is None else self.mean_with - self.mean_without

    @property
    def label(self) -> str:
        return "→".join(self.sequence)


def sequence_stats(records: Sequence[EvalRecord], n: int) -> list[SequenceStat]:
    """Frequency and treatment effect of every author sequence of length n used by some answer,
    most frequent first (ties by label)."""
    used_by = [ngrams(r.authors, n) for r in records]
    scores = [float(r.score) for r in records]
    out: list[SequenceStat] = []
    for seq in sorted(set().union(*used_by)) if used_by else []:
        inside = [s for s, used in zip(scores, used_by, strict=True) if seq in used]
        outside = [s for s, used in zip(scores, used_by, strict=True) if seq not in used]
        out.append(
            SequenceStat(
                seq,
                len(inside),
                len(inside) / len(records),
                sum(inside) / len(inside),
                sum(outside) / len(outside) if outside else None,
            )
        )
    return sorted(out, key=lambda s: (-s.used, s.label))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 points or a constant variable."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def frequency_effect_correlation(stats: Sequence[SequenceStat]) -> float | None:
    """Pearson's r between frequency and treatment effect over the sequences whose effect is defined."""
    points = [(s.frequency, s.effect) for s in stats if s.effect is not None]
    return pearson([p[0] for p in points], [p[1] for p in points])


@dataclass(frozen=True)
class CorrectRule:
    threshold: float
    binary: bool

    def __call__(self, score: float) -> bool:
        return score >= self.threshold

    @property
    def text(self) -> str:
        return "score = 1 (a 0/1 metric)" if self.binary else f"score ≥ {self.threshold:g}"


def correct_rule(scores: Iterable[float], threshold: float | None = None) -> CorrectRule:
    """What counts as correct on a task: see the module docstring."""
    if threshold is not None:
        return CorrectRule(threshold, False)
    binary = all(s in (0.0, 1.0) for s in scores)
    return CorrectRule(1.0, True) if binary else CorrectRule(0.5, False)


@dataclass(frozen=True)
class SinglesVsSwitch:
    """Table 5: examples grouped by how many single models got them right, against switching."""

    singles: list[str]
    # rows: "all correct", "some correct", "all wrong" -> (switch correct, switch wrong)
    rows: dict[str, tuple[int, int]]
    n: int  # examples every method answered


ROWS = ("all correct", "some correct", "all wrong")


def singles_vs_switch(
    singles: dict[str, Sequence[EvalRecord]], switch: Sequence[EvalRecord], rule: CorrectRule
) -> SinglesVsSwitch:
    """Count examples (matched by id, those every method answered) per row and switch outcome."""
    by_method = {m: {r.id: r for r in recs} for m, recs in singles.items()}
    switch_by_id = {r.id: r for r in switch}
    ids = [i for i in switch_by_id if all(i in recs for recs in by_method.values())]
    rows = {row: [0, 0] for row in ROWS}
    for i in ids:
        right = sum(rule(float(recs[i].score)) for recs in by_method.values())
        row = ROWS[0] if right == len(by_method) else ROWS[2] if right == 0 else ROWS[1]
        rows[row][0 if rule(float(switch_by_id[i].score)) else 1] += 1
    return SinglesVsSwitch(list(by_method), {k: (v[0], v[1]) for k, v in rows.items()}, len(ids))


def tokens_by_candidate(records: Iterable[EvalRecord]) -> Counter[str]:
    """Tokens written by each author over all answers."""
    total: Counter[str] = Counter()
    for r in records:
        for s in r.segments:
            total[s.candidate] += s.tokens
    return total


@dataclass(frozen=True)
class MethodCost:
    """Per answer: tokens written, wall seconds (latency at the run's concurrency) and switcher LM
    calls (decisions a switcher model scored; a single model, random or fixed switching makes none)."""

    method: str
    n: int
    mean_score: float
    tokens: float
    seconds: float
    switcher_calls: float = 0.0


def method_cost(method: str, records: Sequence[EvalRecord]) -> MethodCost:
    n = len(records)
    return MethodCost(
        method,
        n,
        sum(float(r.score) for r in records) / n,
        sum(r.tokens_used for r in records) / n,
        sum(r.seconds for r in records) / n,
        sum(d.get("digit_mass") is not None for r in records for d in r.decisions) / n,  # set only when the LM ran
    )


def is_switching(records: Sequence[EvalRecord]) -> bool:
    """Whether a method's answers have more than one author overall (switch, random, fixed, ...)."""
    return len(candidates_of(records)) > 1
