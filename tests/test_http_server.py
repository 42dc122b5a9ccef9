"""`switchgen serve`'s HTTP surface: TGI's OpenAPI spec, 422s, the OpenAI completions endpoint, concurrency.

Responses are real (the toy checkpoints' forward passes) and are validated against the schemas of
TGI's published OpenAPI spec (tests/data/tgi-openapi.json, TGI 3.3.6), $refs resolved.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from _serving import start_toy_servers
from conftest import chat_prompt
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
# TGI's published OpenAPI spec (TGI 3.3.6-dev0), vendored so conformance is checked on every clone.
SPEC_PATH = ROOT / "tests" / "data" / "tgi-openapi.json"


def as_json_schema(node: object) -> object:
    """OpenAPI 3.0's `nullable: true` as JSON Schema (type or null); the rest is already JSON Schema."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def validate(spec):
    """`validate(instance, "GenerateResponse")`: jsonschema validation against the spec's component."""
    from referencing.jsonschema import DRAFT202012

    resource = Resource(contents=as_json_schema(spec), specification=DRAFT202012)
    registry = Registry().with_resource("urn:tgi-openapi", resource)

    def check(instance: object, name: str) -> None:
        schema = {"$ref": f"urn:tgi-openapi#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)

    return check


@pytest.fixture(scope="module")
def servers(engine):
    with start_toy_servers(engine) as group:
        yield group


@pytest.fixture(scope="module")
def url(servers) -> str:
    return servers.urls["A"]


PROMPT = chat_prompt("Why is the sky blue?", "").removeprefix("<|bos|>")  # servers add BOS, as TGI does


def sse_events(body: str) -> list[dict]:
    return [json.loads(line.removeprefix("data:")) for line in body.splitlines() if line.startswith("data:") and "[DONE]" not in line]


def test_validator_rejects_what_the_spec_forbids(validate):
    """The schema check is live: a response missing a required field or with a bad enum fails."""
    with pytest.raises(jsonschema.ValidationError):
        validate({"details": None}, "GenerateResponse")
    bad = {"generated_text": "x", "details": {"finish_reason": "eos", "generated_tokens": 1, "prefill": [], "tokens": []}}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, "GenerateResponse")


def test_generate_conforms_and_matches_the_engine(url, validate, engine):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True, "top_n_tokens": 3}}
    response = httpx.post(url + "/generate", json=body)
    assert response.status_code == 200
    data = response.json()
    validate(data, "GenerateResponse")
    details = data["details"]
    assert details["generated_tokens"] == len(details["tokens"]) == len(details["top_tokens"])
    assert all(len(top) == 3 for top in details["top_tokens"])
    for token, top in zip(details["tokens"], details["top_tokens"], strict=True):
        assert top[0]["logprob"] >= top[1]["logprob"] >= top[2]["logprob"]
        assert token["id"] == top[0]["id"] and math.isclose(token["logprob"], top[0]["logprob"])  # greedy
    # The same patch as the in-process engine writes.
    from switchgen.servers.base import GenerationParams

    local = engine.backend("toy:A", device="cpu").generate("<|bos|>" + PROMPT, GenerationParams(max_new_tokens=12, greedy=True))
    assert data["generated_text"] == local.text
    assert details["generated_tokens"] == local.tokens
    assert details["finish_reason"] == {"length": "length", "eos": "eos_token"}[local.finish_reason]


def test_compat_route_answers_a_list(url, validate):
    response = httpx.post(url + "/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}})
    assert response.status_code == 200
    data = response.json()
    assert isinstance(data, list) and len(data) == 1
    validate(data[0], "GenerateResponse")


def test_generate_without_details(url, validate):
    data = httpx.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}).json()
    validate(data, "GenerateResponse")
    assert "details" not in data


def greedy_text(url: str, n: int = 30) -> str:
    return httpx.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": n}}).json()["generated_text"]


def test_generate_stream_conforms(url, validate):
    text = greedy_text(url)
    stop = next(c for c in text[3:] if c.isalpha())  # a letter the greedy text is known to contain
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 30, "details": True, "top_n_tokens": 2, "stop": [stop]}}
    with httpx.stream("POST", url + "/generate_stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    for event in events:
        validate(event, "StreamResponse")
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["details"] is None and e["generated_text"] is None for e in events[:-1])
    last = events[-1]
    assert last["details"]["generated_tokens"] == len(events)
    assert last["details"]["finish_reason"] == "stop_sequence"
    # TGI keeps the stop string in generated_text; the text is the greedy text's start.
    assert stop in last["generated_text"][3:] and text.startswith(last["generated_text"])
    full = httpx.post(url + "/generate", json=body).json()
    validate(full, "GenerateResponse")
    assert full["generated_text"] == last["generated_text"]
    assert [t["id"] for t in full["details"]["tokens"]] == [e["token"]["id"] for e in events]


