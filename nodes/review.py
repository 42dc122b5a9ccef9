"""Review mode: a person confirms or overrides each switching decision before its patch is written.

The switcher node pauses with `interrupt(payload)`: the payload shows the switcher's distribution,
its proposal and the trace so far. `Command(resume="P")` (a candidate's name or index) picks the
author. A bad answer is refused with an `error` in a new interrupt, and the run stays paused.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from switchgen.core.config import SwitchConfig
from switchgen.core.trace import Decision
from switchgen.nodes.state import TurnState

REVIEW_KIND = "switchgen.review"


def review_payload(config: SwitchConfig, state: TurnState, decision: Decision) -> dict[str, Any]:
    """What the reviewer sees (JSON-ready): the proposal, the distribution and the trace so far."""
    return {
        "kind": REVIEW_KIND,
        "step": decision["step"],
        "proposed": decision["chosen"],
        "how": decision["how"],
        "probabilities": decision["probabilities"],
        "digit_mass": decision["digit_mass"],
        "candidates": config.names,
        "query": state.get("query", ""),
        "trace": [{"candidate": s["candidate"], "text": s["text"]} for s in state.get("segments") or []],
        "tokens_used": state.get("tokens_used") or 0,
        "max_new_tokens": config.max_new_tokens,
        "resume_with": "a candidate name (or index), e.g. Command(resume=" + repr(decision["chosen"]) + ")",
    }


def parse_choice(config: SwitchConfig, answer: Any) -> int:
    """The candidate index a resume value names: "P", 0, "0" or {"candidate": "P"} (ValueError if none)."""
    if isinstance(answer, dict) and set(answer) == {"candidate"}:
        answer = answer["candidate"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int)):
        raise ValueError(f"expected a candidate name or index (one of {config.names}), got {type(answer).__name__}")
    if isinstance(answer, str):
        answer = answer.strip()
    return config.index_of(answer)


def review(config: SwitchConfig, state: TurnState, decision: Decision) -> Decision:
    """Pause until a valid candidate is named; the decision records an override as how="review"."""
    payload = review_payload(config, state, decision)
    while True:
        answer = interrupt(payload)
        try:
            index = parse_choice(config, answer)
            break
        except ValueError as err:
            payload = {**payload, "error": f"{answer!r} is not a candidate: {err}"}
    if index == decision["index"]:
        return decision
    return {
        **decision,
        "chosen": config.names[index],
        "index": index,
        "how": "review",
        "proposed": decision["chosen"],
    }
