"""Debugging switching decisions: the runtime context, review mode (interrupts), and forking a thread."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from switchgen.core.errors import InputError
from switchgen.graph import build_graph
from switchgen.nodes.context import Context


@pytest.fixture
def graph(toy_config, engine):
    # Anchor off: every decision is the switcher's, with a distribution to show.
    config = toy_config(aligned_model="toy:F", anchor=False, max_new_tokens=30, patch_size=10, seed=2)
    return build_graph(config, engine=engine, checkpointer=InMemorySaver())


def thread(name: str) -> dict:
    return {"configurable": {"thread_id": name}}


def pending(graph, config: dict) -> dict:
    state = graph.get_state(config)
    assert state.next == ("switcher",) and len(state.interrupts) == 1
    return state.interrupts[0].value


# -- runtime context ------------------------------------------------------------------------


def test_context_overrides_the_configuration_per_run(graph):
    cfg = thread("ctx")
    result = graph.invoke({"query": "Hi."}, cfg, context={"patch_size": 4, "max_new_tokens": 12})
    assert [s["tokens"] for s in result["segments"]] == [4, 4, 4] and result["max_new_tokens"] == 12
    result = graph.invoke({"query": "Hi."}, cfg, context=Context(strategy="fixed", sequence=["P", "A"]))
    assert [d["chosen"] for d in result["decisions"]] == ["P", "A", "P"]
    result = graph.invoke({"query": "Hi."}, cfg, context={"strategy": "single", "candidate": "F"})
    assert {d["chosen"] for d in result["decisions"]} == {"F"}
    # top_p close to 0 keeps only the most likely candidate: the switcher's argmax, every time.
    result = graph.invoke({"query": "Hi."}, cfg, context={"top_p": 1e-6})
    for d in result["decisions"]:
        assert d["chosen"] == max(d["probabilities"], key=d["probabilities"].get)
    # Seeds: the same seed repeats the run, another seed does not (fresh threads: no history).
    runs = [graph.invoke({"query": "Hi."}, thread(f"seed{i}"), context={"seed": s})["output"]
            for i, s in enumerate((11, 11, 12))]
    assert runs[0] == runs[1] != runs[2]
    # No context: the configuration as built.
    assert graph.invoke({"query": "Hi."}, cfg)["max_new_tokens"] == 30


def test_context_schema_is_published_with_descriptions(graph):
    schema = graph.get_context_jsonschema()
    assert set(schema["properties"]) == {
        "patch_size", "max_new_tokens", "top_p", "strategy", "candidate", "sequence", "seed", "review",
    }
    assert "Tokens per patch" in schema["properties"]["patch_size"]["description"]


def test_learned_strategy_needs_a_switcher(toy_config, engine):
    graph = build_graph(toy_config(switcher={"strategy": "random"}), engine=engine)
    with pytest.raises(InputError, match="needs a switcher model"):
        graph.invoke({"query": "Hi."}, context={"strategy": "learned"})


# -- review mode ----------------------------------------------------------------------------


def test_review_pauses_with_the_distribution_and_takes_the_reviewers_choice(graph):
    cfg = thread("review")
    result = graph.invoke({"query": "Tell me a short story."}, cfg, context={"review": True})
    assert "__interrupt__" in result and result.get("segments") == []
    shown = pending(graph, cfg)
    assert shown["kind"] == "switchgen.review" and shown["step"] == 0 and shown["how"] == "switcher"
    assert set(shown["probabilities"]) == {"P", "F", "A"} and sum(shown["probabilities"].values()) == pytest.approx(1)
    assert shown["candidates"] == ["P", "F", "A"] and shown["trace"] == []
    other = next(n for n in ("P", "F", "A") if n != shown["proposed"])

    # A bad answer is refused: the run stays paused at the same place, with the reason.
    before = graph.get_state(cfg).values
    for bad in ("nobody", 7, "", {"name": "P"}):
        graph.invoke(Command(resume=bad), cfg)
        again = pending(graph, cfg)
        assert again["step"] == 0 and "is not a candidate" in again["error"]
        assert graph.get_state(cfg).values == before

    # The resumed run keeps the turn's settings (review on) without being given the context again.
    graph.invoke(Command(resume=other), cfg)
    second = pending(graph, cfg)
    assert second["step"] == 1 and second["trace"][0]["candidate"] == other and "error" not in second
    state = graph.get_state(cfg).values
    first = state["decisions"][0]
    assert (first["chosen"], first["how"], first["proposed"]) == (other, "review", shown["proposed"])
    assert first["probabilities"] == shown["probabilities"]
    assert state["segments"][0]["candidate"] == other

    # Accept the proposal by name, then by index and in the {"candidate": ...} form.
    graph.invoke(Command(resume=second["proposed"]), cfg)
    third = pending(graph, cfg)
    graph.invoke(Command(resume={"candidate": ["P", "F", "A"].index(third["proposed"])}), cfg)
    final = graph.get_state(cfg)
    assert final.next == () and final.values["done"] is True
    decisions = final.values["decisions"]
    assert [d["how"] for d in decisions] == ["review", "switcher", "switcher"]
    assert [d["chosen"] for d in decisions] == [other, second["proposed"], third["proposed"]]
    assert [s["candidate"] for s in final.values["segments"]] == [d["chosen"] for d in decisions]
    assert final.values["messages"][-1].response_metadata["decisions"] == decisions


def test_review_off_on_resume_accepts_the_proposal(graph):
    cfg = thread("review-off")
    graph.invoke({"query": "Hi."}, cfg, context={"review": True})
    proposed = pending(graph, cfg)["proposed"]
    graph.invoke(None, cfg, context={"review": False})  # continue without reviewing
    decisions = graph.get_state(cfg).values["decisions"]
    assert decisions[0]["chosen"] == proposed and decisions[0]["how"] == "switcher" and len(decisions) == 3


# -- forking from a past decision -----------------------------------------------------------


def test_fork_from_a_past_decision_with_another_author(graph):
    cfg = thread("fork")
    original = graph.invoke({"query": "Why is the ocean salty?"}, cfg)
    assert len(original["decisions"]) == 3
    # The checkpoint just before decision 1: the switcher is next and one decision is made.
    past = next(
        s for s in graph.get_state_history(cfg) if s.next == ("switcher",) and len(s.values.get("decisions", [])) == 1
    )
    other = next(n for n in ("P", "F", "A") if n != original["decisions"][1]["chosen"])
    fork_config = graph.update_state(past.config, {"forced": [other]})
    forked = graph.invoke(None, fork_config)
    assert forked["decisions"][0] == original["decisions"][0]
    assert forked["segments"][0] == original["segments"][0]
    assert (forked["decisions"][1]["chosen"], forked["decisions"][1]["how"]) == (other, "forced")
    assert forked["segments"][1]["candidate"] == other
    assert forked["messages"][-1].content == forked["output"] != original["output"]
    assert [m.type for m in forked["messages"]] == ["human", "ai"]  # the fork replaced the answer on its branch
    # The original branch is still in the history.
    assert any(s.values.get("output") == original["output"] for s in graph.get_state_history(cfg))
