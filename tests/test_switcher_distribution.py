"""The learned switcher's distribution over candidates, its use in the graph, and the other strategies."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import toy_config_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from switchgen.core.errors import ConfigError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph, load_config
from switchgen.servers.engine.local import LocalEngine

QUERY = "What is 2 plus 3?"
TRACES = [
    ([], []),
    (["Once upon a time"], [0]),
    (["The answer", " is 5.", " Thanks"], [0, 1, 2]),
]


@pytest.fixture(scope="module")
def switcher(engine):
    return engine.backend("toy:switcher", device="cpu")


def digit_ids(tokenizer, n: int) -> list[list[int]]:
    """Independently: the single-token spellings of each digit, with and without a space."""
    out = []
    for i in range(n):
        ids = []
        for text in (str(i), f" {i}"):
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.append(toks[0])
        out.append(sorted(set(ids)))
    return out


def full_next_token_probs(model, tokenizer, prompt: str) -> torch.Tensor:
    """Softmax of the next-token logits from one uncached forward pass over the whole prompt."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # the chat template writes BOS itself
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1)


# -- the distribution itself ----------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("trace", TRACES, ids=["empty", "one", "three"])
def test_choice_distribution_covers_candidates_and_sums_to_one(switcher, n, trace):
    segs, idx = trace
    prompt = user_turn(switcher.tokenizer, switcher_prompt(QUERY, segs, [i % n for i in idx], n))
    scores = switcher.choice_distribution(prompt, [str(i) for i in range(n)])
    assert scores.probs is not None
    assert len(scores.probs) == n
    assert all(p >= 0.0 for p in scores.probs)
    assert math.isclose(sum(scores.probs), 1.0, abs_tol=1e-5)
    assert 0.0 < scores.mass <= 1.0


@pytest.mark.parametrize("trace", TRACES, ids=["empty", "one", "three"])
def test_choice_distribution_matches_an_independent_forward_pass(switcher, toy_kit, trace):
    segs, idx = trace
    n = 3
    prompt = user_turn(switcher.tokenizer, switcher_prompt(QUERY, segs, idx, n))
    scores = switcher.choice_distribution(prompt, ["0", "1", "2"])

    tokenizer = AutoTokenizer.from_pretrained(toy_kit["switcher"])
    model = AutoModelForCausalLM.from_pretrained(toy_kit["switcher"], dtype=torch.float32).eval()
    full = full_next_token_probs(model, tokenizer, prompt)
    ids = digit_ids(tokenizer, n)
    assert all(len(i) == 2 for i in ids)  # "1" and " 1" are both single tokens in the toy vocabulary
    per_digit = [float(full[i].sum()) for i in ids]
    mass = sum(per_digit)
    assert scores.mass == pytest.approx(mass, rel=1e-4)
    assert scores.probs == pytest.approx([p / mass for p in per_digit], rel=1e-4, abs=1e-6)


# -- decisions in the graph -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_switcher_decisions_carry_probabilities(make_graph, switcher, seed):
    config, graph = make_graph(anchor=False, seed=seed, max_new_tokens=60, patch_size=20)
    result = graph.invoke({"query": "Tell me a short story."})
    decisions = result["decisions"]
    assert decisions and all(d["how"] == "switcher" for d in decisions)
    for d, seg_before in zip(decisions, range(len(decisions)), strict=False):
        probs = d["probabilities"]
        assert list(probs) == config.names
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-5)
        assert 0.0 < d["digit_mass"] <= 1.0
        assert d["strategy"] == "learned"
        assert d["chosen"] == config.names[d["index"]]
        # The probabilities are the switcher's on the trace so far (recomputed independently).
        segs = result["segments"][:seg_before]
        prompt = user_turn(
            switcher.tokenizer,
            switcher_prompt(result["query"], [s["text"] for s in segs], [s["index"] for s in segs], 3),
        )
        again = switcher.choice_distribution(prompt, ["0", "1", "2"])
        assert list(probs.values()) == pytest.approx(again.probs, rel=1e-3, abs=1e-5)
        assert d["digit_mass"] == pytest.approx(again.mass, rel=1e-3)


def test_anchor_decisions_have_no_probabilities(make_graph):
    _, graph = make_graph(seed=5)
    result = graph.invoke({"query": "Tell me a short story."})
    first = result["decisions"][0]
    assert first["how"] == "anchor"
    assert first["probabilities"] is None and first["digit_mass"] is None


# -- a switcher that favours "1" --------------------------------------------------------------

BIAS_PROMPTS = [
    ("Tell me a short story.", [], []),
    ("Tell me a short story.", ["Once upon a time there"], [0]),
    ("What is 2 plus 3?", ["The answer is", " 5, and 1 more", " line"], [0, 1, 2]),
    ("Count: 1 1 1 1", ["1 2 3 4 5 6 7 8 9 0"], [1]),
]


