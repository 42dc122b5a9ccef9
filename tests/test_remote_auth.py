"""Servers that require an API key, and `switchgen serve` as a drop-in for huggingface_hub and langchain-huggingface.

`switchgen serve --api-key` stands in for vLLM started with --api-key (which cannot run here): the
graph's remote candidates send the key from the environment, and every answer is a real forward
pass on the toy checkpoints.
"""

from __future__ import annotations

import httpx
import pytest
from _serving import hub_online, served_dict, start_toy_servers  # noqa: F401 - fixture
from conftest import chat_prompt

from switchgen.core.errors import ServerError, ServerUnreachable

KEY = "s3cret-key"
GREEDY = {"sampling": {"greedy": True}, "seed": 1, "max_new_tokens": 40, "patch_size": 20}


@pytest.fixture(scope="module")
def keyed(engine):
    with start_toy_servers(engine, api_key=KEY) as group:
        yield group


def keyed_config(urls: dict, backend: str, key: str | None, **extra):
    from switchgen.graph import load_config

    data = served_dict(urls, backend, **GREEDY)
    for fields in [*data["candidates"], data["switcher"]]:
        fields["base_url"] = fields.pop("url")  # the ecosystem's name (url stays an alias)
        if key is not None:
            fields["api_key"] = key
        fields.update(extra)
    return load_config(data)


@pytest.mark.parametrize("backend", ["openai", "tgi"])
def test_remote_candidates_send_the_api_key_from_the_environment(keyed, engine, make_graph, monkeypatch, backend):
    from huggingface_hub import constants

    from switchgen.graph import build_graph
    from switchgen.graph.backends import server_probes
    from switchgen.servers.clients.remote import check_servers

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("SWITCHGEN_TEST_API_KEY", KEY)
    config = keyed_config(keyed.urls, backend, "${SWITCHGEN_TEST_API_KEY}", retries=0)
    assert config.candidates[0].api_key == KEY and KEY not in repr(config)
    check_servers(server_probes(config))
    remote = build_graph(config, engine=engine).invoke({"query": "Why is the sky blue?"})
    _, local = make_graph(**GREEDY)
    assert remote["output"] == local.invoke({"query": "Why is the sky blue?"})["output"]

    without = keyed_config(keyed.urls, backend, None, retries=0)
    with pytest.raises(ServerUnreachable, match=r"HTTP 401 .*set api_key"):  # TGI's /health is open: /info is asked
        check_servers(server_probes(without))
    with pytest.raises(ServerUnreachable, match=r"HTTP 401 .*the api_key given is refused"):  # before any query runs
        check_servers(server_probes(keyed_config(keyed.urls, backend, "wrong-key", retries=0)))
    with pytest.raises(ServerError, match="401"):
        build_graph(without, engine=engine).invoke({"query": "Why is the sky blue?"})


def test_headers_are_sent_and_bad_fields_are_refused(keyed, monkeypatch):
    from switchgen.core.errors import ConfigError
    from switchgen.graph import load_config
    from switchgen.servers.clients.openai import OpenAIBackend
    from switchgen.servers.clients.remote import Endpoint

    # the key as a header of our own, the way a proxy might want it
    monkeypatch.setenv("SWITCHGEN_TEST_AUTH", f"Bearer {KEY}")
    config = keyed_config(keyed.urls, "openai", None, headers={"Authorization": "${SWITCHGEN_TEST_AUTH}"})
    fields = config.candidates[0]
    backend = OpenAIBackend(Endpoint("candidate 'P'", fields.url, headers=tuple(fields.headers.items())), "toy:P")
    from switchgen.servers.base import GenerationParams

    assert backend.generate(chat_prompt("Hi", ""), GenerationParams(max_new_tokens=5, greedy=True)).tokens == 5
    data = served_dict(keyed.urls, "openai")
    data["candidates"][0]["base_url"] = data["candidates"][0]["url"]
    with pytest.raises(ConfigError, match="base_url or url"):
        load_config(data)
    data = served_dict(keyed.urls, "openai")
    data["candidates"][0]["api_key"] = "${SWITCHGEN_TEST_UNSET_KEY}"
    with pytest.raises(ConfigError, match="environment variable SWITCHGEN_TEST_UNSET_KEY"):
        load_config(data)


