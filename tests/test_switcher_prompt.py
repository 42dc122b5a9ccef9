"""The switcher's prompt (byte-identical to the released switchers') and its top-p choice."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from switchgen.core.prompts import switcher_prompt
from switchgen.nodes.strategies import top_p_choice


def test_node_modules_import_on_their_own():
    """Each step imports in a fresh interpreter without the graph (nodes/ import nothing of graph/)."""
    code = "import sys, switchgen.nodes.switcher, switchgen.nodes.generator, switchgen.nodes.turn; " \
           "assert 'switchgen.graph' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def reference_prompt(q: str, segs: list[str], idx: list[int], n: int) -> str:
    """The formula of the reference code, written out independently."""
    return (
        q
        + "".join(f" <model {i} begins> {s} <model {i} ends>" for s, i in zip(segs, idx, strict=False))
        + f" Which model should generate the next segment? Please respond with a number from 0 to {n-1}. The answer is model "
    )


# -- literal expectations -------------------------------------------------------------------


def test_prompt_without_segments_literal():
    assert switcher_prompt("What is 2 plus 3?", [], [], 3) == (
        "What is 2 plus 3? Which model should generate the next segment? "
        "Please respond with a number from 0 to 2. The answer is model "
    )


def test_prompt_with_one_segment_literal():
    assert switcher_prompt("Tell me a story.", ["Once upon a time"], [1], 3) == (
        "Tell me a story. <model 1 begins> Once upon a time <model 1 ends> "
        "Which model should generate the next segment? "
        "Please respond with a number from 0 to 2. The answer is model "
    )


def test_prompt_with_several_segments_literal():
    got = switcher_prompt("Q:", ["The answer", " is 5.", "\nDone!"], [2, 0, 1], 3)
    assert got == (
        "Q: <model 2 begins> The answer <model 2 ends>"
        " <model 0 begins>  is 5. <model 0 ends>"
        " <model 1 begins> \nDone! <model 1 ends>"
        " Which model should generate the next segment? Please respond with a number from 0 to 2."
        " The answer is model "
    )
    # Byte-identical, not merely equal after normalisation.
    assert got.encode("utf-8") == (
        b"Q: <model 2 begins> The answer <model 2 ends> <model 0 begins>  is 5. <model 0 ends>"
        b" <model 1 begins> \nDone! <model 1 ends> Which model should generate the next segment?"
        b" Please respond with a number from 0 to 2. The answer is model "
    )


def test_prompt_two_candidates_literal():
    assert switcher_prompt("x", ["a"], [0], 2) == (
        "x <model 0 begins> a <model 0 ends> Which model should generate the next segment? "
        "Please respond with a number from 0 to 1. The answer is model "
    )


# -- the formula over many shapes -----------------------------------------------------------


@pytest.mark.parametrize("n_segments", [0, 1, 2, 5, 12])
@pytest.mark.parametrize("n_candidates", [2, 3, 5, 10])
def test_prompt_matches_reference_formula(n_segments: int, n_candidates: int):
    rng = random.Random(n_segments * 100 + n_candidates)
    alphabet = "abc XYZ 0123456789 .,!?\n\t\u00e9\u4e2d\U0001F600<>{}"
    segs = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30))) for _ in range(n_segments)]
    idx = [rng.randrange(n_candidates) for _ in range(n_segments)]
    query = "Question {0}: what is {x}?\n" + "".join(rng.choice(alphabet) for _ in range(10))
    got = switcher_prompt(query, segs, idx, n_candidates)
    assert got == reference_prompt(query, segs, idx, n_candidates)
    assert got.encode("utf-8") == reference_prompt(query, segs, idx, n_candidates).encode("utf-8")
    assert got.endswith(f"from 0 to {n_candidates - 1}. The answer is model ")


def test_prompt_accepts_tuples_and_empty_segment_text():
    assert switcher_prompt("q", ("", "b"), (0, 1), 3) == reference_prompt("q", ["", "b"], [0, 1], 3)


# -- top_p_choice ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probs, dominant",
    [
        ([0.1, 0.75, 0.15], 1),
        ([0.7, 0.2, 0.1], 0),  # exactly at the threshold
        ([0.05, 0.05, 0.9], 2),
        ([0.01, 0.02, 0.03, 0.04, 0.9], 4),
        ([0.3, 0.7], 1),
    ],
)
def test_top_p_dominant_candidate_always_chosen(probs: list[float], dominant: int):
    picks = {top_p_choice(probs, 0.7, random.Random(seed)) for seed in range(500)}
    assert picks == {dominant}


def test_top_p_samples_within_nucleus_with_right_frequencies():
    probs = [0.15, 0.4, 0.1, 0.35]  # nucleus at 0.7: {1, 3} (0.4 + 0.35 = 0.75)
    counts = Counter(top_p_choice(probs, 0.7, random.Random(seed)) for seed in range(4000))
    assert set(counts) == {1, 3}
    share = counts[1] / 4000
    assert abs(share - 0.4 / 0.75) < 0.04, counts


def test_top_p_nucleus_includes_the_crossing_candidate():
    probs = [0.5, 0.3, 0.2]  # 0.5 < 0.7, 0.8 >= 0.7: {0, 1}
    picks = Counter(top_p_choice(probs, 0.7, random.Random(seed)) for seed in range(2000))
    assert set(picks) == {0, 1}


def test_top_p_one_can_pick_every_candidate():
    probs = [0.5, 0.3, 0.15, 0.05]
    counts = Counter(top_p_choice(probs, 1.0, random.Random(seed)) for seed in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    for i, p in enumerate(probs):
        assert abs(counts[i] / 4000 - p) < 0.04, counts


def test_top_p_small_picks_the_argmax():
    probs = [0.2, 0.25, 0.3, 0.25]
    assert {top_p_choice(probs, 0.05, random.Random(seed)) for seed in range(300)} == {2}


def test_top_p_is_reproducible_for_a_seed():
    probs = [0.3, 0.35, 0.35]
    a = [top_p_choice(probs, 0.9, random.Random(seed)) for seed in range(200)]
    b = [top_p_choice(probs, 0.9, random.Random(seed)) for seed in range(200)]
    assert a == b
    assert len(set(a)) > 1
