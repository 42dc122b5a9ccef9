"""Who picks the next author: one small object per `switcher.strategy`, each answering `choose(turn)`.

learned: the switcher LM (the released switchers' prompt; per pass, the softmax of the next-token
logits restricted to the digits 0..n-1, read per candidate through `switcher.calibration`
(nodes/calibration.py: one pass, or more with the labels relabelled), then top-p sampled; too little
mass on the digits falls back to the aligned candidate). random: uniform. fixed: a sequence, cycling.
single: one candidate writes everything. `STRATEGIES` maps the config's name to its builder.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.core.trace import Segment
from switchgen.nodes.calibration import distribution
from switchgen.nodes.tracing import SwitcherRun
from switchgen.servers.base import Backend, ChoiceScores


@dataclass(frozen=True)
class Turn:
    """What a strategy sees before patch `step`: the query, the trace so far, the step's own rng."""

    query: str
    segments: list[Segment]
    step: int
    rng: random.Random


@dataclass(frozen=True)
class Choice:
    """A strategy's pick, with the distribution it drew from (None when there was none to draw from)."""

    index: int
    how: str = "switcher"  # or "fallback": the learned switcher put too little mass on the digits
    probs: list[float] | None = None
    mass: float | None = None
    passes: int | None = None  # the learned switcher's forward passes for this pick (its calibration's)


class Strategy(Protocol):
    def choose(self, turn: Turn) -> Choice: ...


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


def author_index(config: SwitchConfig, segment: Segment) -> int:
    """The candidate index of a segment's author; InputError for a name the configuration lacks."""
    try:
        return config.index_of(segment["candidate"])
    except (KeyError, ValueError) as err:
        raise InputError(f"segment {segment!r}: {err}") from None


@dataclass(frozen=True)
class Single:
    index: int

    def choose(self, turn: Turn) -> Choice:
        return Choice(self.index)


@dataclass(frozen=True)
class Fixed:
    sequence: tuple[int, ...]

    def choose(self, turn: Turn) -> Choice:
        return Choice(self.sequence[turn.step % len(self.sequence)])


@dataclass(frozen=True)
class UniformRandom:
    n: int

    def choose(self, turn: Turn) -> Choice:
        return Choice(turn.rng.randrange(self.n), probs=[1.0 / self.n] * self.n)


@dataclass(frozen=True)
class Learned:
    """The switcher LM's distribution over the candidates (read through `switcher.calibration`), top-p sampled."""

    config: SwitchConfig
    switcher: Backend

    def prompt(self, query: str, texts: Sequence[str], tags: Sequence[int]) -> str:
        """The released switchers' prompt with these author tags, in the switcher's chat template."""
        return user_turn(self.switcher.tokenizer, switcher_prompt(query, texts, tags, len(self.config.names)))

    def ask(self, query: str, texts: Sequence[str], tags: Sequence[int], rendered: str | None = None) -> ChoiceScores:
        """One switcher pass: the digits' distribution after `prompt(query, texts, tags)` (`rendered`: it, already)."""
        digits = [str(i) for i in range(len(self.config.names))]
        return self.switcher.choice_distribution(rendered or self.prompt(query, texts, tags), digits)

    def choose(self, turn: Turn) -> Choice:
        config, n = self.config, len(self.config.names)
        indices = [author_index(config, s) for s in turn.segments]
        texts = [s["text"] for s in turn.segments]
        text = self.prompt(turn.query, texts, indices)
        run = SwitcherRun.start(model=config.switcher_model, prompt=text, step=turn.step)  # a run in LangChain callbacks

        def ask(query: str, asked: Sequence[str], tags: Sequence[int]) -> ChoiceScores:
            """`self.ask`; the pass over the trace as it is (every calibration has one) reuses `text`."""
            same = query == turn.query and list(tags) == indices and list(asked) == texts
            return self.ask(query, asked, tags, text if same else None)

        try:
            scores = distribution(ask, turn.query, texts, indices, n, config.switcher_calibration)
        except BaseException as err:
            run.error(err)
            raise
        if scores.probs is None or scores.mass < config.switcher.min_digit_mass:
            choice = Choice(config.aligned_index, "fallback", scores.probs, scores.mass, scores.passes)
        else:
            index = top_p_choice(scores.probs, config.switcher.top_p, turn.rng)
            choice = Choice(index, "switcher", scores.probs, scores.mass, scores.passes)
        if run.run is not None:
            probabilities = dict(zip(config.names, scores.probs, strict=True)) if scores.probs is not None else None
            decision = {"step": turn.step, "chosen": config.names[choice.index], "how": choice.how,
                        "probabilities": probabilities, "digit_mass": scores.mass, "passes": scores.passes}
            run.end(decision, len(self.switcher.tokenizer.encode(text, add_special_tokens=False)))
        return choice


def _learned(config: SwitchConfig, switcher: Backend | None) -> Strategy:
    assert switcher is not None, "the learned strategy needs the switcher's backend"
    return Learned(config, switcher)


STRATEGIES: dict[str, Callable[[SwitchConfig, Backend | None], Strategy]] = {
    "single": lambda config, _: Single(config.index_of(config.switcher.candidate)),
    "fixed": lambda config, _: Fixed(tuple(config.index_of(name) for name in config.switcher.sequence or ())),
    "random": lambda config, _: UniformRandom(len(config.names)),
    "learned": _learned,
}


def make_strategy(config: SwitchConfig, switcher: Backend | None) -> Strategy:
    """The strategy `config.switcher.strategy` names; `switcher` is the learned switcher's backend (else None)."""
    return STRATEGIES[config.switcher.strategy](config, switcher)
