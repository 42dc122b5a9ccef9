"""The switcher node's decision: before each patch, pick the candidate that writes it (or end the turn).

Forced decisions (a rollout's, a replay's) come first, then the anchor (the aligned candidate
writes the first patch and the one that reaches the budget, with the learned strategy), then the
configured strategy (nodes/strategies.py). nodes/turn.py wraps this into the LangGraph node.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError, InputTooLong
from switchgen.core.seeds import derive_seed
from switchgen.core.trace import ENDED, Decision, Segment
from switchgen.nodes.state import TurnState
from switchgen.nodes.strategies import Choice, Strategy, Turn, author_index, make_strategy
from switchgen.servers.base import Backend


class Switcher:
    """The decision under one resolved configuration: state in, state update out."""

    def __init__(self, config: SwitchConfig, strategy: Strategy, count_tokens: Callable[[Segment], int]) -> None:
        self.config = config
        self.strategy = strategy
        self.count_tokens = count_tokens

    def __call__(self, state: TurnState) -> dict:
        query = state.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty: pass {'query': '...'}")
        segments = list(state.get("segments") or [])
        update: dict = {}
        used = state.get("tokens_used")
        if used is None:  # first step of a run: check the given trace and count it against the budget
            for segment in segments:
                author_index(self.config, segment)
            used = sum(self.count_tokens(s) for s in segments)
            update.update(tokens_used=used, max_new_tokens=self.config.max_new_tokens,
                          output="".join(s["text"] for s in segments))
        if used >= self.config.max_new_tokens or (segments and segments[-1].get("finish_reason") in ENDED):
            return {**update, "done": True}
        try:
            decision, extra = self.decide(state, segments, self.config.max_new_tokens - used)
        except InputTooLong:
            if not segments:
                raise
            return {**update, "done": True}  # the switcher can no longer read the whole trace: the answer ends here
        return {**update, **extra, "decisions": [decision], "done": False}

    def decide(self, state: TurnState, segments: list[Segment], remaining: int) -> tuple[Decision, dict]:
        """The decision for the next patch, and the state it consumes (a forced decision)."""
        config, step = self.config, len(segments)
        forced = list(state.get("forced") or [])
        extra: dict = {}
        if forced:
            try:
                choice, how = Choice(config.index_of(forced[0])), "forced"
            except ValueError as err:
                raise InputError(f"forced decision {forced[0]!r}: {err}") from None
            extra["forced"] = forced[1:]
        elif config.anchor_on and (step == 0 or remaining <= config.patch_size):
            choice, how = Choice(config.aligned_index), "anchor"
        else:
            rng = random.Random(derive_seed(config.seed, "switch", state["query"], step))  # per query, as the patches
            choice = self.strategy.choose(Turn(state["query"], segments, step, rng))
            how = choice.how
        decision: Decision = {
            "step": step,
            "chosen": config.names[choice.index],
            "index": choice.index,
            "how": how,  # type: ignore[typeddict-item]
            "strategy": config.switcher.strategy,
            "probabilities": dict(zip(config.names, choice.probs, strict=True)) if choice.probs is not None else None,
            "digit_mass": choice.mass,
        }
        if choice.passes is not None:
            decision["passes"] = choice.passes
        return decision, extra


def make_switcher(config: SwitchConfig, switcher: Backend | None, count_tokens: Callable[[Segment], int]) -> Switcher:
    """The decision under `config`; `switcher` is the learned switcher's backend (None for the other strategies)."""
    return Switcher(config, make_strategy(config, switcher), count_tokens)
