"""Switcher calibration (nodes/calibration.py): the candidates' order in the file stops mattering.

The switcher is the toy kit's (random weights, real forward passes): it prefers some digits for no
reason, which is exactly what calibration has to cancel. Reversing the candidates' order renumbers
every "<model i begins>" tag and the digit read back; a calibrated distribution, read per candidate,
must not change (exactly for `permutations`, and for `shifts` with two candidates or a cyclic shift).
"""

from __future__ import annotations

import math

import pytest

from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.nodes.calibration import CONTENT_FREE, distribution, labellings, passes, resolve

QUERY = "What is 2 plus 3?"
TEXTS = ["The answer", " is 5.", " Thanks"]


@pytest.fixture(scope="module")
def ask(engine):
    switcher = engine.backend("toy:switcher", device="cpu")
    calls: list[tuple[str, list[str], list[int]]] = []

    def ask(query, texts, tags):
        calls.append((query, list(texts), list(tags)))
        n = ask.n
        return switcher.choice_distribution(user_turn(switcher.tokenizer, switcher_prompt(query, texts, tags, n)),
                                            [str(i) for i in range(n)])

    ask.calls = calls
    return ask


def relabelled(ask, authors: list[int], order: list[int], n: int, calibration: str) -> list[float]:
    """The distribution per candidate when the file lists candidate c at position order[c]."""
    got = distribution(ask, QUERY, TEXTS[: len(authors)], [order[a] for a in authors], n, calibration)
    assert got.probs is not None
    return [got.probs[order[c]] for c in range(n)]


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True))


def test_uncalibrated_switcher_follows_the_order(ask):
    """The premise: untuned, reversing the file changes what the switcher says about the same candidates."""
    ask.n = 3
    same = relabelled(ask, [2, 0], [0, 1, 2], 3, "none")
    reversed_ = relabelled(ask, [2, 0], [2, 1, 0], 3, "none")
    assert not close(same, reversed_, 1e-3)


@pytest.mark.parametrize("n", [2, 3])
def test_permutations_make_the_distribution_order_proof(ask, n):
    ask.n = n
    authors = [n - 1, 0, n - 1]
    base = relabelled(ask, authors, list(range(n)), n, "permutations")
    assert math.isclose(sum(base), 1.0, abs_tol=1e-6)
    for order in labellings("permutations", n)[1:]:
        assert close(base, relabelled(ask, authors, list(order), n, "permutations"))


def test_shifts_are_order_proof_for_two_candidates_and_cyclic_orders(ask):
    ask.n = 2
    assert close(relabelled(ask, [1, 0], [0, 1], 2, "shifts"), relabelled(ask, [1, 0], [1, 0], 2, "shifts"))
    ask.n = 3
    base = relabelled(ask, [2, 0], [0, 1, 2], 3, "shifts")
    assert close(base, relabelled(ask, [2, 0], [1, 2, 0], 3, "shifts"))


def test_each_pass_relabels_the_tags(ask):
    ask.n = 3
    ask.calls.clear()
    got = distribution(ask, QUERY, TEXTS[:2], [2, 0], 3, "shifts")
    assert got.passes == passes("shifts", 3) == len(ask.calls) == 3
    assert [c[2] for c in ask.calls] == [[2, 0], [0, 1], [1, 2]]  # candidate c is called (c + s) % 3
    assert all(c[0] == QUERY and c[1] == TEXTS[:2] for c in ask.calls)


def test_contextual_divides_by_the_content_free_prompt(ask):
    ask.n = 3
    ask.calls.clear()
    got = distribution(ask, QUERY, TEXTS[:2], [2, 0], 3, "contextual")
    assert got.passes == passes("contextual", 3) == len(ask.calls) == 2
    assert ask.calls[1] == (CONTENT_FREE, [CONTENT_FREE] * 2, [2, 0])  # same tags, no content
    plain = distribution(ask, QUERY, TEXTS[:2], [2, 0], 3, "none").probs
    free = distribution(ask, CONTENT_FREE, [CONTENT_FREE] * 2, [2, 0], 3, "none").probs
    ratio = [p / q for p, q in zip(plain, free, strict=True)]
    assert close(got.probs, [r / sum(ratio) for r in ratio], 1e-6)


def test_passes_and_auto():
    assert [passes(c, 3) for c in ("none", "shifts", "permutations", "contextual")] == [1, 3, 6, 2]
    assert passes("permutations", 4) == 24
    assert resolve("auto", adapter=None, shares_candidate_model=True) == "shifts"  # untuned
    assert resolve("auto", adapter="switchers/x", shares_candidate_model=True) == "none"  # trained (LoRA)
    assert resolve("auto", adapter=None, shares_candidate_model=False) == "none"  # its own checkpoint
    assert resolve("permutations", adapter="switchers/x", shares_candidate_model=True) == "permutations"
