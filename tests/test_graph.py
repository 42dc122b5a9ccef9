"""The Switch Generation graph end to end on the toy checkpoints."""

from __future__ import annotations

import math

import pytest
from conftest import chat_prompt, toy_config_dict
from transformers import AutoTokenizer

from switchgen.core.errors import InputError
from switchgen.graph import build_graph, load_config

QUERIES = [
    "What is 2 plus 3?",
    "Tell me a short story.",
    "Why is the ocean salty?",
    "Explain to a ten-year-old why the sky is blue.",
]


def check_run(config, result, given: list[dict] | None = None, given_tokens: int = 0) -> None:
    """Invariants every finished run must satisfy, anchor rule included."""
    given = given or []
    budget, patch = config.max_new_tokens, config.patch_size
    segments, decisions = result["segments"], result["decisions"]
    generated = segments[len(given):]
    assert [(s["candidate"], s["text"]) for s in segments[: len(given)]] == [(g["candidate"], g["text"]) for g in given]
    assert result["done"] is True
    assert result["max_new_tokens"] == budget
    assert result["output"] == "".join(s["text"] for s in segments)
    assert result["tokens_used"] == given_tokens + sum(s["tokens"] for s in generated)
    assert result["tokens_used"] <= budget
    assert len(decisions) == len(generated)
    used = given_tokens
    for k, (d, s) in enumerate(zip(decisions, generated, strict=False)):
        step = len(given) + k
        assert d["step"] == step
        assert (s["candidate"], s["index"]) == (d["chosen"], d["index"])
        assert d["chosen"] == config.names[d["index"]]
        extra = 3 if config.sampling.finish_characters else 0  # a patch may finish a split character
        assert 1 <= s["tokens"] <= min(patch + extra, budget - used)
        remaining = budget - used
        if d["how"] != "forced":
            anchor_due = config.anchor_on and (step == 0 or remaining <= patch)
            assert (d["how"] == "anchor") == anchor_due, (k, d, remaining)
            if anchor_due:
                assert d["index"] == config.aligned_index
        used += s["tokens"]
        last = k == len(generated) - 1
        if not last:
            assert s["finish_reason"] == "length"
        elif used >= budget:
            assert s["finish_reason"] in ("budget", "eos", "stop")
        else:
            assert s["finish_reason"] in ("eos", "stop")


# -- basics ---------------------------------------------------------------------------------


def test_toy_preset_default_engine_returns_text_and_decisions(toy_kit):
    config = load_config("toy", seed=1)
    result = build_graph(config).invoke({"query": "Tell me a short story."})
    assert isinstance(result["output"], str) and result["output"]
    assert result["decisions"] and result["segments"]
    assert result["query"] == "Tell me a short story."
    check_run(config, result)


@pytest.mark.parametrize("query", QUERIES)
def test_toy_preset_runs(engine, query):
    config = load_config("toy", seed=2, max_new_tokens=100, patch_size=20)
    result = build_graph(config, engine=engine).invoke({"query": query})
    check_run(config, result)
    assert result["decisions"][0]["how"] == "anchor"


def test_node_names_are_candidates_and_switcher(engine, toy_config):
    candidates = [
        {"name": "pre", "role": "pretrained", "model": "toy:P", "device": "cpu"},
        {"name": "sft.v2", "role": "finetuned", "model": "toy:F", "device": "cpu"},
        {"name": "dpo-1", "role": "aligned", "model": "toy:A", "device": "cpu"},
    ]
    graph = build_graph(toy_config(candidates=candidates), engine=engine)
    nodes = set(graph.get_graph().nodes)
    assert nodes - {"__start__", "__end__"} == {"pre", "sft.v2", "dpo-1", "switcher"}
    assert set(graph.nodes) - {"__start__"} == {"pre", "sft.v2", "dpo-1", "switcher"}
    result = graph.invoke({"query": "Hi there."})
    assert {s["candidate"] for s in result["segments"]} <= {"pre", "sft.v2", "dpo-1"}


# -- anchor rule ----------------------------------------------------------------------------


