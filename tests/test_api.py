"""`switchgen api`: the switch graph behind OpenAI's chat completions and completions APIs, driven by the official clients.

The `openai` SDK, LangChain's ChatOpenAI and plain HTTP (httpx) talk to real servers on 127.0.0.1
whose answers are real forward passes on the toy checkpoints; each semantic the API claims is
checked against the graph itself run directly (graph/variants.py builds the same variant).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import toy_config_dict

QUERIES = [f"Question {i}: why is the sky blue{' and the sea green' * i}?" for i in range(4)]
HI = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def api_engine(toy_kit):
    """A fresh engine, so that its batch counter tells this module's batching."""
    from switchgen.servers.engine.local import LocalEngine

    return LocalEngine()


def start_api(engine, config_dict: dict, **settings):
    from switchgen.api import BackgroundAPI, create_api_app
    from switchgen.graph import load_config
    from switchgen.servers.serve.settings import ServiceSettings

    config = load_config(config_dict)
    server = BackgroundAPI(create_api_app(config, "toy", engine=engine, settings=ServiceSettings(**settings))).start()
    server.config = config
    return server


@pytest.fixture(scope="module")
def api(api_engine):
    """Greedy, seeded, and toy F as the aligned candidate (it never ends early: the budget is written out)."""
    from switchgen.graph import build_graph

    server = start_api(api_engine, toy_config_dict(aligned_model="toy:F", sampling={"greedy": True}, seed=3),
                       max_concurrent_requests=8)
    server.graph = build_graph(server.config, engine=api_engine)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sampling_api(api_engine):
    """The configuration samples (temperature 0.7, top_p 0.9) and has no seed: each answer is a fresh draw."""
    server = start_api(api_engine, toy_config_dict(aligned_model="toy:F", seed=None), max_concurrent_requests=4)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


def direct(server, engine, stop=(), sampling=None, **inputs_and_context):
    """The graph variant the API claims to run, run directly: (output, finish of the last segment)."""
    from switchgen.graph.variants import GraphVariants

    context = inputs_and_context.pop("context", None)
    graph = GraphVariants(server.config, engine).get(stop, sampling)
    result = graph.invoke(inputs_and_context or {"messages": HI}, context=context)
    return result["output"]


