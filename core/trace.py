"""The trace's words: a Segment (one patch and its author) and a Decision (who wrote it, and why).

Shared by the graph's state, the records commands write, switcher training and the analyses.
"""

from __future__ import annotations

from typing import Literal, NotRequired, Required  # pydantic builds schemas from these on 3.11

from typing_extensions import TypedDict

FinishReason = Literal["length", "eos", "stop", "budget"]
How = Literal["anchor", "switcher", "fallback", "forced", "review"]

# The finish reasons that end a trace: nothing is written after such a patch.
ENDED: tuple[FinishReason, ...] = ("eos", "stop", "budget")


class Segment(TypedDict, total=False):
    """One patch of the response and its author.

    As graph input (a partial trace to continue) only `candidate` and `text` are required.
    """

    candidate: Required[str]
    text: Required[str]
    index: int
    tokens: int
    finish_reason: FinishReason


class Decision(TypedDict):
    """Who wrote patch `step`, and why."""

    step: int
    chosen: str
    index: int
    how: How
    strategy: str
    # The switcher's distribution over candidates (None when it was not asked: anchor, forced).
    probabilities: dict[str, float] | None
    # Probability mass the switcher put on the digit tokens at all (None when not asked).
    digit_mass: float | None
    # Learned switcher: its forward passes for this decision (switcher.calibration: 1 for none, n for shifts).
    passes: NotRequired[int]
    # Review mode: the candidate the switcher proposed when a reviewer chose another (how="review").
    proposed: NotRequired[str]


