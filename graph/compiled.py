"""The compiled graph: a LangGraph CompiledStateGraph that checks and marks each new turn first.

LangGraph writes a run's input into the thread (a checkpoint) before any node runs, so a node
that rejects bad input would leave it in the thread's state, and nodes cannot tell the new
input's trace from the previous turn's. Every way of running a graph (invoke, batch, stream,
their async forms, astream_events, the LangGraph server, use as a subgraph) goes through
`stream` / `astream`, so this class checks the input there (graph/inputs.py), before anything
is written, and marks the run with a fresh turn id that the switcher node uses to start a fresh
trace (nodes/turn.py). Runs that continue a thread — `None` input, `Command(resume=...)`,
replays from a checkpoint, a parent graph resuming this one as its subgraph — pass unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config

# Private, and on purpose: LangGraph sets this key when a parent graph resumes this one as its
# subgraph, and exports it nowhere public (langgraph.constants warns that it is private). Without
# it a resumed subgraph's input would be taken for a new turn and its trace started afresh.
# Private too: a parent graph that streams its subgraphs puts its stream (with its modes) under
# CONFIG_KEY_STREAM, and its custom writer is what this graph's nodes then write to.
from langgraph._internal._constants import CONFIG_KEY_RESUMING, CONFIG_KEY_STREAM
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from switchgen.core.config import SwitchConfig
from switchgen.graph.inputs import admit_turn
from switchgen.nodes.context import resolve_config
from switchgen.nodes.streaming import WATCHED_KEY
from switchgen.nodes.turn import TURN_KEY

# Runs that continue a turn (resume, replay) may carry on with the turn's stored budget, which
# this class does not read: they get a generous limit (the budget bounds every run anyway).
CONTINUE_LIMIT = 100_000


def recursion_limit(max_new_tokens: int) -> int:
    """Supersteps a turn may take: two per patch (three in review mode); a patch holds at least one token."""
    return 3 * max_new_tokens + 10


class SwitchGraph(CompiledStateGraph):
    """The Switch Generation graph, with new turns checked before they reach the thread."""

    def __init__(
        self,
        *,
        switch_config: SwitchConfig,
        has_switcher: bool,
        preflight: Callable[[dict], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.switch_config = switch_config
        self.has_switcher = has_switcher
        self.preflight = preflight  # more checks of a new turn (prompt lengths), before the thread is written

    @classmethod
    def wrap(
        cls,
        compiled: CompiledStateGraph,
        switch_config: SwitchConfig,
        has_switcher: bool,
        preflight: Callable[[dict], None] | None = None,
    ) -> SwitchGraph:
        attrs = {k: v for k, v in compiled.__dict__.items() if k not in ("__orig_class__", "preflight")}
        return cls(switch_config=switch_config, has_switcher=has_switcher, preflight=preflight, **attrs)

    def _prepare(self, input: Any, config: RunnableConfig | None, context: Any) -> tuple[Any, RunnableConfig]:
        """Check a new turn's input and mark the run; every run gets a recursion limit fit for its budget."""
        resolved = resolve_config(self.switch_config, context)  # a bad context fails before anything runs
        config = dict(config or {})  # type: ignore[assignment]
        config["recursion_limit"] = max(config.get("recursion_limit") or 0, recursion_limit(resolved.max_new_tokens))
        continuing = (
            input is None
            or isinstance(input, Command)
            or not isinstance(input, dict)
            # a parent graph resuming this one as its subgraph
            or bool(ensure_config(config).get("configurable", {}).get(CONFIG_KEY_RESUMING))
        )
        if continuing:
            config["recursion_limit"] = max(config["recursion_limit"], CONTINUE_LIMIT)
            return input, config  # type: ignore[return-value]
        input = admit_turn(self.switch_config, input, context, has_switcher=self.has_switcher)
        if self.preflight is not None:
            self.preflight(input)
        config["configurable"] = {**(config.get("configurable") or {}), TURN_KEY: uuid.uuid4().hex}
        return input, config  # type: ignore[return-value]

    def _watch(self, config: RunnableConfig, kwargs: dict[str, Any]) -> RunnableConfig:
        """Tell the nodes whether the custom stream is read (nodes/streaming.py): by this run's modes,
        or by a parent graph's that streams this one as its subgraph."""
        modes = {*_modes(kwargs.get("stream_mode") or self.stream_mode), *_modes(kwargs.get("print_mode") or ())}
        parent = (config.get("configurable") or {}).get(CONFIG_KEY_STREAM)
        watched = "custom" in modes or (parent is not None and "custom" in getattr(parent, "modes", {"custom"}))
        return {**config, "configurable": {**(config.get("configurable") or {}), WATCHED_KEY: watched}}  # type: ignore[typeddict-item]

    def stream(self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any):  # type: ignore[override]
        input, config = self._prepare(input, config, context)
        return super().stream(input, self._watch(config, kwargs), context=context, **kwargs)

    def astream(self, input: Any, config: RunnableConfig | None = None, *, context: Any = None, **kwargs: Any):  # type: ignore[override]
        input, config = self._prepare(input, config, context)
        return super().astream(input, self._watch(config, kwargs), context=context, **kwargs)


def _modes(mode: str | Sequence[str]) -> list[str]:
    return [mode] if isinstance(mode, str) else list(mode)
