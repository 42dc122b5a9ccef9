"""The tgi backend (huggingface_hub's AsyncInferenceClient) against TGI-protocol servers.

The servers are `switchgen serve` on the toy checkpoints (a real TGI container cannot run here);
every answer is a real forward pass, compared with the in-process engine's.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import httpx
import pytest
from _serving import hub_online, start_toy_servers  # noqa: F401 - fixture
from conftest import chat_prompt, toy_config_dict

from switchgen.core.errors import ConfigError, ServerError, ServerUnreachable
from switchgen.servers.base import GenerationParams
from switchgen.servers.clients.remote import Endpoint, Probe, check_servers

pytestmark = pytest.mark.usefixtures("hub_online")

CHOICES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def servers(engine):
    with start_toy_servers(engine) as group:
        yield group


def tgi(url: str, model: str, **kwargs):
    from switchgen.servers.clients.tgi import TGIBackend

    endpoint_options = {k: kwargs.pop(k) for k in ("retries", "timeout") if k in kwargs}
    return TGIBackend(Endpoint("candidate 'X'", url, **endpoint_options), model, **kwargs)


def switcher_prompt_text(backend) -> str:
    from switchgen.core.prompts import switcher_prompt, user_turn

    return user_turn(backend.tokenizer, switcher_prompt("Name a colour.", ["Red", " and"], [2, 0], 3))


@pytest.mark.parametrize("model", ["toy:P", "toy:A"])
def test_greedy_patch_equals_the_in_process_engine(servers, engine, model):
    name = model.removeprefix("toy:")
    remote = tgi(servers.urls[name], model)
    local = engine.backend(model, device="cpu")
    prompt = chat_prompt("Why is the sky blue?", "Because")
    params = GenerationParams(max_new_tokens=60, greedy=True)
    assert remote.generate(prompt, params) == replace(local.generate(prompt, params), prefilled=0)


def test_eos_and_length_are_told_apart(servers, engine):
    """Toy A ends with EOS on chat prompts within ~80 tokens; P never does."""
    prompt = chat_prompt("Tell me about the sea.", "")
    ended = tgi(servers.urls["A"], "toy:A").generate(prompt, GenerationParams(max_new_tokens=120, greedy=True))
    assert ended.finish_reason == "eos" and ended.tokens < 120
    local = engine.backend("toy:A", device="cpu").generate(prompt, GenerationParams(max_new_tokens=120, greedy=True))
    assert ended == replace(local, prefilled=0)
    running = tgi(servers.urls["P"], "toy:P").generate(prompt, GenerationParams(max_new_tokens=30, greedy=True))
    assert running.finish_reason == "length" and running.tokens == 30


def test_stop_string_is_cut_like_the_engine(servers, engine):
    prompt = chat_prompt("Why is the sky blue?", "")
    remote, local = tgi(servers.urls["P"], "toy:P"), engine.backend("toy:P", device="cpu")
    text = local.generate(prompt, GenerationParams(max_new_tokens=40, greedy=True)).text
    stop = next(c for c in text[3:] if c.isalpha())
    params = GenerationParams(max_new_tokens=40, greedy=True, stop=(stop, "zzzz"))
    got, want = remote.generate(prompt, params), local.generate(prompt, params)
    assert got.finish_reason == want.finish_reason == "stop"
    assert got.text == want.text == text[: text.index(stop)]
    assert got.tokens == want.tokens


def test_streaming_pieces_join_to_the_patch(servers, engine):
    prompt = chat_prompt("Why is the sky blue?", "")
    remote = tgi(servers.urls["P"], "toy:P")
    pieces: list[str] = []
    threads: set[int] = set()

    def on_text(piece: str) -> None:
        pieces.append(piece)
        threads.add(threading.get_ident())

    params = GenerationParams(max_new_tokens=25, greedy=True)
    patch = remote.generate(prompt, params, on_text=on_text)
    assert len(pieces) > 1 and "".join(pieces) == patch.text
    assert threads == {threading.get_ident()}  # callbacks run on the caller's thread
    assert patch == remote.generate(prompt, params)


def test_seeded_sampling_is_reproducible_and_matches_the_engine(servers, engine):
    """switchgen serve samples with the engine's own sampler and seed: the same text as in process."""
    prompt = chat_prompt("Why is the sky blue?", "")
    params = GenerationParams(max_new_tokens=30, greedy=False, temperature=0.7, top_p=0.9, seed=1234)
    remote = tgi(servers.urls["F"], "toy:F")
    first = remote.generate(prompt, params)
    assert first == remote.generate(prompt, params)
    assert first.text == engine.backend("toy:F", device="cpu").generate(prompt, params).text


def test_switcher_distribution_from_top_tokens(servers, engine):
    remote = tgi(servers.urls["switcher"], "toy:switcher", top_n_tokens=1024)
    local = engine.backend("toy:switcher", device="cpu")
    prompt = switcher_prompt_text(local)
    got, want = remote.choice_distribution(prompt, CHOICES), local.choice_distribution(prompt, CHOICES)
    assert got.probs == pytest.approx(want.probs, abs=1e-5)
    assert got.mass == pytest.approx(want.mass, rel=1e-4)