@pytest.fixture(scope="module")
def favour_one_switcher(toy_kit, tmp_path_factory) -> Path:
    """A copy of the toy switcher whose tied output row for "1" / " 1" points along its hidden states."""
    target = tmp_path_factory.mktemp("favour_one") / "switcher"
    shutil.copytree(toy_kit["switcher"], target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings

    finals: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda _m, _a, out: finals.append(out[0, -1].detach().clone()))
    try:
        for query, segs, idx in BIAS_PROMPTS:
            prompt = user_turn(tokenizer, switcher_prompt(query, segs, idx, 3))
            with torch.inference_mode():
                model(input_ids=torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]]))
    finally:
        hook.remove()
    direction = torch.stack(finals).mean(0)
    direction /= direction.norm()
    reach = min(float(h @ direction) for h in finals)
    assert reach > 0
    one_ids = [i for ids in digit_ids(tokenizer, 3)[1:2] for i in ids]
    with torch.no_grad():
        for token in one_ids:
            model.get_input_embeddings().weight[token] += (60.0 / reach) * direction
    model.save_pretrained(target)
    return target


def test_favour_one_switcher_really_favours_one(favour_one_switcher):
    engine = LocalEngine()
    backend = engine.backend(str(favour_one_switcher), device="cpu")
    original = LocalEngine().backend("toy:switcher", device="cpu")
    for query, segs, idx in BIAS_PROMPTS:
        prompt = user_turn(backend.tokenizer, switcher_prompt(query, segs, idx, 3))
        scores = backend.choice_distribution(prompt, ["0", "1", "2"])
        assert scores.probs[1] > 0.999, scores
        assert scores.mass > 0.5
        assert original.choice_distribution(prompt, ["0", "1", "2"]).probs[1] < 0.9  # it was not so before


@pytest.mark.parametrize("seed", range(6))
def test_switcher_favouring_one_always_gets_model_one(engine, favour_one_switcher, seed):
    config = load_config(
        toy_config_dict(anchor=False, seed=seed, max_new_tokens=60, patch_size=15, switcher={"model": str(favour_one_switcher)})
    )
    result = build_graph(config, engine=engine).invoke({"query": f"Tell me story number {seed}."})
    decisions = result["decisions"]
    assert len(decisions) == 4  # F never ends early: 60 / 15 patches
    for d in decisions:
        assert (d["how"], d["index"], d["chosen"]) == ("switcher", 1, "F")
        assert d["probabilities"]["F"] > 0.99
    assert [s["candidate"] for s in result["segments"]] == ["F"] * 4


def test_switcher_favouring_one_with_anchor_on(engine, favour_one_switcher):
    """Anchor on: the middle (non-anchor) steps still go to model 1, the final patch to the aligned one."""
    config = load_config(
        toy_config_dict(seed=3, max_new_tokens=80, patch_size=20, switcher={"model": str(favour_one_switcher)})
    )
    assert config.anchor_on
    given = [{"candidate": "P", "text": "Once upon a time"}]
    result = build_graph(config, engine=engine).invoke({"query": "Tell me a story.", "segments": given})
    hows = [(d["how"], d["chosen"]) for d in result["decisions"]]
    assert hows[:-1] == [("switcher", "F")] * (len(hows) - 1)
    assert len(hows) >= 3
    assert hows[-1] == ("anchor", "A")


# -- min_digit_mass fallback ----------------------------------------------------------------


def step0_mass(switcher, query: str, n: int = 3) -> float:
    prompt = user_turn(switcher.tokenizer, switcher_prompt(query, [], [], n))
    return switcher.choice_distribution(prompt, [str(i) for i in range(n)]).mass


def test_min_digit_mass_above_actual_mass_falls_back_to_aligned(make_graph, switcher):
    query = "Why is the ocean salty?"
    mass = step0_mass(switcher, query)
    assert 0.0 < mass < 0.5
    for seed in range(4):
        config, graph = make_graph(
            anchor=False, seed=seed, max_new_tokens=40, patch_size=20, switcher={"min_digit_mass": min(1.0, mass * 2)}
        )
        first = graph.invoke({"query": query})["decisions"][0]
        assert first["how"] == "fallback"
        assert (first["chosen"], first["index"]) == ("A", config.aligned_index)
        assert first["digit_mass"] == pytest.approx(mass, rel=1e-3)


