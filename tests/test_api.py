"""`switchgen api`: the switch graph behind OpenAI's chat completions API, driven by the official clients.

The `openai` SDK and LangChain's ChatOpenAI talk to a real server on 127.0.0.1 whose answers are
real forward passes on the toy checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import toy_config_dict

QUERIES = [f"Question {i}: why is the sky blue{' and the sea green' * i}?" for i in range(4)]


@pytest.fixture(scope="module")
def api_engine(toy_kit):
    """A fresh engine, so that its batch counter tells this module's batching."""
    from switchgen.servers.engine.local import LocalEngine

    return LocalEngine()


@pytest.fixture(scope="module")
def api(api_engine):
    from switchgen.api import BackgroundAPI, create_api_app
    from switchgen.graph import build_graph, load_config

    config = load_config(toy_config_dict(aligned_model="toy:F", sampling={"greedy": True}, seed=3))
    graph = build_graph(config, engine=api_engine)
    with BackgroundAPI(create_api_app(graph, "toy", max_concurrent_requests=8)) as server:
        server.graph = graph
        yield server


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_a_switch_generated_answer_with_its_trace(api, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["toy"]
    reply = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "Why is the sky blue?"}])
    text = reply.choices[0].message.content
    trace = reply.model_extra["switchgen"]
    assert text == "".join(s["text"] for s in trace["segments"])
    assert len(trace["decisions"]) == len(trace["segments"]) >= 2  # toy F never ends: the budget is written out
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == trace["tokens_used"] == 80
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # the same question through the graph itself: the same answer (greedy, seeded)
    direct = api.graph.invoke({"messages": [("user", "Why is the sky blue?")]})
    assert direct["output"] == text


def test_openai_client_streams_chunks_tagged_with_their_author(client):
    stream = client.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": "Why is the sky blue?"}], stream=True,
        stream_options={"include_usage": True}, max_tokens=30, extra_body={"switchgen": {"patch_size": 10}},
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    authored = [c.model_extra["switchgen"] for c in chunks if c.choices and c.choices[0].delta.content]
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    trace = last.model_extra["switchgen"]
    assert "".join(texts) == "".join(s["text"] for s in trace["segments"])
    assert [s["tokens"] for s in trace["segments"]] == [10, 10, 10]
    # each patch's chunks name its author, and join to its segment
    for segment_index, segment in enumerate(trace["segments"]):
        pieces = [c for c, a in zip(texts[1:], authored, strict=False) if a["patch"] == segment_index]
        assert {a["candidate"] for a in authored if a["patch"] == segment_index} == {segment["candidate"]}
        assert "".join(pieces) == segment["text"]
    assert chunks[-1].usage.completion_tokens == 30


def test_chat_openai_invokes_and_streams(api):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="toy", base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    answer = llm.invoke("Why is the sky blue?")
    assert answer.content and answer.usage_metadata["output_tokens"] == 80
    chunks = list(llm.stream([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Why?")]))
    joined = chunks[0]
    for c in chunks[1:]:
        joined += c
    assert len([c for c in chunks if c.content]) >= 2
    assert joined.content
    assert joined.response_metadata["finish_reason"] == "length"


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(api, api_engine, client):
    def ask(q: str) -> str:
        reply = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": q}], max_tokens=40)
        return reply.choices[0].message.content

    one_by_one = [ask(q) for q in QUERIES]
    api_engine.clear_caches()
    with ThreadPoolExecutor(max_workers=len(QUERIES)) as pool:
        together = list(pool.map(ask, QUERIES))
    assert together == one_by_one
    backend = api_engine.backend("toy:P", device="cpu")
    assert backend.worker.max_batch_seen > 1, "the concurrent requests were never decoded in one batch"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, 404, "model"),
        ({"model": "toy", "messages": []}, 400, "messages"),
        ({"model": "toy", "messages": [{"role": "assistant", "content": "Hi"}]}, 400, None),
        ({"model": "toy", "messages": [{"role": "user", "content": "Hi"}], "n": 2}, 400, "n"),
        ({"model": "toy", "messages": [{"role": "user", "content": "Hi"}], "stop": ["x"]}, 400, "stop"),
        ({"model": "toy", "messages": [{"role": "user", "content": "Hi"}],
          "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"model": "toy", "messages": [{"role": "user", "content": "Hi"}], "switchgen": {"candidate": "Z"}}, 400, None),
        ({"model": "toy", "messages": [{"role": "user", "content": "Hi"}], "switchgen": {"review": True}}, 400,
         "switchgen.review"),
    ],
)
def test_bad_requests_get_openai_errors(api, body, status, param):
    response = httpx.post(f"{api.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and "\n" not in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.BadRequestError, match="stop strings"):
        client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "Hi"}], stop=["."])


def test_other_routes(api):
    assert httpx.get(f"{api.url}/health").json()["status"] == "ok"
    missing = httpx.get(f"{api.url}/v1/embeddings")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{api.url}/v1/chat/completions").status_code == 405
    assert httpx.post(f"{api.url}/v1/chat/completions", content=b"{").json()["error"]["message"].startswith("the body")


def test_cli_serves_a_preset(toy_kit, tmp_path):
    """`switchgen api --preset toy --port 0` (key from $SWITCHGEN_API_KEY) starts, answers, and stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchgen.cli", "api", "--preset", "toy", "--port", "0", "--max-new-tokens", "20", "--patch-size", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "SWITCHGEN_API_KEY": "k3y"},
    )
    try:
        first = proc.stdout.readline()
        assert "switchgen api: model 'toy' on http://127.0.0.1:" in first, first + proc.stderr.read()
        base = first.split(" on ")[1].split()[0]
        assert proc.stdout.readline().strip() == "ready"
        body = {"model": "toy", "messages": [{"role": "user", "content": "Hi"}]}
        refused = httpx.post(f"{base}/chat/completions", json=body, timeout=60)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        reply = httpx.post(f"{base}/chat/completions", json=body, headers={"Authorization": "Bearer k3y"},
                           timeout=60).json()
        assert reply["usage"]["completion_tokens"] <= 20 and reply["switchgen"]["segments"]
        assert json.dumps(reply)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