def test_info_and_health_conform(url, validate, spec):
    info = httpx.get(url + "/info")
    assert info.status_code == 200
    validate(info.json(), "Info")
    assert info.json()["model_id"] == "toy:A"
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.content == b""
    assert set(spec["paths"]["/health"]["get"]["responses"]) >= {"200"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        ({"parameters": {"max_new_tokens": 3}}, "inputs"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": "hi", "parameters": {"top_p": 1.0}}, "top_p"),
        ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"inputs": "hi", "parameters": {"top_n_tokens": 5000}}, "top_n_tokens must be <= 1024"),
        ({"inputs": "hi", "parameters": {"top_k": 5}}, "top_k is not supported"),
        ({"inputs": "hi", "parameters": {"adapter_id": "nope"}}, "unknown adapter_id"),
        ({"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "stop"),
        ({"inputs": "hi", "parameters": {"max_new_tokens": 5000}}, "must be <= 4096"),
    ],
)
def test_bad_requests_get_422(url, validate, body, needle):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + "/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    validate(response.json(), "ErrorResponse")
    assert response.json()["error_type"] == "validation"
    assert needle in response.json()["error"]


def test_bad_stream_request_gets_422_as_an_event(url, validate):
    response = httpx.post(url + "/generate_stream", json={"inputs": "hi", "parameters": {"top_p": 2}})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/event-stream")
    (event,) = sse_events(response.text)
    validate(event, "ErrorResponse")


def test_unknown_route_is_a_json_error(url, validate):
    response = httpx.get(url + "/nope")
    assert response.status_code == 404
    validate(response.json(), "ErrorResponse")


def test_completions_with_logprobs(url):
    body = {"model": "toy:A", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 3}
    data = httpx.post(url + "/v1/completions", json=body).json()
    assert data["object"] == "text_completion"
    (choice,) = data["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
    assert data["usage"]["completion_tokens"] == len(logprobs["tokens"])
    assert all(3 <= len(top) <= 4 for top in logprobs["top_logprobs"])  # top-k plus the sampled token
    assert choice["finish_reason"] in ("length", "stop")
    generate = httpx.post(url + "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}).json()
    assert choice["text"] == generate["generated_text"]


def test_completions_stop_string_is_cut_and_named(url):
    text = greedy_text(url)
    stop = next(c for c in text[3:] if c.isalpha())  # a letter the greedy text is known to contain
    data = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "stop": [stop]}).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop  # vLLM's way to tell it from EOS
    assert choice["text"] == text[: text.index(stop)]


def test_completions_stream_joins_to_the_text(url):
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = httpx.post(url + "/v1/completions", json=body).json()["choices"][0]
    events = sse_events(httpx.post(url + "/v1/completions", json={**body, "stream": True}).text)
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text == plain["text"]
    plain_tokens = httpx.post(url + "/v1/completions", json=body).json()["usage"]["completion_tokens"]
    assert events[-1]["usage"]["completion_tokens"] == plain_tokens
    assert any(c["finish_reason"] == plain["finish_reason"] for e in events for c in e["choices"])


def test_models_lists_the_served_name(url):
    assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["toy:A"]


