"""The graph's nodes as LangGraph runs them: the decision and the patch plus what a run adds around them.

Around the switcher's decision and a candidate's patch (nodes/switcher.py, nodes/generator.py,
written for one fixed configuration) this adds, per run:

* the runtime context (nodes/context.py): the configuration with the context's settings
  applied; the update functions are built once per distinct resolved configuration and cached; a turn
  stores the settings it started with, so resumes and forks go on under them;
* turn boundaries: a new input (marked by `SwitchGraph` with a fresh turn id in the run's
  configurable) starts a fresh trace, so a thread's earlier turns never leak into this one's
  decisions, budget or output; within a turn, and on resume or replay, the trace goes on;
* review mode: the switcher's decision becomes a proposal, and the switcher's next visit pauses
  on it with an interrupt until a reviewer names the author (nodes/review.py);
* the answer: when the turn is done, one AIMessage appended to `messages`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.types import Overwrite

from switchgen.core.config import SwitchConfig
from switchgen.core.prompts import candidate_prompt, has_chat_template
from switchgen.nodes.context import Context, resolve_config, turn_context
from switchgen.nodes.messages import answer_message, conversation_history
from switchgen.nodes.review import review
from switchgen.nodes.state import TurnState
from switchgen.nodes.tracing import answer_id
from switchgen.servers.base import Backend

# Set by SwitchGraph in a run's configurable when the run starts a new turn.
TURN_KEY = "switchgen_turn"

# The switcher's decision or a candidate's patch under one resolved configuration (nodes/switcher.py,
# nodes/generator.py): state in, state update out.
Update = Callable[..., dict]
PromptTokens = Callable[[str, list[dict[str, str]]], int]


class UpdateCache:
    """One update function per resolved configuration (the context may change it run by run)."""

    def __init__(self, base: SwitchConfig, factory: Callable[[SwitchConfig], Update]) -> None:
        self.base = base
        self.factory = factory
        self._updates: dict[str, Update] = {}
        self._lock = threading.Lock()

    def resolve(self, context: Any) -> tuple[SwitchConfig, Update]:
        config = resolve_config(self.base, context)
        key = config.model_dump_json()
        with self._lock:
            update = self._updates.get(key)
            if update is None:
                update = self._updates[key] = self.factory(config)
        return config, update


def _answer(state: TurnState, update: dict, prompt_tokens: PromptTokens, turn: str | None) -> dict:
    """The update plus the turn's answer message, once the turn is done (its id: the turn's, see nodes/tracing.py)."""
    if not update.get("done"):
        return update
    merged = {**state, **{k: v for k, v in update.items() if k not in ("segments", "decisions")}}
    segments = [*(state.get("segments") or []), *update.get("segments", [])]
    decisions = [*(state.get("decisions") or []), *update.get("decisions", [])]
    query = merged.get("query", "")
    message = answer_message(
        query=query,
        segments=segments,
        decisions=decisions,
        tokens_used=merged.get("tokens_used") or 0,
        max_new_tokens=merged.get("max_new_tokens") or 0,
        input_tokens=prompt_tokens(query, conversation_history(state.get("messages"))),
        message_id=answer_id(turn),
    )
    return {**update, "messages": [message]}


def make_switcher_node(
    base: SwitchConfig, factory: Callable[[SwitchConfig], Update], prompt_tokens: PromptTokens
) -> Callable[..., dict]:
    """The switcher node: picks the next author (or ends the turn), under the run's context."""
    updates = UpdateCache(base, factory)

    def switcher(state: TurnState, runtime: Runtime[Context], config: RunnableConfig) -> dict:
        turn = (config.get("configurable") or {}).get(TURN_KEY)
        new_turn = turn is not None and turn != state.get("turn")
        context = turn_context(None if new_turn else state.get("settings"), runtime.context)
        resolved, update_fn = updates.resolve(context)
        if not new_turn and state.get("proposal"):  # review mode: the reviewer decides; pauses here
            proposal = state["proposal"]
            return {"decisions": [review(resolved, state, proposal) if context.review else proposal], "proposal": None}
        if new_turn:  # the previous turn's trace, budget and answer do not carry over
            state = {**state, "tokens_used": None, "decisions": [], "output": "", "done": False, "proposal": None}
        update = dict(update_fn(state))
        decisions = list(update.pop("decisions", None) or [])
        if context.review and decisions:
            # Propose, and come back (route_after_switcher) to pause on it: the turn and its settings
            # are in the thread by then, so the resumed run goes on under them.
            update["proposal"] = decisions.pop()
        elif new_turn:
            update["proposal"] = None
        if decisions:
            update["decisions"] = decisions
        update = _answer(state, update, prompt_tokens, turn if new_turn else state.get("turn"))
        if new_turn:
            update["turn"] = turn
            update["settings"] = asdict(context)
            update["decisions"] = Overwrite(decisions)
        return update

    return switcher


def make_generator_node(
    base: SwitchConfig, factory: Callable[[SwitchConfig], Update], prompt_tokens: PromptTokens, name: str
) -> Callable[..., dict]:
    """A candidate's node: writes one patch under the run's context; the last one adds the answer."""
    updates = UpdateCache(base, factory)

    def generate(state: TurnState, runtime: Runtime[Context]) -> dict:
        _, update_fn = updates.resolve(turn_context(state.get("settings"), runtime.context))
        return update_fn(state, lambda update: _answer(state, update, prompt_tokens, state.get("turn")))

    generate.__name__ = name
    return generate


def prompt_token_counter(config: SwitchConfig, backend: Backend) -> PromptTokens:
    """Tokens of the conversation as the aligned candidate sees it (the answer's usage_metadata input_tokens)."""
    candidate = config.candidates[config.aligned_index]
    tokenizer = backend.tokenizer
    view = config.candidate_view(config.aligned_index, has_chat_template(tokenizer))

    def count(query: str, history: list[dict[str, str]]) -> int:
        prompt = candidate_prompt(tokenizer, view, query, [], candidate.plain_template, history)
        return len(tokenizer.encode(prompt, add_special_tokens=False))

    return count