def test_anchor_on_by_default_for_learned_only():
    assert load_config("toy").anchor_on
    assert load_config(toy_config_dict()).anchor_on
    assert not load_config(toy_config_dict(switcher={"strategy": "random"})).anchor_on
    assert not load_config(toy_config_dict(anchor=False)).anchor_on
    assert load_config(toy_config_dict(anchor=True, switcher={"strategy": "random"})).anchor_on


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget, patch", [(60, 20), (65, 20), (47, 10)])
def test_anchor_writes_first_and_budget_patch(make_graph, seed, budget, patch):
    # The aligned candidate runs on toy:F here, which never emits EOS, so every run reaches the budget.
    config, graph = make_graph(aligned_model="toy:F", seed=seed, max_new_tokens=budget, patch_size=patch)
    result = graph.invoke({"query": QUERIES[seed % len(QUERIES)]})
    check_run(config, result)
    decisions = result["decisions"]
    assert result["tokens_used"] == budget
    assert (decisions[0]["how"], decisions[0]["chosen"]) == ("anchor", "A")
    assert (decisions[-1]["how"], decisions[-1]["chosen"]) == ("anchor", "A")
    assert all(d["how"] == "switcher" for d in decisions[1:-1])
    assert len(decisions) == math.ceil(budget / patch)


@pytest.mark.parametrize("seed", range(4))
def test_anchor_off_removes_anchor(make_graph, seed):
    config, graph = make_graph(aligned_model="toy:F", anchor=False, seed=seed, max_new_tokens=60, patch_size=20)
    result = graph.invoke({"query": QUERIES[seed]})
    check_run(config, result)
    assert [d["how"] for d in result["decisions"]] == ["switcher"] * 3
    assert all(d["probabilities"] is not None for d in result["decisions"])


def test_anchor_off_lets_the_switcher_pick_someone_else_first(make_graph):
    firsts = set()
    for seed in range(10):
        _, graph = make_graph(anchor=False, seed=seed, max_new_tokens=40, patch_size=20)
        firsts.add(graph.invoke({"query": "Tell me a short story."})["decisions"][0]["chosen"])
    assert firsts - {"A"}


# -- EOS ------------------------------------------------------------------------------------


def find_eos_run(make_graph, forced: list, min_segments: int):
    for seed in range(40):
        for query in QUERIES:
            config, graph = make_graph(seed=seed, max_new_tokens=150, patch_size=20)
            result = graph.invoke({"query": query, "forced": forced})
            last = result["segments"][-1]
            if last["finish_reason"] == "eos" and len(result["segments"]) >= min_segments:
                return config, result
    pytest.fail(f"toy model A never emitted EOS (forced={forced})")


@pytest.mark.parametrize("forced, min_segments", [([], 1), (["P", "F", "A"], 3)], ids=["any-patch", "after-forced-patches"])
def test_eos_ends_the_response_early(make_graph, forced, min_segments):
    config, result = find_eos_run(make_graph, forced, min_segments)
    check_run(config, result)
    last = result["segments"][-1]
    assert result["done"] is True
    assert last["candidate"] == "A"
    assert result["tokens_used"] < config.max_new_tokens
    # Nothing follows the EOS patch: it is the last segment and no decision came after it.
    assert len(result["decisions"]) == len(result["segments"])
    assert result["decisions"][-1]["chosen"] == last["candidate"]
    assert "<|eos|>" not in result["output"]


def test_trace_ending_with_eos_is_not_continued(make_graph):
    config, graph = make_graph()
    given = [{"candidate": "A", "text": "Done.", "finish_reason": "eos"}]
    result = graph.invoke({"query": "Hi.", "segments": given})
    assert result["decisions"] == [] and result["done"] is True
    assert result["output"] == "Done."


