"""Server clients from configuration: a backend per remote checkpoint, and the probes of a health check."""

from __future__ import annotations

from switchgen.errors import ModelLoadError
from switchgen.graph.config import ServerFields, SwitchConfig
from switchgen.servers.base import Backend
from switchgen.servers.remote import Endpoint, Probe


def endpoint(fields: ServerFields, label: str) -> Endpoint:
    assert fields.url is not None
    return Endpoint(label, fields.url, fields.timeout, fields.connect_timeout, fields.retries)


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
            from switchgen.servers.tgi import TGIBackend

            return TGIBackend(endpoint(fields, label), model, adapter_id=adapter, top_n_tokens=top_n_tokens)
        from switchgen.servers.openai_compat import OpenAIBackend

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