def test_event_loop_serves_while_a_model_works(servers):
    """Generation runs in a worker thread: /health answers while a long stream is being written,
    and a client that goes away stops the model (the next request is not stuck behind it)."""
    url = servers.urls["P"]  # P never stops early
    body = {"inputs": "Tell me", "parameters": {"max_new_tokens": 4000}}
    with httpx.Client(timeout=60) as client, client.stream("POST", url + "/generate_stream", json=body) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first.removeprefix("data:"))["index"] == 1
        latencies = []
        for _ in range(3):
            t0 = time.perf_counter()
            assert httpx.get(url + "/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
        second = next(line for line in lines if line.startswith("data:"))
        assert json.loads(second.removeprefix("data:"))["details"] is None  # still writing
    assert max(latencies) < 0.5
    t0 = time.perf_counter()
    quick = httpx.post(url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, timeout=60)
    assert quick.status_code == 200
    assert time.perf_counter() - t0 < 1.0  # the rest of 4000 tokens would take seconds


def test_concurrent_requests_all_answer_like_sequential_ones(url):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(6)]
    body = lambda p: {"inputs": p, "parameters": {"max_new_tokens": 8, "details": True}}  # noqa: E731
    sequential = [httpx.post(url + "/generate", json=body(p)).json()["generated_text"] for p in prompts]
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = httpx.post(url + "/generate", json=body(prompts[i]), timeout=60).json()["generated_text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == sequential


def test_concurrent_requests_are_decoded_in_one_batch(servers, engine):
    """The server runs on the engine's decode worker: requests from concurrent graphs share forward passes."""
    worker = engine.backend("toy:F", device="cpu").worker
    worker.max_batch_seen = 0
    url = servers.urls["F"]
    body = lambda i: {"inputs": f"Question {i}: name a river.", "parameters": {"max_new_tokens": 40}}  # noqa: E731
    with httpx.Client(timeout=60) as client:
        threads = [threading.Thread(target=client.post, args=(url + "/generate",), kwargs={"json": body(i)}) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert worker.max_batch_seen > 1


def test_a_client_that_goes_away_leaves_the_batch(servers, engine):
    backend = engine.backend("toy:P", device="cpu")
    worker = backend.worker
    url = servers.urls["P"]  # P never stops early
    body = {"inputs": "Tell me a long story", "parameters": {"max_new_tokens": 4000}}
    with httpx.Client(timeout=60) as client, client.stream("POST", url + "/generate_stream", json=body) as stream:
        next(line for line in stream.iter_lines() if line.startswith("data:"))
        assert worker.running(backend)  # the sequence is being decoded
    deadline = time.monotonic() + 1.5  # the remaining ~4000 tokens would take several seconds
    while worker.running(backend) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.running(backend), "the abandoned sequence is still being decoded"


def test_streams_count_against_the_limit_when_admitted(engine):
    """--max-concurrent-requests 2: of four streams opened at once, two run and two get TGI's 429 (as an
    event, with Retry-After); the count is taken when a request is admitted, not when its stream starts."""
    from concurrent.futures import ThreadPoolExecutor

    with start_toy_servers(engine, max_concurrent_requests=2) as group:
        url = group.urls["P"]  # P never stops early
        body = {"inputs": "Tell me a story", "parameters": {"max_new_tokens": 4000}}
        answered: list[httpx.Response] = []
        opened = threading.Barrier(4)

        def open_stream() -> None:
            with httpx.Client(timeout=60) as client, client.stream("POST", url + "/generate_stream", json=body) as s:
                answered.append(s)
                if s.status_code == 429:
                    s.read()
                opened.wait(30)  # all four answered before any stream is closed

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: open_stream(), range(4)))
        assert sorted(r.status_code for r in answered) == [200, 200, 429, 429]
        busy = [r for r in answered if r.status_code == 429]
        assert all(r.headers["retry-after"] == "1" and sse_events(r.text) == [
            {"error": "Model is overloaded", "error_type": "overloaded"}] for r in busy)


def test_models_lists_adapters_by_name_not_by_path(toy_kit, adapter_dir):
    """/v1/models names a local LoRA adapter by its folder's name (never its path on this machine); both
    the name and the configured path select it."""
    from conftest import toy_config_dict

    from switchgen.servers.engine.local import LocalEngine

    config = toy_config_dict(switcher={"model": "toy:A", "adapter": str(adapter_dir)})
    with start_toy_servers(LocalEngine(), config) as group:
        url = group.urls["A"]
        listed = httpx.get(url + "/v1/models")
        assert [m["id"] for m in listed.json()["data"]] == ["toy:A", adapter_dir.name]
        assert str(adapter_dir.parent) not in listed.text

        def logprobs(model: str) -> list[float]:
            body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 1}
            return httpx.post(url + "/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]

        tuned = logprobs(adapter_dir.name)
        assert tuned == pytest.approx(logprobs(str(adapter_dir)), abs=1e-4)
        assert tuned != pytest.approx(logprobs("toy:A"), abs=1e-2)
        refused = httpx.post(url + "/generate", json={"inputs": "hi", "parameters": {"adapter_id": "nope"}})
        assert refused.status_code == 422 and adapter_dir.name in refused.json()["error"]
        assert str(adapter_dir.parent) not in refused.text


def test_request_ids_are_echoed(url):
    assert httpx.get(url + "/info", headers={"X-Request-Id": "serve-7"}).headers["x-request-id"] == "serve-7"
    assert len(httpx.get(url + "/info").headers["x-request-id"]) == 32
