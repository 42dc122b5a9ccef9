"""How the steps connect: START -> switcher -> chosen candidate -> switcher -> ... -> END."""

from __future__ import annotations

from pathlib import Path

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from switchgen.errors import ModelLoadError
from switchgen.graph.config import SwitchConfig, load_config
from switchgen.graph.state import InputState, OutputState, Segment, SwitchState
from switchgen.nodes.generator import make_generator_node
from switchgen.nodes.routing import route_after_patch, route_after_switcher
from switchgen.nodes.switcher import make_switcher_node
from switchgen.servers.base import Backend
from switchgen.servers.local import LocalEngine


def connect(config: SwitchConfig, engine: LocalEngine) -> tuple[list[Backend], Backend | None]:
    """A backend per candidate and the learned switcher's (None for other strategies).

    The engine loads each checkpoint once: a switcher naming a candidate's model (an untuned
    switcher, or a LoRA adapter on it) shares that candidate's weights and device.
    """
    backends: list[Backend] = []
    for cand in config.candidates:
        try:
            backends.append(engine.backend(cand.model, device=cand.device, dtype=cand.dtype))
        except ModelLoadError as err:
            raise ModelLoadError(f"candidate {cand.name!r}: {err}") from None
    sw = config.switcher
    if sw.strategy != "learned":
        return backends, None
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
) -> CompiledStateGraph:
    """The compiled Switch Generation graph for `config` (a config, preset name or YAML path)."""
    if not isinstance(config, SwitchConfig):
        config = load_config(config)
    engine = engine or LocalEngine()
    backends, switcher = connect(config, engine)

    def count_tokens(segment: Segment) -> int:
        if "tokens" in segment:
            return int(segment["tokens"])
        tokenizer = backends[config.index_of(segment["candidate"])].tokenizer
        return len(tokenizer.encode(segment["text"], add_special_tokens=False))

    builder = StateGraph(SwitchState, input_schema=InputState, output_schema=OutputState)
    builder.add_node("switcher", make_switcher_node(config, switcher, count_tokens))
    for index, cand in enumerate(config.candidates):
        builder.add_node(cand.name, make_generator_node(config, index, backends[index]))
        builder.add_conditional_edges(cand.name, route_after_patch, ["switcher", END])
    builder.add_edge(START, "switcher")
    builder.add_conditional_edges("switcher", route_after_switcher, [*config.names, END])
    graph = builder.compile(checkpointer=checkpointer, name=name)
    # Two supersteps per patch; a patch holds at least one token.
    return graph.with_config(recursion_limit=2 * config.max_new_tokens + 10)
