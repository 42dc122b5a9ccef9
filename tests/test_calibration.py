"""Switcher calibration (nodes/calibration.py): the candidates' order in the file stops mattering.

The switcher is the toy kit's (random weights, real forward passes): it prefers some digits for no
reason, which is exactly what calibration has to cancel. Reversing the candidates' order renumbers
every "<model i begins>" tag and the digit read back; a calibrated distribution, read per candidate,
must not change (exactly for `permutations`, and for `shifts` with two candidates or a cyclic shift).
"""

from __future__ import annotations

import math

import pytest

from switchgen.core.errors import ConfigError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph, load_config
from switchgen.nodes.calibration import CONTENT_FREE, distribution, labellings, passes

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


def test_passes():
    assert [passes(c, 3) for c in ("none", "shifts", "permutations", "contextual")] == [1, 3, 6, 2]
    assert passes("permutations", 4) == 24


def test_auto_calibrates_untuned_switchers_only(toy_config):
    untuned = toy_config(switcher={"model": "toy:A"})  # a candidate's own model, no adapter
    assert untuned.switcher.calibration == "auto" and untuned.switcher_calibration == "shifts"
    assert toy_config(switcher={"model": "toy:A", "adapter": "switchers/x"}).switcher_calibration == "none"  # trained
    assert toy_config().switcher_calibration == "none"  # toy:switcher: its own checkpoint (a merged switcher)
    assert toy_config(switcher={"model": "toy:A", "adapter": "x", "calibration": "permutations"}).switcher_calibration == "permutations"


def test_unknown_calibration_is_a_one_line_config_error(toy_config):
    with pytest.raises(ConfigError) as err:
        toy_config(switcher={"calibration": "rotate"})
    assert "calibration" in str(err.value) and "\n" not in str(err.value)


def test_the_graph_reads_the_switcher_per_candidate_whatever_the_order(engine, toy_config):
    """Through the graph: with `permutations` the same trace gets the same probability per candidate name
    from a file listing the candidates in reverse; each decision records its switcher passes."""
    forward = toy_config(anchor=False, max_new_tokens=40, switcher={"model": "toy:A", "calibration": "permutations"})
    data = forward.model_dump()
    data["candidates"] = data["candidates"][::-1]
    backward = load_config(data)
    trace = [{"candidate": "A", "text": "The answer"}, {"candidate": "P", "text": " is 5."}]
    got = {}
    for name, config in (("forward", forward), ("backward", backward)):
        result = build_graph(config, engine=engine).invoke({"query": QUERY, "segments": trace})
        first = result["decisions"][0]
        assert first["how"] == "switcher" and first["passes"] == 6
        got[name] = first["probabilities"]
    assert close([got["forward"][c] for c in "PFA"], [got["backward"][c] for c in "PFA"])
    plain = build_graph(toy_config(anchor=False, max_new_tokens=40), engine=engine).invoke({"query": QUERY, "segments": trace})
    assert plain["decisions"][0]["passes"] == 1
