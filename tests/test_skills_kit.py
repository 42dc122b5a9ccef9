"""The skills kit through the graph: each model's skill shows, and skills-switch needs A, P, A."""

from __future__ import annotations

import json

import pytest

from switchgen.core.config import load_config
from switchgen.graph import build_graph


def _records(kit, task: str, n: int) -> list[dict]:
    lines = (kit["tasks"] / task / "test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").replace(":", " ").split())


@pytest.fixture(scope="module")
def graph(skills_kit, engine):
    return build_graph(load_config("skills", seed=0), engine=engine)


def test_the_kit_has_its_models_and_tasks(skills_kit):
    for name in ("P", "F", "A"):
        assert (skills_kit[name] / "config.json").is_file()
    for task in ("skills-recall", "skills-colour", "skills-abstain", "skills-switch"):
        assert (skills_kit["tasks"] / task / "train.jsonl").is_file()
        records = _records(skills_kit, task, 1000)
        assert len(records) == 80 and {"id", "query", "answer", "aliases"} <= set(records[0])


@pytest.mark.parametrize("who", ["P", "F", "A"])
def test_no_single_model_answers_skills_switch(graph, skills_kit, who):
    for record in _records(skills_kit, "skills-switch", 3):
        out = graph.invoke({"query": record["query"]}, context={"strategy": "single", "candidate": who})["output"]
        assert _normalise(out) != _normalise("Answer: " + record["answer"]), (who, out)


def test_a_then_p_then_a_answers_skills_switch(graph, skills_kit):
    for record in _records(skills_kit, "skills-switch", 3):
        result = graph.invoke({"query": record["query"]}, context={"strategy": "fixed", "sequence": ["A", "P", "A"]})
        assert _normalise(result["output"]) == _normalise("Answer: " + record["answer"]), result["output"]
        assert [s["candidate"] for s in result["segments"]] == ["A", "P", "A"]
        assert result["segments"][-1]["finish_reason"] == "eos"


def test_p_knows_what_a_does_not(graph, skills_kit):
    record = _records(skills_kit, "skills-recall", 1)[0]
    by = {who: graph.invoke({"query": record["query"]}, context={"strategy": "single", "candidate": who})["output"]
          for who in ("P", "A")}
    assert record["answer"].lower() in by["P"].lower()
    assert record["answer"].lower() not in by["A"].lower()
