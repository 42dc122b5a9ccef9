"""Reliability: each class of failure found by attacking switchgen (issue 11), walked with several cases.

What every test here holds to: no traceback reaches a user (the CLI returns 2 with one line naming
what to fix), no record is lost, duplicated or torn, and every server still answers correctly
afterwards. Every model call is a real forward pass on the toy kit.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
from _serving import hub_online  # noqa: F401 - fixture

from switchgen.cli import main
from switchgen.core.errors import InputError
from switchgen.core.jsonl import dumps_record, loads_record, split_lines

SMALL_YAML = """\
candidates:
  - {name: P, role: pretrained, model: "toy:P", device: cpu}
  - {name: F, role: finetuned, model: "toy:F", device: cpu}
  - {name: A, role: aligned, model: "toy:A", device: cpu}
switcher: {strategy: learned, model: "toy:switcher", device: cpu, top_p: 0.7}
patch_size: 10
max_new_tokens: 20
seed: 0
"""


def cli(capsys, *args: object) -> tuple[int, str]:
    """Run the CLI in process; (exit code, stderr). An exception escaping main() fails the test."""
    code = main([*map(str, args)])
    return code, capsys.readouterr().err


def one_line_error(err: str, *words: str) -> None:
    """A single `switchgen: error:` line that names what to fix, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("switchgen: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture()
def small_config(tmp_path: Path, toy_kit) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_YAML)
    return path


# -- 4. JSONL: one reader and one writer, every record round-trips ------------------------------

AWKWARD = [
    "line\u2028separator",
    "para\u2029separator",
    "next\u0085line",
    "lone \ud800 surrogate",
    "high \udbff and low \udc00 apart, emoji \U0001f600",
    "ctrl \x0b\x0c\x1c\x1d\x1e\r\t\x00",
    "quote \" backslash \\ slash /",
    "日本語のテキスト",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_jsonl_round_trips_every_string(text: str):
    record = {"input": "q", "field": text, "nested": {text: [text, 1.5, None, True]}}
    line = dumps_record(record)
    assert len(split_lines((line + "\n").encode("utf-8"))) == 1
    assert len(line.splitlines()) == 1  # also for str.splitlines, which splits on U+2028 and U+0085
    line.encode("utf-8")  # lone surrogates are escaped, so the line is UTF-8 text
    assert loads_record(line.encode("utf-8")) == record


def test_jsonl_surrogate_pair_reads_back_as_its_character():
    # Two surrogate code points in a row are written as escapes, which JSON reads as the one
    # character they encode (as json.dumps(ensure_ascii=True) would): documented, not lost.
    assert loads_record(dumps_record({"x": "\ud83d\ude00"})) == {"x": "\U0001f600"}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_jsonl_refuses_nan_and_infinity_both_ways(value: float):
    with pytest.raises(InputError, match="NaN and Infinity"):
        dumps_record({"x": value})
    for token in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(InputError, match="not valid JSON"):
            loads_record(f'{{"x": {token}}}'.encode(), "f.jsonl:3")


def test_generate_resumes_across_records_with_awkward_characters(tmp_path: Path, small_config: Path, capsys):
    queries = ["What is 2\u2028plus 3?", "Why\u2029is it?", "next\u0085line", "日本語で答えて。"]
    inputs = tmp_path / "in.jsonl"
    rows = [{"input": q, "tag": "lone \ud800", "i": i} for i, q in enumerate(queries)]
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")  # ASCII-escaped input
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 0, err
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 0, err  # the rerun reads the first two records back (it used to split them on U+2028)
    records = [loads_record(line) for line in split_lines(out.read_bytes())]
    assert [r["input"] for r in records] == queries and [r["i"] for r in records] == [0, 1, 2, 3]
    assert all(r["tag"] == "lone \ud800" for r in records)
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(queries)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"input": "q", "score": NaN}', ["in.jsonl:2", "NaN"]),
        ('{"input": "q", "score": -Infinity}', ["in.jsonl:2", "Infinity"]),
        ('{"input": "bad \\ud800 text"}', ["in.jsonl:2", "lone surrogate"]),
        ('{"input": "bad \\udfff"}', ["in.jsonl:2", "lone surrogate"]),
    ],
)
def test_generate_refuses_bad_json_before_writing(tmp_path: Path, small_config: Path, capsys, line: str, words):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "fine"}\n' + line + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 2
    one_line_error(err, *words)
    assert not out.exists()  # nothing half-written (it used to leave an empty file)


# -- 6. Graph API: bad input raises InputError and leaves the thread untouched ---------------------


@pytest.fixture(scope="module")
def thread_graph(engine, toy_config):
    from langgraph.checkpoint.memory import InMemorySaver

    from switchgen.graph import build_graph

    config = toy_config(patch_size=5, max_new_tokens=10)
    return build_graph(config, engine=engine, checkpointer=InMemorySaver())


BAD_TURNS = [
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": "many"}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": 2.5}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": -40}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": True}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "forced": [True]}, None, "unknown candidate True"),
    ({"query": "q", "forced": [1.0]}, None, "unknown candidate 1.0"),
    ({"query": "q", "forced": [None]}, None, "unknown candidate None"),
    ({"query": "bad \ud800 text"}, None, "lone surrogate"),
    ({"messages": [("user", "fine"), ("assistant", "x\udfff"), ("user", "q")]}, None, "lone surrogate"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "\ud83d"}]}, None, "lone surrogate"),
    ({"query": "q"}, {"seed": 2**64}, "seed"),
    ({"query": "q"}, {"seed": -1}, "seed"),
    ({"query": "q"}, {"seed": 10**5000}, "seed"),
    ({"query": "q"}, {"review": "no"}, "review"),
    ({"query": "q"}, {"review": 1}, "review"),
    ({"query": "q"}, {"patch_size": 2.5}, "patch_size"),
    ({"query": "q"}, {"max_new_tokens": True}, "max_new_tokens"),
    ({"query": "the cat sat on the mat. " * 600}, None, "too long"),  # beyond the toy models' 4096 positions
    ({"messages": [("user", "the cat sat on the mat. " * 600), ("user", "q")]}, None, "too long"),
]