def test_digits_outside_the_top_tokens_count_as_zero(servers, engine):
    local = engine.backend("toy:switcher", device="cpu")
    prompt = switcher_prompt_text(local)
    full = tgi(servers.urls["switcher"], "toy:switcher", top_n_tokens=1024).choice_distribution(prompt, CHOICES)
    # How many top tokens reach each digit, from the server's own ranking.
    ranking = httpx.post(
        servers.urls["switcher"] + "/generate",
        json={"inputs": prompt.removeprefix("<|bos|>"), "parameters": {"max_new_tokens": 1, "details": True, "top_n_tokens": 1024}},
    ).json()["details"]["top_tokens"][0]
    from switchgen.servers.choices import choice_token_ids

    digit_ids = {i for ids in choice_token_ids(local.tokenizer, CHOICES) for i in ids}
    ranks = [r for r, t in enumerate(ranking) if t["id"] in digit_ids]
    # Cut just after the best digit: only it survives, and the mass shrinks.
    partial = tgi(servers.urls["switcher"], "toy:switcher", top_n_tokens=ranks[0] + 1).choice_distribution(prompt, CHOICES)
    assert partial.probs is not None and sorted(partial.probs)[-2:] == [0.0, 1.0]
    assert partial.mass < full.mass
    # Cut before any digit: no distribution (the switcher node then falls back).
    if ranks[0] > 0:
        none = tgi(servers.urls["switcher"], "toy:switcher", top_n_tokens=ranks[0]).choice_distribution(prompt, CHOICES)
        assert none.probs is None and none.mass == 0.0
    else:  # the digit is the top token itself: ask for choices spelled by no single token instead
        assert tgi(servers.urls["switcher"], "toy:switcher").choice_distribution(prompt, ["10", "11"]).probs is None


def test_adapter_id_selects_the_lora_on_a_shared_server(toy_kit, adapter_dir):
    """A LoRA switcher on the aligned model's server, as TGI's --lora-adapters: adapter_id picks it."""
    from switchgen.servers.engine.local import LocalEngine

    engine = LocalEngine()
    config = toy_config_dict(switcher={"model": "toy:A", "adapter": str(adapter_dir)})
    with start_toy_servers(engine, config) as group:
        assert group.urls["switcher"] == group.urls["A"]  # one server for both
        url = group.urls["A"]
        tuned = tgi(url, "toy:A", adapter_id=str(adapter_dir), top_n_tokens=1024)
        plain = tgi(url, "toy:A", top_n_tokens=1024)
        local_tuned = engine.backend("toy:A", device="cpu", adapter=str(adapter_dir))
        local_plain = engine.backend("toy:A", device="cpu")
        prompt = switcher_prompt_text(local_plain)
        assert tuned.choice_distribution(prompt, CHOICES).probs == pytest.approx(
            local_tuned.choice_distribution(prompt, CHOICES).probs, abs=1e-5
        )
        assert plain.choice_distribution(prompt, CHOICES).probs == pytest.approx(
            local_plain.choice_distribution(prompt, CHOICES).probs, abs=1e-5
        )
        assert tuned.choice_distribution(prompt, CHOICES).probs != pytest.approx(
            plain.choice_distribution(prompt, CHOICES).probs, abs=1e-4
        )
        params = GenerationParams(max_new_tokens=20, greedy=True)
        assert plain.generate(prompt, params).text == local_plain.generate(prompt, params).text


def test_overloaded_server_is_retried_with_backoff(engine):
    """429 (TGI's "overloaded") is retried; without retries it is a clear error naming the server."""
    config = toy_config_dict()
    with start_toy_servers(engine, config, max_concurrent_requests=1) as group:
        url = group.urls["P"]
        in_flight = threading.Event()

        def occupy() -> None:  # a long stream, read to its end so the server can finish it
            body = {"inputs": "x", "parameters": {"max_new_tokens": 1500}}
            with httpx.Client(timeout=60) as client, client.stream("POST", url + "/generate_stream", json=body) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        in_flight.set()

        busy = threading.Thread(target=occupy)
        busy.start()
        assert in_flight.wait(30), "the long request never started"
        probe = httpx.post(url + "/generate", json={"inputs": "y", "parameters": {"max_new_tokens": 1}})
        assert probe.status_code == 429
        with pytest.raises(ServerError, match=r"candidate 'X' at http://127\.0\.0\.1:\d+: HTTP 429: Model is overloaded"):
            tgi(url, "toy:P", retries=0).generate("Hello", GenerationParams(max_new_tokens=2, greedy=True))
        patient = tgi(url, "toy:P", retries=8)
        patch = patient.generate("Hello", GenerationParams(max_new_tokens=2, greedy=True))  # waits the busy one out
        assert patch.tokens == 2
        busy.join()


def test_validation_error_is_not_retried(servers):
    remote = tgi(servers.urls["switcher"], "toy:switcher", top_n_tokens=5000)
    with pytest.raises(ServerError, match=r"HTTP 422: top_n_tokens must be <= 1024.*--max-top-n-tokens 5000") as info:
        remote.choice_distribution("Which model?", CHOICES)
    assert not isinstance(info.value, ServerUnreachable)


def test_a_server_that_is_down_is_unreachable(free_port):
    remote = tgi(f"http://127.0.0.1:{free_port}", "toy:P", retries=1)
    with pytest.raises(ServerUnreachable, match=rf"candidate 'X' at http://127\.0\.0\.1:{free_port}: cannot connect.*after 2 attempts"):
        remote.generate("Hello", GenerationParams(max_new_tokens=2))


def test_health_check_names_what_is_down(servers, free_port):
    up = Probe(Endpoint("candidate 'P'", servers.urls["P"]), "tgi")
    down = Probe(Endpoint("candidate 'F'", f"http://127.0.0.1:{free_port}"), "tgi")
    check_servers([up])
    with pytest.raises(ServerUnreachable) as info:
        check_servers([up, down])
    message = str(info.value)
    assert f"candidate 'F': no server answers at http://127.0.0.1:{free_port}" in message
    assert "candidate 'P'" not in message


def test_offline_mode_is_a_clear_error(monkeypatch, servers):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE .* unset it"):
        tgi(servers.urls["P"], "toy:P")


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