def test_serve_requires_the_key_on_every_route_but_health(keyed):
    url = keyed.urls["P"]
    assert httpx.get(f"{url}/health").status_code == 200
    refused = httpx.get(f"{url}/info")
    assert refused.status_code == 401 and refused.json()["error_type"] == "authentication"
    assert httpx.get(f"{url}/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}).json()["model_id"] == "toy:P"


@pytest.mark.usefixtures("hub_online")
def test_huggingface_clients_with_their_defaults(keyed, engine):
    """HuggingFaceEndpoint's default parameters (typical_p 0.95 ...) and InferenceClient.chat_completion."""
    from huggingface_hub import InferenceClient
    from langchain_huggingface import HuggingFaceEndpoint

    url = keyed.urls["A"]
    # langchain-huggingface sends no token to a non-Hub URL: the key goes as a header
    llm = HuggingFaceEndpoint(endpoint_url=url, max_new_tokens=12,
                              server_kwargs={"headers": {"Authorization": f"Bearer {KEY}"}})
    assert isinstance(llm.invoke(chat_prompt("Why is the sky blue?", "")), str)

    client = InferenceClient(base_url=url, api_key=KEY)
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    reply = client.chat_completion(messages, max_tokens=15, temperature=0.0)
    local = engine.backend("toy:A", device="cpu").tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    from switchgen.servers.base import GenerationParams

    want = engine.backend("toy:A", device="cpu").generate(local, GenerationParams(max_new_tokens=15, greedy=True))
    assert reply.choices[0].message.content == want.text
    assert reply.usage.completion_tokens == want.tokens
    pieces = [c.choices[0].delta.content or "" for c in client.chat_completion(
        messages, max_tokens=15, temperature=0.0, stream=True) if c.choices]
    assert "".join(pieces) == want.text


class _Recorder:
    """A loopback HTTP server that records each request's headers and answers 503 (it stands in for a
    stranger's server: what reaches it is what a user's token would leak to)."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen = self.headers = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(503)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": "recorded", "error_type": "overloaded"}')

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("configured", [None, {"api_key": "configured-key"}, {"headers": {"Authorization": "Bearer mine"}}])
def test_a_tgi_candidate_never_sends_the_users_hf_token(monkeypatch, tmp_path, toy_kit, configured):
    """With HF_TOKEN set (or a token saved by `hf auth login`), a `backend: tgi` candidate sends only the
    credential its configuration names: huggingface_hub would otherwise send the user's token to any URL."""
    from huggingface_hub import constants

    from switchgen.servers.base import GenerationParams
    from switchgen.servers.clients.remote import Endpoint
    from switchgen.servers.clients.tgi import TGIBackend

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_users_own_secret")
    token_file = tmp_path / "token"
    token_file.write_text("hf_saved_secret")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    recorder = _Recorder()
    try:
        fields = configured or {}
        endpoint = Endpoint("candidate 'A'", recorder.url, api_key=fields.get("api_key"),
                            headers=tuple((fields.get("headers") or {}).items()), retries=0)
        with pytest.raises(ServerError):
            TGIBackend(endpoint, "toy:A").generate("Hi", GenerationParams(max_new_tokens=2))
    finally:
        recorder.close()
    assert recorder.headers, "the request reached the recorder"
    sent = {h.get("authorization") for h in recorder.headers}
    assert not any("secret" in (value or "") for value in sent), sent
    want = {None: {None}, "api_key": {"Bearer configured-key"}, "headers": {"Bearer mine"}}
    assert sent == want[next(iter(configured), None) if configured else None]