@pytest.mark.parametrize(("turn", "context", "words"), BAD_TURNS)
def test_graph_refuses_bad_input_and_leaves_the_thread(thread_graph, turn, context, words):
    import uuid

    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    thread_graph.invoke({"query": "What is 2 plus 3?"}, thread)
    before = thread_graph.get_state(thread)
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        thread_graph.invoke(turn, thread, context=context)
    after = thread_graph.get_state(thread)
    assert after.config == before.config and after.values["messages"] == before.values["messages"]
    # ... and the thread goes on answering
    result = thread_graph.invoke({"query": "And 3 plus 4?"}, thread)
    assert len(result["messages"]) == 4 and result["tokens_used"] <= 10


def test_given_segment_tokens_count_against_the_budget(thread_graph):
    thread = {"configurable": {"thread_id": "budget"}}
    result = thread_graph.invoke({"query": "q", "segments": [{"candidate": "A", "text": "Sure, ", "tokens": 0}]}, thread)
    assert result["tokens_used"] <= 10
    result = thread_graph.invoke({"query": "q", "segments": [{"candidate": "A", "text": "Sure, ", "tokens": 10}]}, thread)
    assert result["tokens_used"] == 10 and len(result["segments"]) == 1  # the budget is spent: nothing more written


# -- 1-3. switchgen serve: no request stalls a server; limits; work off the loop; overlong inputs ---


@pytest.fixture(scope="module")
def attacked(toy_kit):
    """`switchgen serve` for the toy config on an engine of its own (should an attack kill its decode
    thread, the session's engine lives on), with a 200 kB payload limit (TGI's default is 2 MB)."""
    from _serving import start_toy_servers

    from switchgen.servers.engine.local import LocalEngine

    servers = start_toy_servers(LocalEngine(), payload_limit=200_000)
    urls = sorted(set(servers.urls.values()))
    expected = {url: greedy(url) for url in urls}
    yield servers, urls, expected
    servers.stop()


def greedy(url: str, prompt: str = "The sky is") -> str:
    import httpx

    r = httpx.post(f"{url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 6}}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def all_answer(urls: list[str], expected: dict[str, str]) -> None:
    """Every server of the process is healthy and answers exactly what it answered before."""
    import httpx

    for url in urls:
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        assert greedy(url) == expected[url]


ATTACKS = [
    ("/generate", {"inputs": "hi", "parameters": {"do_sample": True, "seed": 2**64, "max_new_tokens": 3}}, 422, "seed"),
    ("/generate", {"inputs": "hi", "parameters": {"do_sample": True, "seed": 2**70, "max_new_tokens": 3}}, 422, "seed"),
    ("/generate", {"inputs": "hi", "parameters": {"do_sample": True, "temperature": 1e-300, "max_new_tokens": 3}}, 200, ""),
    ("/generate", {"inputs": "hi", "parameters": {"temperature": 5e-324, "top_p": 1e-300, "max_new_tokens": 3}}, 200, ""),
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 10**12}}, 422, "`inputs` tokens + `max_new_tokens`"),
    ("/generate", {"inputs": "bad \\ud800", "parameters": {"max_new_tokens": 3}}, 422, "inputs"),
    ("/generate", {"inputs": "hi", "parameters": {"stop": ["\\udfff"], "max_new_tokens": 3}}, 422, "stop"),
    ("/generate_stream", {"inputs": "hi", "parameters": {"seed": 2**64, "do_sample": True}}, 422, "seed"),
    ("/generate_stream", {"inputs": "hi", "parameters": {"temperature": 1e-320, "max_new_tokens": 3}}, 200, ""),
    ("/v1/completions", {"prompt": "hi", "seed": 2**64, "max_tokens": 3}, 422, "seed"),
    ("/v1/completions", {"prompt": "hi", "temperature": 1e-320, "max_tokens": 3}, 200, ""),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 422, "`max_tokens`"),
]