# -- budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned_model", ["toy:A", "toy:F"])
@pytest.mark.parametrize("budget, patch", [(7, 5), (23, 10), (45, 20), (61, 25), (100, 30), (50, 50), (13, 1)])
def test_budget_is_never_exceeded(make_graph, aligned_model, budget, patch):
    for seed in range(2):
        config, graph = make_graph(aligned_model=aligned_model, seed=seed, max_new_tokens=budget, patch_size=patch)
        result = graph.invoke({"query": QUERIES[(seed + budget) % len(QUERIES)]})
        check_run(config, result)
        if aligned_model == "toy:F":  # nobody ends early: the budget is filled exactly
            full = math.ceil(budget / patch) - 1
            assert [s["tokens"] for s in result["segments"]] == [patch] * full + [budget - patch * full]
            assert result["tokens_used"] == budget
            assert result["segments"][-1]["finish_reason"] == "budget"


@pytest.mark.parametrize("strategy", [{"strategy": "random"}, {"strategy": "single", "candidate": "P"}])
def test_budget_other_strategies(make_graph, strategy):
    for seed, (budget, patch) in enumerate([(33, 10), (19, 4), (64, 16)]):
        config, graph = make_graph(seed=seed, max_new_tokens=budget, patch_size=patch, switcher=strategy)
        result = graph.invoke({"query": "Count to ten."})
        check_run(config, result)


def test_a_seed_gives_each_query_its_own_draws(make_graph):
    """One seeded run over many queries (switchgen generate --seed, a batch through the graph) is not
    one random draw repeated: the author sequence and the sampled text depend on the query too, and
    the same query under the same seed repeats exactly."""
    _, graph = make_graph(seed=5, max_new_tokens=40, patch_size=4, switcher={"strategy": "random"},
                          aligned_model="toy:F")  # toy:F never ends: every run has 10 patches
    runs = {q: graph.invoke({"query": q}) for q in QUERIES[:3]}
    authors = {q: [s["candidate"] for s in r["segments"]] for q, r in runs.items()}
    assert len({tuple(a) for a in authors.values()}) == 3, authors
    again = graph.invoke({"query": QUERIES[0]})
    assert [s["candidate"] for s in again["segments"]] == authors[QUERIES[0]]
    assert again["output"] == runs[QUERIES[0]]["output"]


# -- segments are the decoded patches -------------------------------------------------------


def chunks(ids: list[int], sizes: list[int]) -> list[list[int]]:
    out, at = [], 0
    for n in sizes:
        out.append(ids[at : at + n])
        at += n
    return out


@pytest.mark.parametrize("query, author", [(QUERIES[0], "F"), (QUERIES[1], "P"), (QUERIES[2], "F")])
def test_patches_of_one_author_are_its_uninterrupted_greedy_decoding(make_graph, hf_greedy, query, author):
    """Cut into patches, a greedy writer writes what it writes in one go (it continues its own tokens),
    and each segment's text is exactly its tokens decoded."""
    config, graph = make_graph(
        seed=7, max_new_tokens=50, patch_size=15, sampling={"greedy": True},
        switcher={"strategy": "single", "candidate": author},
    )
    result = graph.invoke({"query": query})
    check_run(config, result)
    sizes = [s["tokens"] for s in result["segments"]]
    assert sizes == [15, 15, 15, 5]
    model = {c.name: c.model for c in config.candidates}[author]
    whole = hf_greedy.ids(model, chat_prompt(query, ""), 50)
    assert len(whole) == 50
    assert [s["text"] for s in result["segments"]] == [hf_greedy.decode(c) for c in chunks(whole, sizes)]
    assert result["output"] == "".join(s["text"] for s in result["segments"])


@pytest.mark.parametrize("query", QUERIES[:3])
def test_first_patch_and_join(make_graph, hf_greedy, query):
    config, graph = make_graph(aligned_model="toy:F", seed=7, max_new_tokens=50, patch_size=15, sampling={"greedy": True})
    result = graph.invoke({"query": query})
    check_run(config, result)
    first = result["segments"][0]
    assert first["text"] == hf_greedy("toy:F", chat_prompt(query, ""), 15)[0]
    assert result["output"] == "".join(s["text"] for s in result["segments"])


# -- partial traces and forced decisions ----------------------------------------------------


