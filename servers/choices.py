"""The switcher's answer: which tokens spell each choice ("0", "1", ...) and their distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def choice_token_ids(tokenizer: PreTrainedTokenizerBase, choices: Sequence[str]) -> list[list[int]]:
    """For each choice, the single tokens that spell it, with and without a leading space."""
    ids: list[list[int]] = []
    for choice in choices:
        found: list[int] = []
        for spelling in (choice, " " + choice):
            toks = tokenizer.encode(spelling, add_special_tokens=False)
            if len(toks) == 1 and toks[0] not in found:
                found.append(toks[0])
        ids.append(found)
    return ids


def choice_probabilities(per_choice: list[float], all_spelled: bool) -> tuple[list[float] | None, float]:
    """Renormalise the choices' probabilities; None where a choice has no token or none holds any mass."""
    mass = float(sum(per_choice))
    if not all_spelled or not math.isfinite(mass) or mass <= 0.0:
        return None, mass if math.isfinite(mass) else 0.0
    return [p / mass for p in per_choice], mass