@pytest.mark.parametrize(("route", "body", "status", "words"), ATTACKS)
def test_a_bad_parameter_fails_its_request_alone(attacked, route, body, status, words):
    import httpx

    servers, urls, expected = attacked
    raw = json.dumps(body).replace("\\\\u", "\\u")  # keep \ud800 an escape in the JSON text
    r = httpx.post(f"{urls[-1]}{route}", content=raw, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    if status != 200:
        text = r.text if route.endswith("stream") else r.json()["error"]
        assert words in text and "validation" in r.text
    all_answer(urls, expected)


def test_payload_limit_and_token_limits_in_tgi_shapes(attacked):
    import httpx

    servers, urls, expected = attacked
    big = {"inputs": "x" * 300_000, "parameters": {"max_new_tokens": 2}}
    r = httpx.post(f"{urls[0]}/generate", json=big, timeout=60)
    assert r.status_code == 413 and r.json() == {
        "error": "Payload too large: the body exceeds 200000 bytes (the server's --payload-limit)",
        "error_type": "payload_limit",
    }
    long = {"inputs": "the cat sat on the mat. " * 600, "parameters": {"max_new_tokens": 2}}
    r = httpx.post(f"{urls[0]}/generate", json=long, timeout=60)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert r.json()["error"].startswith("Input validation error: `inputs` must have less than 4095 tokens. Given: ")
    info = httpx.get(f"{urls[0]}/info").json()
    assert (info["max_input_tokens"], info["max_total_tokens"]) == (4095, 4096)
    all_answer(urls, expected)


def test_tokenising_a_large_body_does_not_hold_the_other_servers(attacked):
    """All ports of one `switchgen serve` share an event loop: while one server tokenises a large body
    (refused afterwards as too long), another server's /health is answered first."""
    import threading

    import httpx

    servers, urls, expected = attacked
    order: list[str] = []
    body = {"inputs": "the cat sat on the mat. " * 8000, "parameters": {"max_new_tokens": 2}}  # ~190 kB, ~70k tokens
    sent = threading.Event()

    def post() -> None:
        def on_request(request: httpx.Request) -> None:
            sent.set()

        with httpx.Client(event_hooks={"request": [on_request]}, timeout=120) as client:
            r = client.post(f"{urls[0]}/generate", json=body)
        order.append(f"generate {r.status_code}")

    worker = threading.Thread(target=post)
    worker.start()
    sent.wait(30)
    r = httpx.get(f"{urls[1]}/health", timeout=120)
    order.append(f"health {r.status_code}")
    worker.join(120)
    assert order == ["health 200", "generate 422"]
    all_answer(urls, expected)


# -- issue 19, 5/7/11: the HTTP base under both servers (switchgen serve, switchgen api) ------------


@pytest.fixture(scope="module")
def api_server(engine):
    """`switchgen api` for the toy config on the session's engine, with the same 200 kB payload limit."""
    from conftest import toy_config_dict

    from switchgen.api import BackgroundAPI, create_api_app
    from switchgen.graph import load_config
    from switchgen.servers.serve.settings import ServiceSettings

    config = load_config(toy_config_dict(max_new_tokens=8, patch_size=4))
    app = create_api_app(config, "toy", engine=engine, settings=ServiceSettings(payload_limit=200_000))
    with BackgroundAPI(app) as server:
        yield server.url


@pytest.fixture(params=["serve", "api"])
def http_server(request, attacked, api_server):
    """(url, route taking a JSON body, the status of a bad body, a function reading the error message)."""
    if request.param == "serve":
        return attacked[1][0], "/generate", 422, lambda r: r.json()["error"]
    return api_server, "/v1/chat/completions", 400, lambda r: r.json()["error"]["message"]


def rss_mb() -> float:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmRSS:")).split()[1]) / 1024


def test_a_huge_chunked_body_is_refused_without_being_buffered(http_server):
    """300 MB posted in chunks (no Content-Length): 413 in the server's shape, and this process (the
    server runs in it) does not grow by the body: it is never buffered whole."""
    import httpx

    url, route, _, message = http_server
    before, peak = rss_mb(), [0.0]

    def body():
        chunk = b"x" * (1 << 20)
        for i in range(300):
            if i % 10 == 0:
                peak[0] = max(peak[0], rss_mb())
            yield chunk

    r = httpx.post(f"{url}{route}", content=body(), headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 413 and "Payload too large" in message(r)
    assert max(peak[0], rss_mb()) - before < 100, (before, peak)  # 300 MB would be buffered, ~2x with the join
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_deeply_nested_json_is_a_clean_error(http_server):
    import httpx

    url, route, bad, message = http_server
    nested = b"[" * 200_000 + b"]" * 200_000  # 400 kB: over the payload limit, so under it as well
    for body in (nested, b"[" * 90_000 + b"]" * 90_000):
        r = httpx.post(f"{url}{route}", content=body, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code in (413, bad) and r.headers["content-type"] == "application/json"
    assert "nested too deeply" in message(r)


def test_a_client_that_leaves_mid_body_leaves_no_traceback(http_server, caplog):
    import socket

    import httpx

    url, route, _, _ = http_server
    host, port = url.removeprefix("http://").split(":")
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100000\r\n\r\n{\"inputs\": ".encode())
        time.sleep(0.2)
    time.sleep(0.3)
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example"},  # DNS rebinding: the page's origin resolves to 127.0.0.1
    {"Host": "attacker.example:8080"},
    {"Origin": "http://attacker.example"},  # a cross-origin post from a web page
    {"Origin": "null"},
])
def test_loopback_servers_without_a_key_answer_only_loopback_names(http_server, headers):
    import httpx

    url, route, _, message = http_server
    body = b'{"inputs": "hi", "model": "toy", "messages": [{"role": "user", "content": "hi"}]}'
    r = httpx.post(f"{url}{route}", content=body, headers={"content-type": "text/plain", **headers}, timeout=30)
    assert r.status_code == 403 and "not allowed here" in message(r) and "--allowed-hosts" in message(r)
    assert httpx.get(f"{url}/health", headers=headers).status_code == 403
    port = url.rsplit(":", 1)[1]
    for host in ("localhost", "127.0.0.1", "[::1]"):
        same = {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}"}
        assert httpx.get(f"{url}/health", headers=same).status_code == 200


def test_allowed_hosts_follow_the_flag_and_the_key():
    from switchgen.servers.serve.http import allowed_hosts

    assert allowed_hosts("127.0.0.1", None) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("::1", None) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("127.0.0.1", "key") is None  # the key guards it
    assert allowed_hosts("0.0.0.0", None) is None  # for other machines: whatever name they use
    assert allowed_hosts("127.0.0.1", None, ["Box.lan", "localhost"]) == {"box.lan", "localhost"}
    assert allowed_hosts("127.0.0.1", "key", ["*"]) is None


def test_allowed_hosts_flag_reaches_both_servers(tmp_path: Path, capsys):
    from switchgen.cli import parser

    for command in ("serve", "api"):
        args = parser().parse_args([command, "--preset", "toy", "--allowed-hosts", "box.lan, localhost"])
        assert args.allowed_hosts == ["box.lan", "localhost"]
    code, err = cli(capsys, "api", "--preset", "toy", "--allowed-hosts", "a b")
    assert code == 2 and "--allowed-hosts" in err and "Traceback" not in err


SERVE_CHAT_ATTACKS = [
    ({"messages": [{"role": "user", "content": "hi"}], "seed": 2**64, "max_tokens": 3}, "seed"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": "nope"}, {"role": "user", "content": "hi"}]},
     "tool_calls"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]},
     "only text parts"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 3}}, "logit_bias is not supported"),
]


