"""Continuous batching in the in-process engine: same tokens as one by one, caches stay warm."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from switchgen.core.prompts import chat_prefix
from switchgen.servers.base import GenerationParams
from switchgen.servers.engine.kvcache import common_prefix

QUERIES = [f"Question {i}: why is the sky blue{' and the sea green' * i}?" for i in range(6)]


@pytest.fixture()
def fresh_engine(toy_kit):
    from switchgen.servers.engine.local import LocalEngine

    return LocalEngine()


def _concurrently(fn, items):
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


@pytest.mark.parametrize("params", [
    GenerationParams(max_new_tokens=40, greedy=True),
    GenerationParams(max_new_tokens=40, seed=11, temperature=0.9, top_p=0.8),
])
def test_batched_decoding_matches_one_by_one(fresh_engine, params):
    backend = fresh_engine.backend("toy:P", device="cpu")
    prompts = [chat_prefix(backend.tokenizer, q) for q in QUERIES]
    one_by_one = [backend.generate(p, params) for p in prompts]
    fresh_engine.clear_caches()
    together = _concurrently(lambda p: backend.generate(p, params), prompts)
    assert backend.worker.max_batch_seen > 1, "the concurrent requests were never decoded in one batch"
    assert [p.text for p in together] == [p.text for p in one_by_one]
    assert [p.tokens for p in together] == [p.tokens for p in one_by_one]


def test_sequences_of_different_lengths_and_budgets_batch_correctly(fresh_engine):
    backend = fresh_engine.backend("toy:F", device="cpu")
    prompts = [chat_prefix(backend.tokenizer, q) for q in QUERIES]
    budgets = [5, 40, 17, 1, 33, 25]
    jobs = [(p, GenerationParams(max_new_tokens=n, greedy=True)) for p, n in zip(prompts, budgets, strict=False)]
    one_by_one = [backend.generate(p, params) for p, params in jobs]
    fresh_engine.clear_caches()
    together = _concurrently(lambda job: backend.generate(*job), jobs)
    assert [p.tokens for p in together] == budgets
    assert [p.text for p in together] == [p.text for p in one_by_one]


def test_a_finished_sequence_leaves_the_batch_with_its_cache(fresh_engine):
    """After batched decoding, each sequence's next patch prefills only what it has not seen."""
    backend = fresh_engine.backend("toy:P", device="cpu")
    prompts = [chat_prefix(backend.tokenizer, q) for q in QUERIES[:4]]
    params = GenerationParams(max_new_tokens=30, greedy=True)
    first = _concurrently(lambda p: backend.generate(p, params), prompts)
    assert backend.worker.max_batch_seen > 1
    for prompt, patch in zip(prompts, first, strict=False):
        follow = prompt + patch.text + " and then"
        ids = backend.encode(follow)
        cached = max(common_prefix(entry.ids, ids) for entry in backend.pool._entries)
        assert cached >= len(backend.encode(prompt)) + patch.tokens - 1  # prompt + patch minus the unfed last token
        again = backend.generate(follow, params)
        assert again.prefilled == len(ids) - cached
        assert again.prefilled <= len(backend.tokenizer(" and then", add_special_tokens=False)["input_ids"]) + 1


def test_switcher_scores_are_batched_with_decoding_and_unchanged(fresh_engine):
    backend = fresh_engine.backend("toy:switcher", device="cpu")
    prompts = [chat_prefix(backend.tokenizer, q) + "The answer is model " for q in QUERIES]
    alone = [backend.choice_distribution(p, ["0", "1", "2"]).probs for p in prompts]
    fresh_engine.clear_caches()
    params = GenerationParams(max_new_tokens=30, greedy=True)
    mixed = _concurrently(
        lambda i: backend.choice_distribution(prompts[i], ["0", "1", "2"]).probs
        if i % 2 else (backend.generate(prompts[i], params), alone[i])[1],
        range(len(prompts)),
    )
    for i in range(1, len(prompts), 2):
        assert mixed[i] == pytest.approx(alone[i], abs=1e-5)


def test_graph_runs_concurrently_give_the_same_answers(toy_kit):
    from switchgen.graph import build_graph, load_config
    from switchgen.servers.engine.local import LocalEngine

    config = load_config("toy", seed=4, max_new_tokens=90, patch_size=30, sampling={"greedy": True})
    engine = LocalEngine()
    graph = build_graph(config, engine=engine)
    one_by_one = [graph.invoke({"query": q}) for q in QUERIES]
    engine.clear_caches()
    together = _concurrently(lambda q: graph.invoke({"query": q}), QUERIES)
    assert [r["output"] for r in together] == [r["output"] for r in one_by_one]
    # Scores read in one prefill pass with other queries' differ from scores read alone by float32
    # rounding (other matmul shapes), not more: the same choices, the same probabilities to 1e-6.
    for run, alone in zip(together, one_by_one, strict=True):
        assert len(run["decisions"]) == len(alone["decisions"])
        for got, want in zip(run["decisions"], alone["decisions"], strict=True):
            floats = ("probabilities", "digit_mass")
            assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in want.items() if k not in floats}
            assert got["probabilities"] == (want["probabilities"] and pytest.approx(want["probabilities"], rel=1e-5))
            assert got["digit_mass"] == (want["digit_mass"] and pytest.approx(want["digit_mass"], rel=1e-5))