def test_min_digit_mass_fallback_uses_the_aligned_role_not_the_last(engine, switcher):
    query = "Why is the ocean salty?"
    mass = step0_mass(switcher, query)
    candidates = [
        {"name": "A", "role": "aligned", "model": "toy:A", "device": "cpu"},
        {"name": "P", "role": "pretrained", "model": "toy:P", "device": "cpu"},
        {"name": "F", "role": "finetuned", "model": "toy:F", "device": "cpu"},
    ]
    config = load_config(
        toy_config_dict(candidates=candidates, anchor=False, switcher={"min_digit_mass": min(1.0, mass * 2)})
    )
    first = build_graph(config, engine=engine).invoke({"query": query})["decisions"][0]
    assert (first["how"], first["chosen"], first["index"]) == ("fallback", "A", 0)


def test_min_digit_mass_below_actual_mass_keeps_the_switcher(make_graph, switcher):
    query = "Why is the ocean salty?"
    mass = step0_mass(switcher, query)
    _, graph = make_graph(anchor=False, max_new_tokens=40, patch_size=20, switcher={"min_digit_mass": mass / 2})
    assert graph.invoke({"query": query})["decisions"][0]["how"] == "switcher"


# -- the other strategies -------------------------------------------------------------------


def test_random_strategy(make_graph):
    chosen = set()
    for seed in range(12):
        config, graph = make_graph(seed=seed, max_new_tokens=40, patch_size=10, switcher={"strategy": "random"})
        assert not config.anchor_on  # off by default for non-learned strategies
        result = graph.invoke({"query": "Tell me a story."})
        again = graph.invoke({"query": "Tell me a story."})
        assert [d["chosen"] for d in again["decisions"]] == [d["chosen"] for d in result["decisions"]]
        for d in result["decisions"]:
            assert d["how"] == "switcher" and d["strategy"] == "random"
            assert d["probabilities"] == pytest.approx({"P": 1 / 3, "F": 1 / 3, "A": 1 / 3})
            assert d["digit_mass"] is None
            chosen.add(d["chosen"])
    assert chosen == {"P", "F", "A"}


@pytest.mark.parametrize(
    "sequence, expected",
    [
        ("P F P F F", ["P", "F", "P", "F", "F"]),
        ("P F", ["P", "F", "P", "F", "P"]),  # cycles
        (["1", 0, "F"], ["F", "P", "F", "F", "P"]),  # indices, also as strings
    ],
)
def test_fixed_strategy(make_graph, sequence, expected):
    config, graph = make_graph(max_new_tokens=50, patch_size=10, switcher={"strategy": "fixed", "sequence": sequence})
    assert not config.anchor_on
    result = graph.invoke({"query": "Tell me a story."})
    assert [d["chosen"] for d in result["decisions"]] == expected
    assert [s["candidate"] for s in result["segments"]] == expected
    assert all(d["how"] == "switcher" and d["probabilities"] is None for d in result["decisions"])


def test_fixed_strategy_with_anchor(engine):
    config = load_config(
        toy_config_dict(
            aligned_model="toy:F", anchor=True, max_new_tokens=50, patch_size=10,
            switcher={"strategy": "fixed", "sequence": "P F"},
        )
    )
    result = build_graph(config, engine=engine).invoke({"query": "Tell me a story."})
    hows = [(d["how"], d["chosen"]) for d in result["decisions"]]
    assert len(hows) == 5
    assert hows[0] == ("anchor", "A") and hows[-1] == ("anchor", "A")
    assert all(h == "switcher" and c in {"P", "F"} for h, c in hows[1:-1])


@pytest.mark.parametrize("candidate", ["F", 1, "1", "P"])
def test_single_strategy(make_graph, candidate):
    config, graph = make_graph(max_new_tokens=45, patch_size=10, switcher={"strategy": "single", "candidate": candidate})
    assert not config.anchor_on
    name = config.names[config.index_of(candidate)]
    result = graph.invoke({"query": "Tell me a story."})
    assert {d["chosen"] for d in result["decisions"]} == {name}
    assert {s["candidate"] for s in result["segments"]} == {name}
    assert len(result["segments"]) == 5 and result["tokens_used"] == 45
    assert all(d["how"] == "switcher" and d["strategy"] == "single" for d in result["decisions"])


@pytest.mark.parametrize(
    "switcher",
    [
        {"strategy": "fixed"},
        {"strategy": "fixed", "sequence": "P X"},
        {"strategy": "single"},
        {"strategy": "single", "candidate": 3},
        {"strategy": "guess"},
    ],
)
def test_strategy_config_errors(switcher):
    with pytest.raises(ConfigError):
        load_config(toy_config_dict(switcher=switcher))


def test_learned_strategy_allows_at_most_ten_candidates():
    many = [{"name": f"c{i}", "model": "toy:P", "device": "cpu"} for i in range(11)]
    with pytest.raises(ConfigError):
        load_config(toy_config_dict(candidates=many))
    load_config(toy_config_dict(candidates=many, switcher={"strategy": "random"}))