@pytest.mark.parametrize(("body", "words"), SERVE_CHAT_ATTACKS)
def test_serve_chat_refuses_what_it_cannot_do(attacked, body, words):
    import httpx

    servers, urls, expected = attacked
    r = httpx.post(f"{urls[-1]}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["error_type"] == "validation" and words in r.json()["error"], r.text
    all_answer(urls, expected)


def test_decode_worker_fails_bad_rows_alone_in_a_batch(engine):
    """Straight at the worker (no HTTP validation in front): a request that cannot be seeded or sampled
    (NaN temperature) fails alone, while good requests decoded in the same batch finish."""
    from concurrent.futures import ThreadPoolExecutor

    from switchgen.servers.base import GenerationParams
    from switchgen.servers.engine.batching import Request, to_patch

    backend = engine.backend("toy:F", device="cpu")
    good = GenerationParams(max_new_tokens=12, greedy=True)
    bad = [
        GenerationParams(max_new_tokens=12, seed=2**70),
        GenerationParams(max_new_tokens=12, temperature=math.nan),
        GenerationParams(max_new_tokens=12, seed=-(2**64)),
    ]
    ids = backend.encode("The sky is")
    alone = to_patch(backend.worker.run(backend, Request(list(ids), good))).text

    def run(params):
        try:
            return to_patch(backend.worker.run(backend, Request(list(ids), params))).text
        except Exception as err:
            return err

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, [good, *bad, good, good]))
    assert results[0] == results[-1] == results[-2] == alone
    assert all(isinstance(r, Exception) for r in results[1:4]), results
    assert backend.worker.healthy and run(good) == alone


def test_a_dead_decode_thread_is_reported_not_hung(toy_kit):
    """Should the decode loop itself fail (a bug, not a request), waiting callers get an error at once,
    later ones too, and /health answers TGI's 503."""
    from starlette.testclient import TestClient

    from switchgen.servers.base import GenerationParams
    from switchgen.servers.engine.batching import Request, WorkerDied
    from switchgen.servers.engine.local import LocalEngine
    from switchgen.servers.serve.app import ServedModel, create_app
    from switchgen.servers.serve.steps import TokenServer

    backend = LocalEngine().backend("toy:A", device="cpu")
    client = TestClient(create_app(ServedModel("toy:A", TokenServer(backend))))
    assert client.get("/health").status_code == 200
    backend.worker.run(backend, Request(backend.encode("hi"), GenerationParams(max_new_tokens=2)))
    backend.worker.inbox.put(Request([1], None))  # no backend: the loop's own assertion fails
    with pytest.raises(WorkerDied):
        backend.worker.run(backend, Request(backend.encode("hi"), GenerationParams(max_new_tokens=2)))
    r = client.get("/health")
    assert r.status_code == 503 and r.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    r = client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 424 and "decode thread" in r.json()["error"]


LONG_QUERY = "the cat sat on the mat. " * 600  # ~5,400 toy tokens: beyond the toy models' 4,096 positions


