"""The switcher node: before each patch, pick the candidate that writes it.

The learned switcher reads the prompt of the released switchers (bunsenfeng/PFA_switcher_1
and _2) byte for byte, and its choice is one forward pass: the softmax of the next-token
logits restricted to the digits 0..n-1, then top-p sampled. No text is generated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.core.seeds import derive_seed
from switchgen.core.trace import Decision, Segment
from switchgen.nodes.state import TurnState
from switchgen.nodes.tracing import SwitcherRun
from switchgen.servers.base import Backend

ENDED = ("eos", "stop", "budget")


def top_p_choice(probs: Sequence[float], top_p: float, rng: random.Random) -> int:
    """Sample an index from the smallest most-likely set whose mass reaches `top_p`."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept: list[int] = []
    mass = 0.0
    for i in order:
        kept.append(i)
        mass += probs[i]
        if mass >= top_p:
            break
    r = rng.random() * sum(probs[i] for i in kept)
    for i in kept:
        r -= probs[i]
        if r < 0:
            return i
    return kept[-1]


def make_switcher(
    config: SwitchConfig,
    switcher: Backend | None,
    count_tokens: Callable[[Segment], int],
) -> Callable[[TurnState], dict]:
    """The decision under `config`; `switcher` is the learned switcher's backend (None for the other strategies).

    nodes/turn.py wraps it into the LangGraph node (context, turns, review, the answer message).
    """
    names = config.names
    n = len(names)
    budget = config.max_new_tokens

    def author_index(segment: Segment) -> int:
        try:
            return config.index_of(segment["candidate"])
        except (KeyError, ValueError) as err:
            raise InputError(f"segment {segment!r}: {err}") from None

    def decide(state: TurnState, segments: list[Segment], remaining: int) -> tuple[Decision, dict]:
        step = len(segments)
        rng = random.Random(derive_seed(config.seed, "switch", state["query"], step))  # per query, as the patches
        forced = list(state.get("forced") or [])
        extra: dict = {}
        probs: list[float] | None = None
        mass: float | None = None
        if forced:
            try:
                index = config.index_of(forced[0])
            except ValueError as err:
                raise InputError(f"forced decision {forced[0]!r}: {err}") from None
            how, extra["forced"] = "forced", forced[1:]
        elif config.anchor_on and (step == 0 or remaining <= config.patch_size):
            index, how = config.aligned_index, "anchor"
        else:
            index, how, probs, mass = strategy_choice(state, segments, step, rng)
        decision: Decision = {
            "step": step,
            "chosen": names[index],
            "index": index,
            "how": how,
            "strategy": config.switcher.strategy,
            "probabilities": dict(zip(names, probs, strict=True)) if probs is not None else None,
            "digit_mass": mass,
        }
        return decision, extra

    def strategy_choice(
        state: TurnState, segments: list[Segment], step: int, rng: random.Random
    ) -> tuple[int, str, list[float] | None, float | None]:
        sw = config.switcher
        if sw.strategy == "single":
            return config.index_of(sw.candidate), "switcher", None, None
        if sw.strategy == "fixed":
            assert sw.sequence
            return config.index_of(sw.sequence[step % len(sw.sequence)]), "switcher", None, None
        if sw.strategy == "random":
            probs = [1.0 / n] * n
            return rng.randrange(n), "switcher", probs, None
        assert switcher is not None
        prompt = switcher_prompt(
            state["query"], [s["text"] for s in segments], [author_index(s) for s in segments], n
        )
        text = user_turn(switcher.tokenizer, prompt)
        run = SwitcherRun.start(model=config.switcher_model, prompt=text, step=step)  # a run in LangChain callbacks
        try:
            scores = switcher.choice_distribution(text, [str(i) for i in range(n)])
        except BaseException as err:
            run.error(err)
            raise
        if scores.probs is None or scores.mass < sw.min_digit_mass:
            index, how = config.aligned_index, "fallback"
        else:
            index, how = top_p_choice(scores.probs, sw.top_p, rng), "switcher"
        if run.run is not None:
            probabilities = dict(zip(names, scores.probs, strict=True)) if scores.probs is not None else None
            decision = {"step": step, "chosen": names[index], "how": how, "probabilities": probabilities,
                        "digit_mass": scores.mass}
            run.end(decision, len(switcher.tokenizer.encode(text, add_special_tokens=False)))
        return index, how, scores.probs, scores.mass

    def switcher_node(state: TurnState) -> dict:
        query = state.get("query")
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty: pass {'query': '...'}")
        segments = list(state.get("segments") or [])
        update: dict = {}
        used = state.get("tokens_used")
        if used is None:  # first step of a run: check the given trace and count it against the budget
            for segment in segments:
                author_index(segment)
            used = sum(count_tokens(s) for s in segments)
            update.update(
                tokens_used=used,
                max_new_tokens=budget,
                output="".join(s["text"] for s in segments),
            )
        if used >= budget or (segments and segments[-1].get("finish_reason") in ENDED):
            return {**update, "done": True}
        decision, extra = decide(state, segments, budget - used)
        return {**update, **extra, "decisions": [decision], "done": False}

    return switcher_node
