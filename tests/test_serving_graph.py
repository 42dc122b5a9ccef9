"""The whole graph through servers: the same decisions and text as in process, and concurrency.

Servers are `switchgen serve` on the toy checkpoints (real forward passes; a TGI or vLLM
container cannot run here), on free loopback ports.
"""

from __future__ import annotations

import json

import pytest
from _serving import hub_online, served_dict, start_toy_servers  # noqa: F401 - fixture
from conftest import toy_config_dict

from switchgen.generate import run_file
from switchgen.graph import build_graph, load_config
from switchgen.servers.engine.local import LocalEngine

pytestmark = pytest.mark.usefixtures("hub_online")

QUERIES = [
    "Why is the sky blue?",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Name three rivers in Africa.",
]
# finish_characters off: a server decodes each patch as it wrote it, and the in-process runs these
# are compared with must end their patches at the same tokens.
GREEDY = {"sampling": {"greedy": True, "finish_characters": False}, "seed": 3, "max_new_tokens": 100, "patch_size": 20}


@pytest.fixture(scope="module")
def servers(engine):
    with start_toy_servers(engine) as group:
        yield group


def run(config_dict: dict, query: str, engine: LocalEngine | None = None) -> dict:
    return build_graph(load_config(config_dict), engine=engine or LocalEngine()).invoke({"query": query})


def same_run(got: dict, want: dict) -> None:
    assert got["output"] == want["output"]
    assert [(s["candidate"], s["text"], s["tokens"], s["finish_reason"]) for s in got["segments"]] == [
        (s["candidate"], s["text"], s["tokens"], s["finish_reason"]) for s in want["segments"]
    ]
    assert [(d["chosen"], d["how"]) for d in got["decisions"]] == [(d["chosen"], d["how"]) for d in want["decisions"]]
    for g, w in zip(got["decisions"], want["decisions"], strict=True):
        if w["probabilities"] is None:
            assert g["probabilities"] is None
        else:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-5)
            assert g["digit_mass"] == pytest.approx(w["digit_mass"], rel=1e-4)


@pytest.mark.parametrize("query", QUERIES)
def test_tgi_openai_and_in_process_agree(servers, query):
    local = run(toy_config_dict(**GREEDY), query)
    assert any(d["how"] == "switcher" for d in local["decisions"]), "the switcher must be asked for this to mean much"
    same_run(run(served_dict(servers.urls, "tgi", **GREEDY), query), local)
    same_run(run(served_dict(servers.urls, "openai", **GREEDY), query), local)


@pytest.mark.parametrize(("candidates", "switcher"), [("tgi", "local"), ("openai", "tgi"), ("tgi", "openai")])
def test_backends_mix(servers, candidates, switcher):
    query = QUERIES[0]
    config = served_dict(servers.urls, candidates, switcher=switcher, **GREEDY)
    engine = LocalEngine()
    got = run(config, query, engine)
    if switcher == "local":
        assert [m.location.endswith("switcher") for m in engine.loaded_models] == [True]  # only the switcher loads
    else:
        assert engine.loaded_models == []  # remote backends load tokenizers only
    same_run(got, run(toy_config_dict(**GREEDY), query))


def test_switcher_inherits_the_server_of_the_candidate_sharing_its_model(servers):
    """An untuned switcher on the aligned model asks A's server when it has no backend of its own."""
    config = served_dict(servers.urls, "tgi", switcher="local", **GREEDY)
    config["switcher"] = {"strategy": "learned", "model": "toy:A", "top_n_tokens": 1024}
    loaded = load_config(config)
    assert loaded.switcher.backend is None and loaded.switcher_server().url == servers.urls["A"]
    engine = LocalEngine()
    got = run(config, QUERIES[1], engine)
    assert engine.loaded_models == []
    assert any(d["how"] == "switcher" for d in got["decisions"])
    same_run(got, run(toy_config_dict(**GREEDY, switcher={"model": "toy:A"}), QUERIES[1]))


def test_sixteen_queries_at_concurrency_eight(servers, tmp_path):
    """All complete, written in input order, each as a sequential in-process run writes it."""
    inputs = [{"input": f"{QUERIES[i % 4]} (variant {i})", "id": i} for i in range(16)]
    served = load_config(served_dict(servers.urls, "tgi", **GREEDY))
    out = tmp_path / "served.jsonl"
    result = run_file(build_graph(served, engine=LocalEngine()), served, inputs, out, progress=False, concurrency=8)
    assert result == (0, 16, 0)
    local = load_config(toy_config_dict(**GREEDY))
    reference = tmp_path / "local.jsonl"
    run_file(build_graph(local, engine=LocalEngine()), local, inputs, reference, progress=False)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in reference.read_text().splitlines()]
    assert [r["id"] for r in got] == list(range(16))
    assert [r["output"] for r in got] == [r["output"] for r in want]
    assert [r["generation_log"]["segment_candidates"] for r in got] == [r["generation_log"]["segment_candidates"] for r in want]