def _overlong_run(tmp_path: Path, config: Path, capsys) -> None:
    """Short, overlong, short: the overlong query is refused (a permanent error record), a rerun skips it."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in ["What is 2 plus 3?", LONG_QUERY, "Why?"]))
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", out, "--no-progress")
    assert code == 1 and "1 queries are too long" in err and "Traceback" not in err
    records = [loads_record(line) for line in split_lines(out.read_bytes())]
    assert [r.get("permanent", False) for r in records] == [False, True, False]
    assert "too long" in records[1]["error"] and "tokens" in records[1]["error"] and "data:" not in records[1]["error"]
    assert all(r["generation_log"] for r in (records[0], records[2]))
    before = out.read_bytes()
    code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", out, "--no-progress")
    assert out.read_bytes() == before  # not retried forever
    assert code == 1 and "1 queries are too long" in err  # and not silently passed over: the file still holds it


def test_overlong_input_in_process_is_refused_and_recorded_once(tmp_path: Path, small_config: Path, capsys, engine):
    from switchgen.core.errors import InputTooLong
    from switchgen.graph import build_graph, load_config

    graph = build_graph(load_config(small_config), engine=engine)
    with pytest.raises(InputTooLong, match="context of 4096 tokens"):
        graph.invoke({"query": LONG_QUERY})
    _overlong_run(tmp_path, small_config, capsys)


@pytest.mark.usefixtures("hub_online")
def test_overlong_input_through_servers_is_refused_and_recorded_once(tmp_path: Path, attacked, capsys):
    import yaml
    from _serving import served_dict

    servers, urls, expected = attacked
    config = tmp_path / "served.yaml"
    config.write_text(yaml.safe_dump(served_dict(servers.urls, "tgi", patch_size=10, max_new_tokens=20)))
    _overlong_run(tmp_path, config, capsys)
    all_answer(urls, expected)


# -- 5. Output paths: checked before any model loads ---------------------------------------------


def test_output_paths_are_checked_before_models_load(tmp_path: Path, capsys):
    # The models do not exist: had any loading started first, its error would be the one reported.
    config = tmp_path / "missing-models.yaml"
    config.write_text(SMALL_YAML.replace('"toy:', '"/nonexistent/toy-'))
    folder = tmp_path / "data"
    folder.mkdir()
    inputs = folder / "in.jsonl"
    inputs.write_text('{"input": "q"}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "link.jsonl").symlink_to(inputs)
    cases = [
        (folder, "is a folder"),
        (folder / ".." / "data" / "in.jsonl", "is the input file"),
        (tmp_path / "link.jsonl", "is the input file"),
        (a_file / "out.jsonl", "cannot write"),
        (Path("/proc/switchgen-out.jsonl"), "cannot write"),
    ]
    for output, words in cases:
        code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", output, "--no-progress")
        assert code == 2, (output, err)
        one_line_error(err, words, str(output))
    assert inputs.read_text() == '{"input": "q"}\n'
    assert a_file.read_text() == "x"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", tmp_path / "ok.jsonl")
    one_line_error(err, "does not exist")  # the check passed: now the missing model is what is reported
    assert not (tmp_path / "ok.jsonl").exists()


# -- 7. Other tracebacks: a full disk, a corrupt chat database, devices, ports, flags -----------------


def test_a_full_disk_leaves_no_torn_line_and_the_rerun_completes(tmp_path: Path, small_config: Path, capsys):
    """RLIMIT_FSIZE makes writes past a size fail (EFBIG) as a full disk does (ENOSPC), part-written."""
    import resource
    import signal

    queries = ["What is 2 plus 3?", "Tell me a story.", "Why is the sky blue?"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in queries[:1]))
    out = tmp_path / "out.jsonl"
    assert cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")[0] == 0
    size = out.stat().st_size
    inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in queries))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))
    try:
        code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert code == 2
    one_line_error(err, str(out), "keeps its 1 finished records", "rerun to resume")
    assert out.stat().st_size == size  # the part of record 2 that fit was cut off again
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 0, err
    records = [loads_record(line) for line in split_lines(out.read_bytes())]
    assert [r["input"] for r in records] == queries


def test_chat_refuses_a_database_that_is_not_its_own(tmp_path: Path, small_config: Path, capsys):
    import sqlite3

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database\n" * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE checkpoints (a TEXT, b TEXT)")
        conn.execute("CREATE TABLE writes (x INTEGER)")
    for db in (garbage, foreign, tmp_path):
        before = db.read_bytes() if db.is_file() else None
        code, err = cli(capsys, "chat", "--config", small_config, "--db", db)
        assert code == 2
        one_line_error(err, f"--db {db}", "choose another --db")
        assert (db.read_bytes() if db.is_file() else None) == before


def test_devices_ports_and_flags_are_one_line_errors(tmp_path: Path, small_config: Path, capsys):
    import torch

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "q"}\n')
    out = tmp_path / "out.jsonl"
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bad_device = tmp_path / "device.yaml"
    bad_device.write_text(SMALL_YAML.replace("device: cpu}", f"device: 'cuda:{cuda + 7}'}}", 1))
    cases = [
        (["generate", "--input", inputs, "--config", bad_device, "--output", out], [f"cuda:{cuda + 7}"]),
        (["generate", "--input", inputs, "--config", small_config, "--output", out, "--patch-size", 0], ["--patch-size"]),
        (["generate", "--input", inputs, "--config", small_config, "--output", out, "--max-new-tokens", -5],
         ["--max-new-tokens"]),
        (["generate", "--input", inputs, "--config", small_config, "--output", out, "--patch-size", 50],
         ["--patch-size 50", "exceeds max_new_tokens"]),
        (["generate", "--input", inputs, "--config", small_config, "--output", out, "--seed", 2**64], ["--seed"]),
        (["serve", "--config", small_config, "--port", 70000], ["--port", "70000", "0..65535"]),
        (["serve", "--config", small_config, "--port", -1], ["--port", "-1"]),
        (["serve", "--config", small_config, "--port", 0, "--max-total-tokens", 10**6], ["--max-total-tokens"]),
        (["serve", "--config", small_config, "--compose", "--output", inputs / "x.yaml"], ["--output", "cannot write"]),
        (["bench", "--config", small_config, "--json", tmp_path], ["--json", "is a folder"]),
    ]
    for args, words in cases:
        code, err = cli(capsys, *args, *(["--no-progress"] if args[0] == "generate" else []))
        assert code == 2, (args, err)
        one_line_error(err, *words)
    assert not out.exists()


@pytest.mark.usefixtures("hub_online")
def test_a_hub_id_that_cannot_be_reached_fails_at_once(tmp_path: Path, capsys, monkeypatch):
    from switchgen.servers.engine.loading import hub_reachable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    hub_reachable.cache_clear()
    try:
        config = tmp_path / "hub.yaml"
        config.write_text(SMALL_YAML.replace('"toy:P"', '"switchgen-test/not-cached-model"'))
        inputs = tmp_path / "in.jsonl"
        inputs.write_text('{"input": "q"}\n')
        code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", tmp_path / "o.jsonl")
        assert code == 2
        one_line_error(err, "switchgen-test/not-cached-model", "cannot be reached", "hf download", "`toy`")
    finally:
        hub_reachable.cache_clear()


# -- 8. Patch seams: a character split by a patch's end is finished by its author --------------------

SEAM_QUERIES = ["日本語で答えてください。東京の天気は？", "絵文字😀🎉を使って", "Ünïcödé façade"]


@pytest.mark.parametrize("query", SEAM_QUERIES)
def test_patch_size_never_changes_the_text(engine, toy_config, query):
    """One greedy model continuing its own tokens (the engine's token memory) writes the same tokens
    whatever the patch size; so the text must be the same, split characters included."""
    from switchgen.graph import build_graph

    outputs = {}
    for patch_size in (40, 1, 2, 3):
        config = toy_config(
            patch_size=patch_size, max_new_tokens=40, aligned_model="toy:F",
            sampling={"greedy": True, "finish_characters": True},
            switcher={"strategy": "single", "candidate": "A"},
        )
        result = build_graph(config, engine=engine).invoke({"query": query})
        outputs[patch_size] = result["output"]
        assert result["tokens_used"] <= 40
    assert len(set(outputs.values())) == 1, outputs


def test_without_finishing_characters_patch_size_does_change_the_text(engine, toy_config):
    """The control: patches cut at exactly patch_size tokens split characters (the bug of issue 11)."""
    from switchgen.graph import build_graph

    def output(patch_size: int, query: str) -> str:
        config = toy_config(
            patch_size=patch_size, max_new_tokens=60, aligned_model="toy:F",
            sampling={"greedy": True, "finish_characters": False}, switcher={"strategy": "single", "candidate": "A"},
        )
        return build_graph(config, engine=engine).invoke({"query": query})["output"]

    broken = 0
    for query in SEAM_QUERIES:
        whole = output(60, query)
        broken += sum(output(p, query).count("\ufffd") > whole.count("\ufffd") for p in (1, 2, 3))
    assert broken


@pytest.mark.parametrize("query", SEAM_QUERIES)
def test_no_patch_ends_in_half_a_character(engine, toy_config, query):
    """Switching authors every 1-3 tokens (all three share the toy kit's byte-level BPE), no segment but
    the last ends in half a character, and the streamed text of each patch is its segment's text."""
    from switchgen.graph import build_graph

    for patch_size in (1, 2, 3):
        config = toy_config(patch_size=patch_size, max_new_tokens=30, switcher={"strategy": "fixed", "sequence": "P F A"},
                            sampling={"ignore_eos": True, "finish_characters": True})
        graph = build_graph(config, engine=engine)
        streamed: dict[int, str] = {}
        final = None
        for mode, data in graph.stream({"query": query}, stream_mode=["custom", "values"]):
            if mode == "custom":
                streamed[data["patch"]] = streamed.get(data["patch"], "") + data["text"]
            else:
                final = data
        segments = final["segments"]
        # The toy models also write bytes that no continuation completes (noise): a patch gives up on
        # those after 3 more tokens; any other patch ending in U+FFFD is a split character.
        split = [s for s in segments[:-1] if s["text"].endswith("\ufffd") and s["tokens"] < patch_size + 3]
        assert not split, [(s["text"], s["tokens"]) for s in segments]
        assert [streamed.get(i, "") for i in range(len(segments))] == [s["text"] for s in segments]
        assert final["tokens_used"] <= 30


# -- 9. Plain view in conversations --------------------------------------------------------------


def test_plain_view_labels_the_current_turn_and_each_patch_extends_the_last(engine):
    from switchgen.core.prompts import PLAIN_TURN_STOP, candidate_prompt

    tokenizer = engine.backend("toy:P", device="cpu").tokenizer
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    first = candidate_prompt(tokenizer, "plain", "Why?", [], history=history)
    assert first == "User: Hi\nAssistant: Hello!\nUser: Why?\n\nAssistant:"
    for trace in (["Because"], [" Because"], ["Because", " the sky", " is blue"]):
        later = candidate_prompt(tokenizer, "plain", "Why?", trace, history=history)
        assert later.startswith(first) and later.endswith("".join(trace).lstrip()) and "Assistant:  " not in later
    assert candidate_prompt(tokenizer, "plain", "Why?", ["x"]) == "Why?\n\nx"  # one turn: unchanged
    assert PLAIN_TURN_STOP == "\nUser:"


def test_plain_candidate_in_a_conversation_stops_before_the_users_turn(engine, toy_config, hf_greedy):
    """toy:P's greedy continuation, found independently (transformers' generate), cut by the default stop
    exactly where it would begin a "User:" line, if it writes one; else unchanged."""
    from langchain_core.messages import AIMessage, HumanMessage

    from switchgen.graph import build_graph

    plain = {"name": "P", "role": "pretrained", "model": "toy:P", "device": "cpu", "view": "plain"}
    candidates = [plain, {"name": "A", "role": "aligned", "model": "toy:A", "device": "cpu"}]
    config = toy_config(candidates=candidates, sampling={"greedy": True}, patch_size=20, max_new_tokens=20)
    messages = [HumanMessage("User: hi"), AIMessage("Hello!\nUser: more"), HumanMessage("Go on")]
    result = build_graph(config, engine=engine).invoke({"messages": messages, "forced": ["P"]})
    segment = result["segments"][0]
    prompt = "User: User: hi\nAssistant: Hello!\nUser: more\nUser: Go on\n\nAssistant:"
    text, _, _ = hf_greedy("toy:P", prompt, 20)
    expected = text.split("\nUser:")[0]
    assert segment["text"] == expected and (segment["finish_reason"] == "stop") == ("\nUser:" in text)


# -- 10. Relative model paths in a YAML resolve against its folder ---------------------------------


def test_relative_model_paths_resolve_against_the_yaml(tmp_path: Path, toy_kit, engine, monkeypatch):
    from switchgen.graph import build_graph, load_config

    models = tmp_path / "project" / "models"
    models.mkdir(parents=True)
    for name in ("P", "A", "switcher"):
        (models / name).symlink_to(toy_kit[name])
    conf = tmp_path / "project" / "configs" / "run.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "candidates:\n"
        "  - {name: P, role: pretrained, model: ../models/P, device: cpu}\n"
        "  - {name: A, role: aligned, model: ./../models/A, device: cpu}\n"
        "switcher: {model: ../models/switcher, device: cpu}\npatch_size: 5\nmax_new_tokens: 10\nseed: 0\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(conf)
    assert [c.model for c in config.candidates] == [str((models / "P").resolve()), str((models / "A").resolve())]
    assert config.switcher.model == str((models / "switcher").resolve())
    assert build_graph(config, engine=engine).invoke({"query": "Hi"})["tokens_used"] <= 10
    missing = conf.with_name("missing.yaml")
    missing.write_text(conf.read_text().replace("../models/P", "../models/nope"))
    with pytest.raises(Exception, match=str(models / "nope")):
        build_graph(load_config(missing), engine=engine)


# -- The console script itself: no traceback reaches a user ---------------------------------------


def test_console_script_prints_one_line_errors_not_tracebacks(tmp_path: Path, small_config: Path):
    import os
    import subprocess

    from test_cli import switchgen_command

    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "q", "x": NaN}\n')
    garbage = tmp_path / "chat.sqlite"
    garbage.write_bytes(b"not sqlite\n" * 50)
    cases = [
        (["generate", "--input", inputs, "--config", small_config], ["in.jsonl:1", "NaN"]),
        (["chat", "--config", small_config, "--db", garbage], ["--db", "not a SQLite database"]),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args, words in cases:
        done = subprocess.run([*switchgen_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2, done.stderr
        one_line_error(done.stderr, *words)
    assert garbage.read_bytes() == b"not sqlite\n" * 50


def test_chat_says_a_question_was_not_answered_and_goes_on(tmp_path: Path, toy_config):
    import io

    from switchgen.chat import run_chat

    questions = iter(["What is 2 plus 3?", LONG_QUERY, "Why?"])

    def ask(prompt: str) -> str:
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    config = toy_config(patch_size=5, max_new_tokens=10)
    assert run_chat(config, db=tmp_path / "c.sqlite", thread="t", color="never", review=False, ask=ask, out=out) == 0
    text = out.getvalue()
    assert text.count("(not answered: ") == 1 and "too long" in text
    assert text.count("tokens |") == 2  # the two other questions were answered


# -- second pass (issue 19) ------------------------------------------------------------------------------


def test_toy_models_never_replace_what_is_not_a_kit(tmp_path: Path, capsys):
    """A folder with a user's files in it, or a plain file, is refused and left exactly as it was."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "f").write_text("x")
    code, err = cli(capsys, "toy-models", folder)
    assert code == 2
    one_line_error(err, str(folder), "not empty")
    assert (folder / "f").read_text() == "x" and sorted(p.name for p in folder.iterdir()) == ["f"]
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    code, err = cli(capsys, "toy-models", plain, "--overwrite")
    assert code == 2
    one_line_error(err, str(plain), "is a file")
    assert plain.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, "toy-models", empty)[0] == 0 and (empty / "A").is_dir()
    assert cli(capsys, "toy-models", empty, "--overwrite")[0] == 0  # a kit is ours to replace


def _short_context_copy(tmp_path: Path, toy_kit, context: int) -> Path:
    """toy:F (never ends on its own) declaring a context of `context` tokens: a real model that fills up fast."""
    import shutil

    folder = tmp_path / f"F-{context}"
    shutil.copytree(toy_kit["F"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = context
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_budget_beyond_the_models_context_keeps_the_answer(tmp_path: Path, toy_kit, capsys):
    """max_new_tokens 100000 on a model holding 160 tokens: the answer ends where the context is full
    (finish reason budget), its text kept; not a permanent "input too long" record without output."""
    model = _short_context_copy(tmp_path, toy_kit, 160)
    config = tmp_path / "long.yaml"
    config.write_text(f"candidates:\n  - {{name: F, role: aligned, model: '{model}', device: cpu}}\n"
                      "switcher: {strategy: single, candidate: F}\npatch_size: 50\nmax_new_tokens: 100000\nseed: 0\n")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "Why is the sky blue?"}\n')
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", config, "--output", out, "--no-progress")
    assert code == 0, err
    record = loads_record(out.read_bytes())
    log = record["generation_log"]
    assert record["output"] and "error" not in record
    assert log["finish_reasons"][-1] == "budget" and log["finish_reasons"][:-1] == ["length"] * (len(log["finish_reasons"]) - 1)
    assert 60 < log["tokens_used"] < 160  # the context (160) less the prompt


def test_a_too_large_budget_is_a_one_line_error_and_leaves_the_thread(capsys, thread_graph):
    """10**40 tokens cannot even be stored in a checkpoint: refused before the thread is written."""
    code, err = cli(capsys, "chat", "--preset", "toy", "--max-new-tokens", 2**70)
    assert code == 2
    one_line_error(err, "max_new_tokens", "2147483647")
    thread = {"configurable": {"thread_id": "a-too-large-budget"}}
    with pytest.raises(InputError, match="max_new_tokens"):
        thread_graph.invoke({"query": "Hi"}, thread, context={"max_new_tokens": 10**40})
    assert not thread_graph.get_state(thread).values.get("messages")


@pytest.mark.usefixtures("hub_online")
def test_a_budget_beyond_a_servers_context_keeps_the_answer(toy_kit):
    """A TGI-protocol server refuses the patch that no longer fits (its max_total_tokens): the answer
    written so far is kept and ends there, not an "input too long" error for the whole query."""
    from _serving import served_dict, start_toy_servers
    from conftest import toy_config_dict

    from switchgen.graph import build_graph, load_config
    from switchgen.servers.engine.local import LocalEngine

    single = {"switcher": {"strategy": "single", "candidate": "F"}, "max_new_tokens": 100000, "patch_size": 50,
              "sampling": {"greedy": True}}
    with start_toy_servers(LocalEngine(), toy_config_dict(**single), max_total_tokens=200) as servers:
        data = served_dict(servers.urls, "tgi", switcher="local", **{k: v for k, v in single.items() if k != "switcher"})
        config = load_config({**data, "switcher": single["switcher"]})
        result = build_graph(config).invoke({"query": "Why is the sky blue?"})
    assert result["done"] and result["segments"] and result["output"] == "".join(s["text"] for s in result["segments"])
    assert 100 <= result["tokens_used"] < 200


def test_printed_and_written_configs_never_hold_a_secret(tmp_path: Path, toy_kit, capsys, monkeypatch):
    """serve --print-config (stdout and --output) shows a key as written, ${VAR}; one written out is <redacted>."""
    monkeypatch.setenv("SWITCHGEN_TEST_SECRET", "s3cr3t-value")
    config = tmp_path / "keys.yaml"
    config.write_text(
        "candidates:\n"
        "  - {name: P, role: pretrained, model: 'toy:P', backend: tgi, url: 'http://127.0.0.1:9', api_key: '${SWITCHGEN_TEST_SECRET}'}\n"
        "  - {name: A, role: aligned, model: 'toy:A', backend: tgi, url: 'http://127.0.0.1:9', api_key: written-out-key,\n"
        "     headers: {X-Token: '${SWITCHGEN_TEST_SECRET}'}}\n"
        "switcher: {strategy: random}\n")
    out = tmp_path / "served.yaml"
    assert main(["serve", "--config", str(config), "--port", "8100", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert cli(capsys, "serve", "--config", config, "--port", 8100, "--print-config", "--output", out)[0] == 0
    for text in (printed, out.read_text()):
        assert "s3cr3t-value" not in text and "written-out-key" not in text
        assert text.count("${SWITCHGEN_TEST_SECRET}") == 2 and "<redacted>" in text


def _rollout(**changes) -> dict:
    record = {"id": "1", "query": "q", "candidates": ["P", "F", "A"], "base": "toy:A",
              "trace": [{"candidate": "P", "text": "x", "index": 0}],
              "patches": [{"candidate": c, "scores": [s], "mean": s} for c, s in zip("PFA", (1.0, 0.0, 0.0), strict=True)],
              "label": 0, "margin": 1.0}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _rollout}


BAD_ROLLOUTS = {
    "no-candidates": ({"candidates": _rollout}, "candidates"),
    "no-trace": ({"trace": _rollout}, "trace"),
    "no-base": ({"base": _rollout}, "base"),
    "no-index": ({"trace": [{"candidate": "P", "text": "x"}]}, "index"),
    "label-not-a-number": ({"label": "x"}, "label"),
    "margin-not-a-number": ({"margin": "big"}, "margin"),
    "query-not-text": ({"query": 5}, "query"),
    "patches-not-a-list": ({"patches": "nope"}, "patches"),
    "label-beyond-the-candidates": ({"label": 9}, "label 9"),
}


@pytest.mark.parametrize("case", list(BAD_ROLLOUTS))
def test_train_refuses_a_bad_rollouts_record_in_one_line(tmp_path: Path, capsys, case: str):
    changes, words = BAD_ROLLOUTS[case]
    data = tmp_path / "rollouts.jsonl"
    data.write_text(dumps_record(_rollout()) + "\n" + dumps_record(_rollout(id="2", **changes)) + "\n")
    code, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "adapter", "--no-progress")
    assert code == 2
    one_line_error(err, f"{data}:2", words)
    assert not (tmp_path / "adapter").exists()


def test_chat_refuses_a_locked_database_at_once(tmp_path: Path, small_config: Path, capsys):
    """Another process holding the chat database: a one-line error before any model loads, not ~30 s
    later at the first question (a read-only file fails the same write probe; as root it cannot be made here)."""
    import sqlite3
    import time

    db = tmp_path / "chat.sqlite"
    holder = sqlite3.connect(db)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        code, err = cli(capsys, "chat", "--config", small_config, "--db", db)
        assert code == 2 and time.monotonic() - began < 10
        one_line_error(err, f"--db {db}", "locked")
    finally:
        holder.rollback()
        holder.close()


BAD_FLAGS = [
    (["train", "--data", "r.jsonl", "--out", "o", "--epochs", "nan"], "--epochs"),
    (["train", "--data", "r.jsonl", "--out", "o", "--epochs", "inf"], "--epochs"),
    (["train", "--data", "r.jsonl", "--out", "o", "--lr", "inf"], "--lr"),
    (["train", "--data", "r.jsonl", "--out", "o", "--eval-fraction", "1.5"], "--eval-fraction"),
    (["distill", "--outputs", "d", "--task", "t", "--out", "o", "--lr", "-0.1"], "--lr"),
    (["distill", "--outputs", "d", "--task", "t", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["distill", "--outputs", "d", "--task", "t", "--out", "o", "--lora-r", "0"], "--lora-r"),
    (["distill", "--outputs", "d", "--task", "t", "--out", "o", "--epochs", "0"], "--epochs"),
    (["bench", "--reps", "0"], "--reps"),
    (["bench", "--budget", "0"], "--budget"),
    (["bench", "--concurrency", "0"], "--concurrency"),
    (["eval", "--task", "t", "--out", "o", "--limit", "-1"], "--limit"),
    (["rollouts", "--task", "t", "--out", "o", "--k", "0"], "--k"),
    (["chat", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--input", "i.jsonl", "--concurrency", "x"], "--concurrency"),
]


@pytest.mark.parametrize("args, flag", BAD_FLAGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_FLAGS])
def test_every_bad_number_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch, args: list[str], flag: str):
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, *args)
    assert code == 2
    one_line_error(err, flag)
    assert not list(tmp_path.iterdir())  # nothing written


def test_eval_and_analyze_bad_inputs_are_one_line_errors(tmp_path: Path, capsys):
    code, err = cli(capsys, "eval", "--task", "toy-qa", "--out", tmp_path / "o", "--import", "no_such_module_here")
    assert code == 2
    one_line_error(err, "--import no_such_module_here")
    run = tmp_path / "run"
    (run / "task").mkdir(parents=True)
    (run / "task" / "switch.jsonl").write_bytes(b'{"id": "1", "score": 1, "query": "caf\xe9"}\n')
    code, err = cli(capsys, "analyze", run)
    assert code == 2
    one_line_error(err, "switch.jsonl:1", "UTF-8")
    (run / "task" / "switch.jsonl").write_text('{"id": "1", "score": 1, "query": "a\u2028b"}\n', encoding="utf-8")
    (run / "results.json").write_text('{"results": 5}')
    code, err = cli(capsys, "analyze", run)
    assert code == 2
    one_line_error(err, "results.json")
