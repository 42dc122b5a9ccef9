"""The one surface every token source offers the graph: write a patch, score the next token.

Prompts arrive as text rendered by the nodes with the checkpoint's own tokenizer, so the same
node code drives the in-process engine and, later, HTTP inference servers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from transformers import PreTrainedTokenizerBase

TextCallback = Callable[[str], None]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one patch."""

    max_new_tokens: int
    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # write to max_new_tokens regardless (benchmarks)
    # Up to this many tokens past max_new_tokens to finish a character the patch's end would split
    # (a byte-level tokenizer writes a Japanese character or an emoji as 2-4 tokens): a patch ends
    # where its text is complete, so no patch, prompt or stream shows U+FFFD for it. 0: never.
    finish_character: int = 0


@dataclass(frozen=True)
class Patch:
    """What one generation call wrote."""

    text: str  # decoded, special tokens skipped, cut before a stop string
    tokens: int  # tokens sampled, the EOS token included
    finish_reason: Literal["length", "eos", "stop"]
    prefilled: int = 0  # prompt tokens this call had to encode (not found in a cache)
    # The model's context was full before max_new_tokens: fewer tokens were written, and nothing more fits.
    context_full: bool = False


@dataclass(frozen=True)
class ChoiceScores:
    """The next-token distribution restricted to a set of choices (the switcher's digits)."""

    probs: list[float] | None  # renormalised over the choices; None: no usable distribution
    mass: float  # probability the full distribution put on the choices
    prefilled: int = 0


class Backend(Protocol):
    """A checkpoint that can write and score; `tokenizer` renders its prompts client-side."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase: ...

    def generate(self, prompt: str, params: GenerationParams, on_text: TextCallback | None = None) -> Patch:
        """Write one patch; `on_text` receives the text as it is decoded (for streaming)."""
        ...

    def choice_distribution(self, prompt: str, choices: Sequence[str]) -> ChoiceScores: ...
