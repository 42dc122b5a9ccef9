"""Helpers for the serving tests: toy servers on free loopback ports, and configs that use them.

The servers are switchgen's own TGI-protocol servers (`switchgen serve`) on the session's
in-process engine, so every response is a real forward pass on the toy checkpoints. A real TGI
or vLLM container cannot run here; these servers answer the same protocol.
"""

from __future__ import annotations

import copy

import pytest
from conftest import toy_config_dict


def start_toy_servers(engine, config_dict: dict | None = None, **options):
    """`switchgen serve` for a toy config on port 0 (free ports), in a background thread."""
    from switchgen.graph import load_config
    from switchgen.servers.serve.plan import plan_servers
    from switchgen.servers.serve.run import BackgroundServers, prepare

    config = load_config(config_dict or toy_config_dict())
    options.setdefault("max_top_n_tokens", 1024)
    running = prepare(plan_servers(config, 0), "127.0.0.1", engine=engine, **options)
    return BackgroundServers(running).start()


def served_dict(urls: dict[str, str], backend: str, *, switcher: str | None = None, **overrides) -> dict:
    """A toy config dict whose candidates (and switcher, unless `switcher="local"`) use the servers."""
    data = toy_config_dict(**overrides)
    for cand in data["candidates"]:
        cand.update(backend=backend, url=urls[cand["name"]])
    sw_backend = switcher or backend
    if sw_backend != "local":
        data["switcher"].update(backend=sw_backend, url=urls["switcher"], top_n_tokens=1024)
    return copy.deepcopy(data)


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub refuses every request (even to 127.0.0.1) while HF_HUB_OFFLINE is set, which
    conftest sets for the suite; the TGI client needs it off. Model loading stays local (toy paths)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
