"""The openai backend (vLLM / SGLang's /v1/completions) against `switchgen serve`'s completions endpoint.

A vLLM or SGLang server cannot run here; switchgen serve answers the same API (vLLM's flavour:
`stop_reason`), with real forward passes on the toy checkpoints.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from _serving import start_toy_servers
from conftest import chat_prompt

from switchgen.core.errors import ServerError, ServerUnreachable
from switchgen.servers.base import GenerationParams
from switchgen.servers.clients.remote import Endpoint, Probe, check_servers

CHOICES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def servers(engine):
    with start_toy_servers(engine) as group:
        yield group


def oai(url: str, model: str, **kwargs):
    from switchgen.servers.clients.openai import OpenAIBackend

    return OpenAIBackend(Endpoint("candidate 'X'", url, retries=kwargs.pop("retries", 2)), model, **kwargs)


@pytest.mark.parametrize("model", ["toy:F", "toy:A"])
def test_greedy_patch_equals_the_in_process_engine(servers, engine, model):
    remote = oai(servers.urls[model.removeprefix("toy:")], model)
    local = engine.backend(model, device="cpu")
    prompt = chat_prompt("Tell me about the sea.", "")
    params = GenerationParams(max_new_tokens=100, greedy=True)
    assert remote.generate(prompt, params) == replace(local.generate(prompt, params), prefilled=0)


def test_eos_stop_and_length(servers, engine):
    prompt = chat_prompt("Tell me about the sea.", "")
    ended = oai(servers.urls["A"], "toy:A").generate(prompt, GenerationParams(max_new_tokens=120, greedy=True))
    assert ended.finish_reason == "eos" and ended.tokens < 120  # "stop" with stop_reason null: EOS
    remote, local = oai(servers.urls["P"], "toy:P"), engine.backend("toy:P", device="cpu")
    text = local.generate(prompt, GenerationParams(max_new_tokens=40, greedy=True)).text
    stop = next(c for c in text[3:] if c.isalpha())
    params = GenerationParams(max_new_tokens=40, greedy=True, stop=(stop,))
    got = remote.generate(prompt, params)
    assert got == replace(local.generate(prompt, params), prefilled=0)
    assert got.finish_reason == "stop" and got.text == text[: text.index(stop)]
    assert remote.generate(prompt, GenerationParams(max_new_tokens=7, greedy=True)).finish_reason == "length"


def test_streaming_pieces_join_to_the_patch(servers):
    prompt = chat_prompt("Why is the sky blue?", "")
    remote = oai(servers.urls["P"], "toy:P")
    pieces: list[str] = []
    params = GenerationParams(max_new_tokens=25, greedy=True)
    patch = remote.generate(prompt, params, on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == patch.text
    assert patch == remote.generate(prompt, params)


def test_switcher_distribution_from_logprobs(servers, engine):
    from switchgen.core.prompts import switcher_prompt, user_turn

    local = engine.backend("toy:switcher", device="cpu")
    prompt = user_turn(local.tokenizer, switcher_prompt("Name a colour.", ["Red"], [2], 3))
    got = oai(servers.urls["switcher"], "toy:switcher", top_n_tokens=1024).choice_distribution(prompt, CHOICES)
    want = local.choice_distribution(prompt, CHOICES)
    assert got.probs == pytest.approx(want.probs, abs=1e-5)
    assert got.mass == pytest.approx(want.mass, rel=1e-4)
    few = oai(servers.urls["switcher"], "toy:switcher", top_n_tokens=2).choice_distribution(prompt, CHOICES)
    assert few.mass < want.mass  # only what the top 2 (and the chosen token) hold


@pytest.mark.parametrize(
    ("choice", "stops", "finish"),
    [
        ({"finish_reason": "length"}, (), "length"),
        ({"finish_reason": "stop", "stop_reason": None}, ("x",), "eos"),  # vLLM: EOS
        ({"finish_reason": "stop", "stop_reason": "x"}, ("x",), "stop"),  # vLLM: the stop string
        ({"finish_reason": "stop", "matched_stop": 2}, ("x",), "eos"),  # SGLang: the EOS id
        ({"finish_reason": "stop", "matched_stop": "x"}, ("x",), "stop"),  # SGLang: the stop string
        ({"finish_reason": "stop"}, (), "eos"),  # plain OpenAI, no stop strings asked: EOS
        ({"finish_reason": "stop"}, ("x",), "stop"),  # plain OpenAI with stop strings: ambiguous, both end
    ],
)
def test_finish_reason_of_each_server_flavour(servers, choice, stops, finish):
    """Literal responses of servers we cannot run here (SGLang, plain OpenAI) map as documented."""
    backend = oai(servers.urls["P"], "toy:P")
    assert backend._finish(choice, stops, cut=False) == finish


def test_unknown_served_model_fails_the_health_check(servers):
    url = servers.urls["P"]
    check_servers([Probe(Endpoint("candidate 'P'", url), "openai", "toy:P")])
    with pytest.raises(ServerUnreachable, match=r"does not serve model 'meta-llama/Llama-3\.1-8B' \(it serves \['toy:P'\]\)"):
        check_servers([Probe(Endpoint("candidate 'P'", url), "openai", "meta-llama/Llama-3.1-8B")])


def test_bad_request_is_a_server_error(servers):
    remote = oai(servers.urls["switcher"], "toy:switcher", top_n_tokens=5000)
    with pytest.raises(ServerError, match="HTTP 422: logprobs must be <= 1024"):
        remote.choice_distribution("Which?", CHOICES)


def test_concurrent_calls_share_the_io_loop(servers, engine):
    """Many graph threads at once: every call answers, each like a call on its own."""
    remote = oai(servers.urls["P"], "toy:P")
    prompts = [chat_prompt(f"Question {i}?", "") for i in range(8)]
    params = GenerationParams(max_new_tokens=10, greedy=True)
    alone = [remote.generate(p, params) for p in prompts]
    together: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, remote.generate(prompts[i], params))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[i] for i in range(8)] == alone