def count(toy_kit, text: str) -> int:
    tok = AutoTokenizer.from_pretrained(toy_kit["P"])
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_partial_trace_and_forced_decisions(make_graph, toy_kit, hf_greedy):
    config, graph = make_graph(
        aligned_model="toy:F", seed=4, max_new_tokens=60, patch_size=15, sampling={"greedy": True}
    )
    given = [{"candidate": "P", "text": "The answer is"}, {"candidate": "F", "text": " 5, because 2 plus 3"}]
    given_tokens = count(toy_kit, given[0]["text"]) + count(toy_kit, given[1]["text"])
    assert given_tokens > 5
    query = "What is 2 plus 3?"
    result = graph.invoke({"query": query, "segments": given, "forced": ["F", 0, "2"]})
    check_run(config, result, given, given_tokens)
    decisions = result["decisions"]
    assert [(d["step"], d["how"], d["chosen"]) for d in decisions[:3]] == [
        (2, "forced", "F"),
        (3, "forced", "P"),
        (4, "forced", "A"),
    ]
    assert all(d["how"] != "forced" for d in decisions[3:])
    assert all(d["probabilities"] is None for d in decisions[:3])
    # The partial trace counts against the budget, and the budget is filled exactly.
    assert result["tokens_used"] == 60
    assert sum(s["tokens"] for s in result["segments"][2:]) == 60 - given_tokens
    assert result["output"].startswith("The answer is 5, because 2 plus 3")
    # The first generated patch continues the given trace.
    first = result["segments"][2]
    text, _, _ = hf_greedy("toy:F", chat_prompt(query, "The answer is 5, because 2 plus 3"), first["tokens"])
    assert first["text"] == text


def test_forced_overrides_the_anchor(make_graph):
    config, graph = make_graph(aligned_model="toy:F", max_new_tokens=40, patch_size=10)
    result = graph.invoke({"query": "Hi.", "forced": ["P", "P", "P", "P"]})
    check_run(config, result)
    assert [(d["how"], d["chosen"]) for d in result["decisions"]] == [("forced", "P")] * 4


def test_forced_list_longer_than_the_run(make_graph):
    config, graph = make_graph(aligned_model="toy:F", max_new_tokens=30, patch_size=10)
    result = graph.invoke({"query": "Hi.", "forced": ["F"] * 9})
    check_run(config, result)
    assert [d["chosen"] for d in result["decisions"]] == ["F"] * 3


def test_partial_trace_with_declared_tokens(make_graph):
    config, graph = make_graph(aligned_model="toy:F", max_new_tokens=60, patch_size=20)
    given = [{"candidate": "F", "text": "abc", "tokens": 30}]
    result = graph.invoke({"query": "Hi.", "segments": given})
    check_run(config, result, given, 30)
    assert result["tokens_used"] == 60
    assert [s["tokens"] for s in result["segments"][1:]] == [20, 10]


def test_partial_trace_at_the_budget_is_done(make_graph):
    config, graph = make_graph(max_new_tokens=20, patch_size=10)
    given = [{"candidate": "P", "text": "x", "tokens": 20}]
    result = graph.invoke({"query": "Hi.", "segments": given})
    assert result["decisions"] == [] and result["done"] is True
    assert result["tokens_used"] == 20 and result["output"] == "x"


# -- objective mode -------------------------------------------------------------------------


@pytest.mark.parametrize("cue", [None, " So the result is"])
def test_objective_cue_starts_the_final_patch(make_graph, hf_greedy, cue):
    extra = {"cue": cue} if cue else {}
    config, graph = make_graph(
        objective=True, seed=1, max_new_tokens=50, patch_size=20, sampling={"greedy": True},
        switcher={"strategy": "single", "candidate": "F"}, **extra,
    )
    cue = config.cue
    assert cue == (extra.get("cue") or " The final answer is")
    query = "What is 3 times 3?"
    result = graph.invoke({"query": query})
    check_run(config, result)
    segments = result["segments"]
    assert [s["tokens"] for s in segments] == [20, 20, 10]
    assert segments[-1]["text"].startswith(cue)
    assert not any(s["text"].startswith(cue) for s in segments[:-1])
    assert result["output"].count(cue) == 1
    # The final author saw its own tokens so far with the cue after them, and wrote on from there.
    prompt = hf_greedy.prompt_ids("toy:F", chat_prompt(query, ""))
    written = hf_greedy.ids("toy:F", prompt, 40)
    assert [s["text"] for s in segments[:-1]] == [hf_greedy.decode(c) for c in chunks(written, [20, 20])]
    cue_ids = hf_greedy.tokenizer("toy:F")(cue, add_special_tokens=False)["input_ids"]
    last = hf_greedy.ids("toy:F", prompt + written + cue_ids, 10)
    assert segments[-1]["text"] == cue + hf_greedy.decode(last)


