"""How the steps connect: START -> switcher -> chosen candidate -> switcher -> ... -> END."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from switchgen.errors import ConfigError, ModelLoadError
from switchgen.graph.compiled import SwitchGraph
from switchgen.graph.config import SwitchConfig, load_config
from switchgen.graph.context import Context
from switchgen.graph.state import InputState, OutputState, Segment, SwitchState
from switchgen.nodes.contextual import make_generator_step, make_switcher_step, prompt_token_counter
from switchgen.nodes.generator import make_generator_node
from switchgen.nodes.routing import route_after_patch, route_after_switcher
from switchgen.nodes.switcher import make_switcher_node
from switchgen.servers.base import Backend
from switchgen.servers.connect import remote_backend, switcher_remote
from switchgen.servers.local import LocalEngine


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
    model = config.switcher_model
    twin = next((c for c in config.candidates if c.model == model), None)
    try:
        switcher = engine.backend(
            model,
            device=sw.device or (twin.device if twin else "auto"),
            dtype=sw.dtype or (twin.dtype if twin else "auto"),
            adapter=sw.adapter,
        )
    except ModelLoadError as err:
        raise ModelLoadError(f"switcher: {err}") from None
    return backends, switcher


def build_graph(
    config: SwitchConfig | str | Path | None = None,
    *,
    engine: LocalEngine | None = None,
    checkpointer: Checkpointer = None,
    name: str = "switchgen",
    backends: Mapping[str, Backend] | None = None,
) -> CompiledStateGraph:
    """The compiled Switch Generation graph for `config` (a config, preset name or YAML path).

    `backends` gives candidates (by name) a backend built in code instead of the configured one,
    e.g. `{"P": LangChainLLMBackend(llm)}` (switchgen.servers.langchain_llm). The returned graph
    is a `SwitchGraph` (graph/compiled.py): it takes a `context=` (graph/context.py) per run.
    """
    if not isinstance(config, SwitchConfig):
        config = load_config(config)
    given = dict(backends or {})
    if unknown := sorted(set(given) - set(config.names)):
        raise ConfigError(f"backends for unknown candidate(s) {unknown}; candidates are {config.names}")
    engine = engine or LocalEngine()
    backends, switcher = connect(config, engine, given)

    def count_tokens(segment: Segment) -> int:
        if "tokens" in segment:
            return int(segment["tokens"])
        tokenizer = backends[config.index_of(segment["candidate"])].tokenizer
        return len(tokenizer.encode(segment["text"], add_special_tokens=False))

    # Nodes take the run's context (graph/context.py): each step is built per resolved configuration.
    prompt_tokens = prompt_token_counter(config, backends[config.aligned_index])
    builder = StateGraph(SwitchState, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    builder.add_node(
        "switcher",
        make_switcher_step(config, lambda cfg: make_switcher_node(cfg, switcher, count_tokens), prompt_tokens),
    )
    for index, cand in enumerate(config.candidates):
        backend = backends[index]
        step = make_generator_step(
            config, lambda cfg, i=index, b=backend: make_generator_node(cfg, i, b), prompt_tokens, cand.name
        )
        builder.add_node(cand.name, step)
        builder.add_conditional_edges(cand.name, route_after_patch, ["switcher", END])
    builder.add_edge(START, "switcher")
    builder.add_conditional_edges("switcher", route_after_switcher, [*config.names, "switcher", END])
    graph = SwitchGraph.wrap(builder.compile(checkpointer=checkpointer, name=name), config, switcher is not None)
    # Two supersteps per patch; a patch holds at least one token.
    return graph.with_config(recursion_limit=2 * config.max_new_tokens + 10)
