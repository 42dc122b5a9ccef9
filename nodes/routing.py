"""Where the graph goes next: to the chosen candidate, back to the switcher, or to the end."""

from __future__ import annotations

from langgraph.graph import END

from switchgen.nodes.state import TurnState


def route_after_switcher(state: TurnState) -> str:
    """The candidate the switcher chose, or END when the response is finished.

    In review mode a proposal waits for its reviewer: back to the switcher, which pauses on it.
    """
    if state.get("done"):
        return END
    if state.get("proposal"):
        return "switcher"
    return state["decisions"][-1]["chosen"]


def route_after_patch(state: TurnState) -> str:
    """Back to the switcher for the next patch, or END after EOS, a stop string or the budget."""
    return END if state.get("done") else "switcher"
