"""The examples in examples/ run on the toy checkpoints (imported and run, as a reader would)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from langchain_core.messages import AIMessage, ToolMessage

from switchgen.graph import build_graph

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_calls_the_graph_as_a_tool(toy_config, engine):
    example = load("agent_tool")
    config = toy_config(max_new_tokens=30, patch_size=10, seed=6)
    state = example.run("Why is the sky blue?", config, engine=engine)
    messages = state["messages"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    tool_result = messages[2]
    assert isinstance(tool_result, ToolMessage) and tool_result.name == "switch_generation"
    # The tool's result is what the graph writes for that question (a real run, same seed).
    expected = build_graph(config, engine=engine).invoke({"query": "Why is the sky blue?"})["output"]
    assert tool_result.content == expected


def test_agent_streams_in_messages_mode_with_the_authors(toy_config, engine):
    """`agent.stream(..., stream_mode="messages")` (what Studio's chat reads) works, and with subgraphs
    the switch graph's tokens come named after their authors, joining to the tool's result."""
    example = load("agent_tool")
    config = toy_config(max_new_tokens=30, patch_size=10, seed=6)
    parts = list(example.stream("Why is the sky blue?", config, engine=engine))
    expected = build_graph(config, engine=engine).invoke({"query": "Why is the sky blue?"})
    written = [(who, text) for who, text in parts if who in {"P", "F", "A"}]
    assert "".join(text for _, text in written) == expected["output"]
    authors = [who for i, (who, _) in enumerate(written) if i == 0 or written[i - 1][0] != who]
    segments = [s["candidate"] for s in expected["segments"]]
    assert authors == [c for i, c in enumerate(segments) if i == 0 or segments[i - 1] != c]
    assert ("tool", expected["output"]) in parts
    assert "".join(text for who, text in parts if who == "agent").startswith("The checkpoints answered together")
    # Without subgraphs (Studio's default): the agent's own messages only, and no error.
    plain = list(example.stream("Why is the sky blue?", config, subgraphs=False, engine=engine))
    assert {who for who, _ in plain} == {"tool", "agent"}


def test_graph_as_a_subgraph_node(toy_config, engine):
    example = load("subgraph")
    config = toy_config(max_new_tokens=30, patch_size=10, seed=6)
    state, tokens = example.run("Why is the sky blue?", config=config, engine=engine)
    types = [m.type for m in state["messages"]]
    assert types == ["system", "human", "ai"]
    answer = state["messages"][-1]
    assert isinstance(answer, AIMessage)
    assert state["authors"] == [d["chosen"] for d in answer.response_metadata["decisions"]]
    assert "".join(t["text"] for t in tokens) == answer.content
    # The subgraph saw the parent's system instruction: the answer differs from a run without it.
    assert answer.content != build_graph(config, engine=engine).invoke({"query": "Why is the sky blue?"})["output"]
