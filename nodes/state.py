"""The graph's state: the query, the attributed trace, and every switching decision.

Nodes return only their update; list channels append (reducers), so the trace and the
decision log grow step by step and LangGraph Studio shows each step's change.

`messages` is the standard conversation channel (add_messages): the graph reads the last
human message as the query and appends its answer as one AIMessage, so it drops into agent
graphs. With a checkpointer a thread keeps the conversation; each new input starts a fresh
trace (segments, decisions and the budget are per turn; see switchgen.graph.compiled).
"""

from __future__ import annotations

import operator
from typing import Annotated

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from switchgen.core.trace import Decision, Segment


class InputState(TypedDict, total=False):
    # The question; or leave it out and pass `messages`: the last human message is the question.
    query: str
    messages: Annotated[list[AnyMessage], add_messages]
    # A partial trace to continue from (e.g. a switcher-training rollout).
    segments: list[Segment]
    # Decisions imposed on the first steps: candidate names or indices, consumed in order.
    forced: list[str | int]


class OutputState(TypedDict, total=False):
    query: str
    # The conversation, ending with this turn's answer (an AIMessage holding segments and decisions).
    messages: Annotated[list[AnyMessage], add_messages]
    output: str
    segments: list[Segment]
    decisions: list[Decision]
    tokens_used: int
    max_new_tokens: int
    done: bool


class SwitchState(TypedDict, total=False):
    """The graph's state as a thread (and LangGraph Studio) shows it."""

    query: str
    messages: Annotated[list[AnyMessage], add_messages]
    segments: Annotated[list[Segment], operator.add]
    decisions: Annotated[list[Decision], operator.add]
    forced: list[str | int]
    output: str
    tokens_used: int
    max_new_tokens: int
    done: bool


class TurnState(SwitchState, total=False):
    """What the nodes read: the state plus private channels (LangGraph keeps them out of the state schema)."""

    # The turn the trace belongs to: a new input starts a new one.
    turn: str
    # The run-time context the turn started with (see nodes/context.py).
    settings: dict
    # Review mode: the switcher's decision waiting for a reviewer (see nodes/review.py).
    proposal: Decision | None