def test_openai_client_gets_a_switch_generated_answer_with_its_trace(api, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["toy"]
    reply = client.chat.completions.create(model="toy", messages=HI)
    text = reply.choices[0].message.content
    trace = reply.model_extra["switchgen"]
    assert text == "".join(s["text"] for s in trace["segments"])
    assert reply.choices[0].model_extra["switchgen"] == trace  # each choice carries its trace
    assert len(trace["decisions"]) == len(trace["segments"]) >= 2
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == trace["tokens_used"] == 80
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # the same question through the graph itself: the same answer (greedy, seeded)
    assert api.graph.invoke({"messages": [("user", "Why is the sky blue?")]})["output"] == text


def test_openai_client_streams_chunks_tagged_with_their_author(client):
    stream = client.chat.completions.create(
        model="toy", messages=HI, stream=True,
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


# -- OpenAI's semantics: stop, n, temperature, top_p, /v1/completions ----------------------------


def test_stop_strings_end_the_answer_as_the_graph_applies_them(api, api_engine, client):
    full = client.chat.completions.create(model="toy", messages=HI).choices[0].message.content
    stop = full[25:27]  # two characters the greedy answer is known to contain
    cut = full[: full.index(stop)]
    reply = client.chat.completions.create(model="toy", messages=HI, stop=[stop])
    assert reply.choices[0].message.content == cut
    assert reply.choices[0].finish_reason == "stop"
    # every candidate stops at it (its patch ends there), and the joined answer is cut at it
    assert direct(api, api_engine, stop=(stop,)).startswith(cut)
    assert reply.usage.completion_tokens < 80
    stream = client.chat.completions.create(model="toy", messages=HI, stop=stop, stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut  # nothing past it ever shown
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_runs_the_graph_n_times(sampling_api):
    client = openai.OpenAI(base_url=f"{sampling_api.url}/v1", api_key="unused", max_retries=0)
    ask = {"model": "toy", "messages": HI, "max_tokens": 30, "seed": 7}
    one = client.chat.completions.create(**ask)
    three = client.chat.completions.create(**ask, n=3)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert texts[0] == one.choices[0].message.content  # the first choice is the request's seed
    assert len(set(texts)) == 3  # the others are seeded apart: three draws
    assert three.usage.completion_tokens == sum(c.model_extra["switchgen"]["tokens_used"] for c in three.choices)
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    stream = client.chat.completions.create(**ask, n=3, stream=True)
    joined = {i: "" for i in range(3)}
    for chunk in stream:
        for choice in chunk.choices:
            joined[choice.index] += choice.delta.content or ""
    assert [joined[i] for i in range(3)] == texts


def test_temperature_zero_is_greedy_with_a_seeded_switcher(sampling_api, api_engine):
    client = openai.OpenAI(base_url=f"{sampling_api.url}/v1", api_key="unused", max_retries=0)

    def ask(**kw) -> tuple[str, list]:
        reply = client.chat.completions.create(model="toy", messages=HI, max_tokens=40, **kw)
        return reply.choices[0].message.content, reply.model_extra["switchgen"]["decisions"]

    first, again = ask(temperature=0), ask(temperature=0)
    assert first == again  # decisions included: the switcher draws with a seed
    assert first[0] == direct(sampling_api, api_engine, sampling={"greedy": True},
                              context={"seed": 0, "max_new_tokens": 40, "patch_size": 20})
    assert ask()[0] != ask()[0]  # the configuration's sampling, unseeded: two draws
    # top_p is the candidates' nucleus: a tiny one keeps only the likeliest token, i.e. greedy
    assert ask(temperature=1.0, top_p=1e-9, seed=5)[0] == ask(temperature=0, seed=5)[0]
    hot = ask(temperature=1.5, seed=5)[0]
    assert hot == direct(sampling_api, api_engine, sampling={"greedy": False, "temperature": 1.5},
                         context={"seed": 5, "max_new_tokens": 40, "patch_size": 20})
    assert hot != ask(seed=5)[0]  # not the configuration's temperature 0.7


def test_completions_route(api, api_engine):
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)
    prompt = "The sky is blue because"
    reply = client.completions.create(model="toy", prompt=prompt, max_tokens=30)
    (choice,) = reply.choices
    assert reply.object == "text_completion" and choice.finish_reason == "length"
    assert choice.text == direct(api, api_engine, query=prompt, context={"max_new_tokens": 30, "patch_size": 20})
    assert reply.usage.completion_tokens == 30 and choice.model_extra["switchgen"]["segments"]
    assert client.completions.create(model="toy", prompt=prompt).usage.completion_tokens == 16  # OpenAI's default
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="toy", prompt=prompt, max_tokens=30, stream=True) if c.choices)
    assert streamed == choice.text


# -- requests refused, not ignored --------------------------------------------------------------

