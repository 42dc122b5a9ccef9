"""How the steps connect: START -> switcher -> chosen candidate -> switcher -> ... -> END."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.errors import ConfigError
from switchgen.core.prompts import candidate_prompt, has_chat_template, switcher_prompt, user_turn
from switchgen.core.trace import Segment
from switchgen.graph.backends import connect
from switchgen.graph.compiled import SwitchGraph, recursion_limit
from switchgen.graph.inputs import OVERWRITE
from switchgen.nodes.context import context_schema
from switchgen.nodes.generator import make_generator
from switchgen.nodes.messages import conversation_history
from switchgen.nodes.routing import route_after_patch, route_after_switcher
from switchgen.nodes.state import InputState, OutputState, SwitchState, TurnState
from switchgen.nodes.switcher import make_switcher
from switchgen.nodes.turn import make_generator_node, make_switcher_node, prompt_token_counter
from switchgen.servers.base import Backend
from switchgen.servers.engine.local import LocalBackend, LocalEngine


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
    e.g. `{"P": LangChainLLMBackend(llm)}` (switchgen.servers.clients.langchain). The returned graph
    is a `SwitchGraph` (graph/compiled.py): it takes a `context=` (nodes/context.py) per run.
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

    # Nodes take the run's context (nodes/context.py): each step is built per resolved configuration.
    prompt_tokens = prompt_token_counter(config, backends[config.aligned_index])
    builder = StateGraph(
        SwitchState, context_schema=context_schema(config), input_schema=InputState, output_schema=OutputState)
    builder.add_node(
        "switcher",
        make_switcher_node(config, lambda cfg: make_switcher(cfg, switcher, count_tokens), prompt_tokens),
        input_schema=TurnState,  # the private channels (turn, settings, proposal) live in the nodes' schema only
    )
    for index, cand in enumerate(config.candidates):
        backend = backends[index]
        node = make_generator_node(
            config, lambda cfg, i=index, b=backend: make_generator(cfg, i, b), prompt_tokens, cand.name
        )
        builder.add_node(cand.name, node, input_schema=TurnState)
        builder.add_conditional_edges(cand.name, route_after_patch, ["switcher", END])
    builder.add_edge(START, "switcher")
    builder.add_conditional_edges("switcher", route_after_switcher, [*config.names, "switcher", END])
    graph = SwitchGraph.wrap(
        builder.compile(checkpointer=checkpointer, name=name),
        config,
        switcher is not None,
        preflight=_length_check(config, backends, switcher),
    )
    return graph.with_config(recursion_limit=recursion_limit(config.max_new_tokens))


def _length_check(config: SwitchConfig, backends: list[Backend], switcher: Backend | None) -> Callable[[dict], None]:
    """Refuse (InputTooLong) a new turn whose first prompt already exceeds an in-process model's
    context, before LangGraph writes it into a thread: a question that can never be answered does not
    stay in the conversation. Servers check their own limits (their refusal is the same error, later)."""

    def check(turn: dict) -> None:
        query = turn["query"]
        history = conversation_history(turn.get("messages"))
        segments = [s["text"] for s in (turn.get("segments") or {}).get(OVERWRITE, [])]
        first = min(config.patch_size, config.max_new_tokens)
        for index, backend in enumerate(backends):
            if isinstance(backend, LocalBackend):
                view = config.candidate_view(index, has_chat_template(backend.tokenizer))
                prompt = candidate_prompt(
                    backend.tokenizer, view, query, segments, config.candidates[index].plain_template, history
                )
                backend.check_length(len(backend.encode(prompt)), first)
        if isinstance(switcher, LocalBackend):
            prompt = user_turn(switcher.tokenizer, switcher_prompt(query, [], [], len(backends)))
            switcher.check_length(len(switcher.encode(prompt)), 1)

    return check
