"""Which servers a configuration needs, on which ports, and the graph config that points at them.

One server per distinct checkpoint: candidates sharing a model share a server; a switcher on a
candidate's model (untuned, or a LoRA adapter) is served by that candidate's server; any other
switcher gets its own. `switchgen serve`, `--print-config` and `--compose` all read this plan,
so the servers, the compose file and the config never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from switchgen.core.config import SwitchConfig

ServeEngine = Literal["tgi", "vllm"]


@dataclass
class PlannedServer:
    """One server: a checkpoint, who uses it, and the LoRA adapters it carries."""

    service: str  # compose service name: p, f, a, switcher
    model: str
    device: str
    dtype: str
    port: int
    users: list[str] = field(default_factory=list)  # candidate names and/or "switcher"
    adapters: list[str] = field(default_factory=list)
    switcher_only: bool = False  # serves only the switcher (answers one token per request)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"


def _service_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "model"
    service, i = base, 2
    while service in taken:
        service, i = f"{base}-{i}", i + 1
    taken.add(service)
    return service


MERGED_SWITCHER = "/data/switchgen/merged-switcher"  # in the compose data volume


def _port(base_port: int, servers: list[PlannedServer]) -> int:
    return base_port + len(servers) if base_port else 0  # 0: the OS picks a free port for each


def plan_servers(config: SwitchConfig, base_port: int, *, merge_adapter: bool = False) -> list[PlannedServer]:
    """The servers for `config`, numbered from `base_port` in candidate order, switcher last.

    `merge_adapter`: a LoRA switcher is served merged, on a server of its own (MERGED_SWITCHER),
    instead of as an adapter on its base model's server (TGI turns prefix caching off with
    --lora-adapters).
    """
    servers: list[PlannedServer] = []
    taken: set[str] = set()
    by_model: dict[str, PlannedServer] = {}
    for cand in config.candidates:
        server = by_model.get(cand.model)
        if server is None:
            server = PlannedServer(_service_name(cand.name, taken), cand.model, cand.device, cand.dtype, _port(base_port, servers))
            by_model[cand.model] = server
            servers.append(server)
        server.users.append(cand.name)
    sw = config.switcher
    if sw.strategy == "learned":
        model = config.switcher_model
        merged = merge_adapter and sw.adapter is not None
        if merged:
            model = MERGED_SWITCHER
        server = by_model.get(model)
        if server is None:
            # a merged switcher keeps its base's device and dtype
            server = PlannedServer(
                _service_name("switcher", taken),
                model,
                config.switcher_device,
                config.switcher_dtype,
                _port(base_port, servers),
                switcher_only=True,
            )
            servers.append(server)
        server.users.append("switcher")
        if sw.adapter and not merged and sw.adapter not in server.adapters:
            server.adapters.append(sw.adapter)
    return servers


def served_config(
    config: SwitchConfig,
    servers: list[PlannedServer],
    *,
    engine: ServeEngine = "tgi",
    host: str = "127.0.0.1",
    merged_switcher: bool = False,
) -> dict[str, Any]:
    """`config` as a dict whose candidates and switcher use `servers` (TGI protocol, or OpenAI for vLLM).

    `merged_switcher`: the switcher's adapter is merged into a model served on its own (TGI
    compose), so no adapter is sent.
    """
    data = config.model_dump(exclude_defaults=True)
    # Printed and written: every secret as the user wrote it (${VAR}), never its value.
    data["candidates"] = [cand.redact(out) for cand, out in zip(config.candidates, data["candidates"], strict=True)]
    if "switcher" in data:
        data["switcher"] = config.switcher.redact(data["switcher"])
    backend = "tgi" if engine == "tgi" else "openai"
    server_of = {user: s for s in servers for user in s.users}
    for cand, out in zip(config.candidates, data["candidates"], strict=True):
        for key in ("device", "dtype", "backend", "url", "served_model"):
            out.pop(key, None)
        out.update(backend=backend, url=server_of[cand.name].url(host))
    sw = config.switcher
    if sw.strategy == "learned":
        out = data.setdefault("switcher", {})
        for key in ("device", "dtype", "backend", "url", "served_model"):
            out.pop(key, None)
        out.update(backend=backend, url=server_of["switcher"].url(host))
        if merged_switcher and sw.adapter:
            out.pop("adapter", None)  # served merged: the tokenizer still comes from `model`
            out["model"] = config.switcher_model
        elif backend == "openai" and sw.adapter:
            out["served_model"] = sw.adapter  # vLLM and switchgen serve name a LoRA by its id
    return data