USER = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "gpt-4", "messages": [USER]}, 404, "model"),
        ({"model": "toy", "messages": []}, 400, "messages"),
        ({"model": "toy", "messages": [{"role": "assistant", "content": "Hi"}]}, 400, None),
        ({"model": "toy", "messages": [USER], "n": 200}, 400, "n"),
        ({"model": "toy", "messages": [USER], "n": 9}, 400, "n"),  # more runs than the server's 8 slots
        ({"model": "toy", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "toy", "messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"model": "toy", "messages": [USER], "switchgen": {"candidate": "Z"}}, 400, None),
        ({"model": "toy", "messages": [USER], "switchgen": {"review": True}}, 400, "switchgen.review"),
        ({"model": "toy", "messages": [USER], "max_tokens": 5000}, 400, "max_tokens"),  # the toy context is 4096
        ({"model": "toy", "messages": [USER], "max_completion_tokens": 10**12}, 400, "max_completion_tokens"),
        ({"model": "toy", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "messages.0.content"),
        ({"model": "toy", "messages": [{"role": "assistant", "content": "x", "tool_calls": "nope"}, USER]}, 400,
         "messages.0.tool_calls"),
        *[({"model": "toy", "messages": [USER], field: value}, 400, field) for field, value in [
            ("logit_bias", {"1": 5}), ("top_k", 5), ("top_logprobs", 2), ("logprobs", True), ("presence_penalty", 0.5),
            ("frequency_penalty", 0.5), ("repetition_penalty", 1.2), ("min_p", 0.1), ("best_of", 2),
        ]],
    ],
)
def test_bad_requests_get_openai_errors(api, body, status, param):
    t0 = time.perf_counter()
    response = httpx.post(f"{api.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and "\n" not in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param is None or param.split(".")[-1] in error["message"]
    assert time.perf_counter() - t0 < 2  # refused before any generation


def test_huge_budgets_are_clean_400s(api):
    for raw in ("1e12", str(10**4000)):
        body = json.dumps({"model": "toy", "messages": [USER], "max_tokens": 0}).replace('"max_tokens": 0', f'"max_tokens": {raw}')
        r = httpx.post(f"{api.url}/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400 and "context of 4096 tokens" in r.json()["error"]["message"]
        assert len(r.json()["error"]["message"]) < 200


def test_neutral_sampling_values_and_a_sequence_string_are_accepted(client):
    reply = client.chat.completions.create(
        model="toy", messages=[USER], max_tokens=12, logprobs=False, presence_penalty=0, frequency_penalty=0.0,
        logit_bias={}, extra_body={"switchgen": {"strategy": "fixed", "sequence": "A P A", "patch_size": 4}},
    )
    assert [s["candidate"] for s in reply.model_extra["switchgen"]["segments"]] == ["A", "P", "A"]


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[USER])
    with pytest.raises(openai.BadRequestError, match="logit_bias is not supported"):
        client.chat.completions.create(model="toy", messages=[USER], logit_bias={"5": 1})


def test_other_routes(api):
    health = httpx.get(f"{api.url}/health").json()
    assert health["status"] == "ok" and health["running"] == 0
    missing = httpx.get(f"{api.url}/v1/embeddings")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{api.url}/v1/chat/completions").status_code == 405
    assert httpx.post(f"{api.url}/v1/chat/completions", content=b"{").json()["error"]["message"].startswith("the body")


# -- operations: metrics, request ids, the access log, admission --------------------------------


def metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_tokens_per_candidate_and_switcher_calls(api, client):
    before = {name: metric(api.url, "switchgen_api_candidate_tokens_total", candidate=name) for name in "PFA"}
    calls = metric(api.url, "switchgen_api_switcher_calls_total")
    ok = metric(api.url, "switchgen_api_requests_total", route="/v1/chat/completions", status="200")
    reply = client.chat.completions.create(model="toy", messages=HI, max_tokens=60)
    trace = reply.model_extra["switchgen"]
    for name in "PFA":
        spent = trace["usage_by_candidate"].get(name, {}).get("output_tokens", 0)
        assert metric(api.url, "switchgen_api_candidate_tokens_total", candidate=name) - before[name] == spent
    asked = sum(1 for d in trace["decisions"] if d["how"] != "anchor")
    assert asked >= 1 and metric(api.url, "switchgen_api_switcher_calls_total") - calls == asked
    assert metric(api.url, "switchgen_api_requests_total", route="/v1/chat/completions", status="200") == ok + 1
    assert metric(api.url, "switchgen_api_request_duration_seconds_count", route="/v1/chat/completions") >= 1
    refused = metric(api.url, "switchgen_api_requests_total", route="/v1/chat/completions", status="403")
    assert httpx.post(f"{api.url}/v1/chat/completions", json={}, headers={"Host": "attacker.example"}).status_code == 403
    assert metric(api.url, "switchgen_api_requests_total", route="/v1/chat/completions", status="403") == refused + 1
    text = httpx.get(f"{api.url}/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert "switchgen_api_queue_depth 0.0" in text.text and "switchgen_api_running_requests 0.0" in text.text


def test_request_ids_are_echoed_or_made_and_logged(api, caplog):
    caplog.set_level("INFO", logger="switchgen.http.access")
    given = httpx.get(f"{api.url}/v1/models", headers={"X-Request-Id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{api.url}/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    odd = httpx.get(f"{api.url}/v1/models", headers={"X-Request-Id": "x" * 500}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", odd)  # not a token we repeat: replaced
    refused = httpx.get(f"{api.url}/nope", headers={"X-Request-Id": "trace-43"})
    assert refused.headers["x-request-id"] == "trace-43"
    lines = [r.getMessage() for r in caplog.records if r.name == "switchgen.http.access"]
    assert any('"GET /v1/models" 200' in line and "id=trace-42" in line for line in lines)
    assert any('"GET /nope" 404' in line and "id=trace-43" in line for line in lines)


def test_admission_queue_429_and_503_with_retry_after(api_engine):
    """One slot, one place in the queue: a burst of five gets two answers and three 429s; a request that
    waits longer than --queue-timeout gets 503. Both say when to retry."""
    server = start_api(api_engine, toy_config_dict(sampling={"greedy": True, "ignore_eos": True}, seed=1),
                       max_concurrent_requests=1, max_queued_requests=1, queue_timeout=0.5, access_log=False)
    body = {"model": "toy", "messages": HI, "max_tokens": 40}
    try:
        with ThreadPoolExecutor(max_workers=5) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60),
                                    range(5)))
        assert sorted(r.status_code for r in replies) == [200, 200, 429, 429, 429]
        busy = [r for r in replies if r.status_code == 429]
        assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded" for r in busy)
        long = {**body, "max_tokens": 4000, "stream": True}
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{server.url}/v1/chat/completions", json=long) as s:
            lines = s.iter_lines()  # held: a dropped iterator closes the stream
            next(line for line in lines if line.startswith("data:"))  # the slot is held
            waited = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert waited.status_code == 503 and waited.headers["retry-after"] == "1"
        assert waited.json()["error"]["code"] == "queue_timeout"
    finally:
        server.stop()


def test_the_limit_counts_streams_when_they_are_admitted(api_engine):
    """--max-concurrent-requests 2, no queue: of four streams opened at once, two run and two get 429."""
    server = start_api(api_engine, toy_config_dict(sampling={"ignore_eos": True}), max_concurrent_requests=2,
                       max_queued_requests=0, access_log=False)
    body = {"model": "toy", "messages": HI, "max_tokens": 4000, "stream": True}
    statuses: list[int] = []
    opened = threading.Barrier(4)

    def open_stream() -> None:
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as s:
            statuses.append(s.status_code)
            opened.wait(30)  # all four answered before any stream is closed

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: open_stream(), range(4)))
        assert sorted(statuses) == [200, 200, 429, 429]
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{server.url}/health").json()["running"] == 0  # closed streams give their slots back
    finally:
        server.stop()


