"""From configuration to token sources: a backend per candidate and for the switcher.

In process, the engine loads each checkpoint once; `backend: tgi|openai` gives a server client
(tokenizer only). The probes of the pre-run health check come from the same configuration.
"""

from __future__ import annotations

from collections.abc import Mapping

from switchgen.core.config import ServerFields, SwitchConfig
from switchgen.core.errors import ModelLoadError
from switchgen.servers.base import Backend
from switchgen.servers.clients.remote import Endpoint, Probe
from switchgen.servers.engine.local import LocalEngine


def connect(
    config: SwitchConfig, engine: LocalEngine, given: Mapping[str, Backend] | None = None
) -> tuple[list[Backend], Backend | None]:
    """A backend per candidate and the learned switcher's (None for other strategies).

    The engine loads each checkpoint once: a switcher naming a candidate's model (an untuned
    switcher, or a LoRA adapter on it) shares that candidate's weights and device. Candidates
    and switcher with `backend: tgi|openai` get a server client instead (tokenizer only).
    Candidates named in `given` use that backend (e.g. a LangChain LLM) and load nothing.
    """
    backends: list[Backend] = []
    for cand in config.candidates:
        if given and cand.name in given:
            backends.append(given[cand.name])
            continue
        if cand.backend != "local":
            backends.append(remote_backend(cand, cand.model, f"candidate {cand.name!r}"))
            continue
        try:
            backends.append(engine.backend(cand.model, device=cand.device, dtype=cand.dtype))
        except ModelLoadError as err:
            raise ModelLoadError(f"candidate {cand.name!r}: {err}") from None
    sw = config.switcher
    if sw.strategy != "learned":
        return backends, None
    remote = switcher_remote(config)
    if remote is not None:
        return backends, remote
    try:
        switcher = engine.backend(
            config.switcher_model, device=config.switcher_device, dtype=config.switcher_dtype, adapter=sw.adapter
        )
    except ModelLoadError as err:
        raise ModelLoadError(f"switcher: {err}") from None
    return backends, switcher


def endpoint(fields: ServerFields, label: str) -> Endpoint:
    assert fields.url is not None
    return Endpoint(
        label, fields.url, fields.timeout, fields.connect_timeout, fields.retries,
        api_key=fields.api_key, headers=tuple(fields.headers.items()),
    )


def remote_backend(
    fields: ServerFields,
    model: str,
    label: str,
    *,
    adapter: str | None = None,
    served_model: str | None = None,
    top_n_tokens: int = 20,
) -> Backend:
    """A tgi or openai backend for `model` (only its tokenizer is loaded, to render prompts)."""
    try:
        if fields.backend == "tgi":
            from switchgen.servers.clients.tgi import TGIBackend

            return TGIBackend(endpoint(fields, label), model, adapter_id=adapter, top_n_tokens=top_n_tokens)
        from switchgen.servers.clients.openai import OpenAIBackend

        return OpenAIBackend(
            endpoint(fields, label), model, served_model=served_model or fields.served_model, top_n_tokens=top_n_tokens
        )
    except ModelLoadError as err:
        raise ModelLoadError(f"{label}: tokenizer: {err}") from None


def switcher_remote(config: SwitchConfig) -> Backend | None:
    """The learned switcher's remote backend, or None when it runs in process."""
    sw = config.switcher
    fields = config.switcher_server()
    if sw.strategy != "learned" or fields.backend == "local":
        return None
    # A LoRA switcher on an OpenAI server is its own served model (vLLM names it by its id).
    served = sw.served_model or (sw.adapter if fields.backend == "openai" and sw.adapter else None)
    return remote_backend(
        fields,
        config.switcher_model,
        "switcher",
        adapter=sw.adapter if fields.backend == "tgi" else None,
        served_model=served or fields.served_model,
        top_n_tokens=sw.top_n_tokens,
    )


def server_probes(config: SwitchConfig) -> list[Probe]:
    """What to ask before a run: each remote candidate's server and the switcher's (once per URL and model)."""
    probes: list[Probe] = []
    seen: dict[tuple[str, str | None], Probe] = {}

    def add(fields: ServerFields, label: str, served: str | None) -> None:
        key = (str(fields.url), served if fields.backend == "openai" else None)
        if key in seen:
            return
        probe = Probe(endpoint(fields, label), fields.backend, served if fields.backend == "openai" else None)
        seen[key] = probe
        probes.append(probe)

    for cand in config.candidates:
        if cand.backend != "local":
            add(cand, f"candidate {cand.name!r}", cand.served_model or cand.model)
    sw = config.switcher
    fields = config.switcher_server()
    if sw.strategy == "learned" and fields.backend != "local":
        served = sw.served_model or (sw.adapter if fields.backend == "openai" and sw.adapter else None)
        add(fields, "switcher", served or fields.served_model or config.switcher_model)
    return probes