@pytest.mark.parametrize("seed", range(3))
def test_objective_cue_with_the_learned_switcher(make_graph, seed):
    config, graph = make_graph(aligned_model="toy:F", objective=True, seed=seed, max_new_tokens=50, patch_size=20)
    result = graph.invoke({"query": "What is 3 times 3?"})
    check_run(config, result)
    segments = result["segments"]
    assert segments[-1]["text"].startswith(config.cue) and segments[-1]["candidate"] == "A"
    assert [s["text"].startswith(config.cue) for s in segments].count(True) == 1


def test_objective_off_has_no_cue(make_graph):
    config, graph = make_graph(aligned_model="toy:F", seed=1, max_new_tokens=50, patch_size=20)
    result = graph.invoke({"query": "What is 3 times 3?"})
    assert config.cue not in result["output"]


def test_objective_single_patch(make_graph):
    config, graph = make_graph(aligned_model="toy:F", objective=True, max_new_tokens=20, patch_size=20)
    result = graph.invoke({"query": "What is 3 times 3?"})
    assert len(result["segments"]) == 1
    assert result["segments"][0]["text"].startswith(config.cue)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        {"query": ""},
        {"query": "   \n"},
        {"query": "Hi", "segments": [{"candidate": "Z", "text": "x"}]},
        {"query": "Hi", "segments": [{"candidate": "P", "text": "x"}, {"candidate": "Q", "text": "y"}]},
        {"query": "Hi", "segments": [{"candidate": 7, "text": "x"}]},
        {"query": "Hi", "forced": ["Z"]},
        {"query": "Hi", "forced": [3]},
        {"query": "Hi", "forced": [-1]},
        {"query": "Hi", "forced": ["P", "nobody"]},
    ],
    ids=[
        "empty-query", "blank-query", "unknown-segment-author", "unknown-second-author", "index-out-of-range-author",
        "unknown-forced", "forced-out-of-range", "forced-negative", "unknown-second-forced",
    ],
)
def test_bad_input_raises_input_error(make_graph, state):
    _, graph = make_graph(aligned_model="toy:F", max_new_tokens=40, patch_size=10)
    with pytest.raises(InputError):
        graph.invoke(state)


# -- stop strings ---------------------------------------------------------------------------


def test_stop_string_ends_the_response(make_graph):
    single = {"strategy": "single", "candidate": "P"}
    query = "Tell me a short story."
    config, graph = make_graph(max_new_tokens=40, patch_size=10, sampling={"greedy": True}, switcher=single)
    plain = graph.invoke({"query": query})
    assert len(plain["segments"]) == 4
    third = plain["segments"][2]["text"]
    start = len(plain["segments"][0]["text"]) + len(plain["segments"][1]["text"])
    # A short ASCII piece from inside the third patch, not seen earlier in the output.
    for i in range(1, len(third) - 2):
        stop = third[i : i + 3]
        if stop.isascii() and stop.strip() and plain["output"].find(stop) == start + i:
            break
    else:
        pytest.fail("no usable stop string in this greedy output (the toy kit changed?)")
    candidates = [c.model_dump() for c in config.candidates]
    candidates[0]["stop"] = ["\u2603never", stop]
    config2, graph2 = make_graph(
        candidates=candidates, max_new_tokens=40, patch_size=10, sampling={"greedy": True}, switcher=single
    )
    result = graph2.invoke({"query": query})
    check_run(config2, result)
    assert len(result["segments"]) == 3
    assert result["segments"][-1]["finish_reason"] == "stop"
    assert result["output"] == plain["output"][: start + i]
    assert stop not in result["output"]
