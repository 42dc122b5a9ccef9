"""The graph's state: the query, the attributed trace, and every switching decision.

Nodes return only their update; list channels append (reducers), so the trace and the
decision log grow step by step and LangGraph Studio shows each step's change.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal, Required, TypedDict

FinishReason = Literal["length", "eos", "stop", "budget"]
How = Literal["anchor", "switcher", "fallback", "forced"]


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


class InputState(TypedDict, total=False):
    query: Required[str]
    # A partial trace to continue from (e.g. a switcher-training rollout).
    segments: list[Segment]
    # Decisions imposed on the first steps: candidate names or indices, consumed in order.
    forced: list[str | int]


class OutputState(TypedDict, total=False):
    query: str
    output: str
    segments: list[Segment]
    decisions: list[Decision]
    tokens_used: int
    max_new_tokens: int
    done: bool


class SwitchState(TypedDict, total=False):
    query: str
    segments: Annotated[list[Segment], operator.add]
    decisions: Annotated[list[Decision], operator.add]
    forced: list[str | int]
    output: str
    tokens_used: int
    max_new_tokens: int
    done: bool