def test_a_run_past_the_request_timeout_is_stopped(api_engine):
    server = start_api(api_engine, toy_config_dict(sampling={"ignore_eos": True}), request_timeout=0.5,
                       access_log=False)
    body = {"model": "toy", "messages": HI, "max_tokens": 3000}
    try:
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert time.perf_counter() - t0 < 3  # 3000 tokens take several seconds
        events = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60).text
        assert '"code": "timeout"' in events and "[DONE]" not in events
        assert httpx.get(f"{server.url}/health").json()["running"] == 0
    finally:
        server.stop()


def test_cli_serves_a_preset(toy_kit, tmp_path):
    """`switchgen api --preset toy --port 0 --served-model-name sg` (key from $SWITCHGEN_API_KEY) starts,
    answers chat and completions, logs each request with its id, and stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchgen.cli", "api", "--preset", "toy", "--port", "0", "--max-new-tokens", "20",
         "--patch-size", "10", "--served-model-name", "sg"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "SWITCHGEN_API_KEY": "k3y"},
    )
    try:
        first = proc.stdout.readline()
        assert "switchgen api: model 'sg' on http://127.0.0.1:" in first, first + proc.stderr.read()
        assert "; API key required" in first  # the key came from the environment: say that one is needed
        base = first.split(" on ")[1].split()[0]
        assert proc.stdout.readline().strip() == "ready"
        body = {"model": "sg", "messages": [USER]}
        refused = httpx.post(f"{base}/chat/completions", json=body, timeout=60)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        key = {"Authorization": "Bearer k3y", "X-Request-Id": "cli-1"}
        reply = httpx.post(f"{base}/chat/completions", json=body, headers=key, timeout=60).json()
        assert reply["usage"]["completion_tokens"] <= 20 and reply["switchgen"]["segments"]
        assert json.dumps(reply)
        done = httpx.post(f"{base}/completions", json={"model": "sg", "prompt": "Hi"}, headers=key, timeout=60)
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] <= 16
        assert [m["id"] for m in httpx.get(f"{base}/models", headers=key).json()["data"]] == ["sg"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    err = proc.stderr.read()
    assert '"POST /v1/chat/completions" 401' in err and '"POST /v1/chat/completions" 200' in err and "id=cli-1" in err
    assert "Traceback" not in err
