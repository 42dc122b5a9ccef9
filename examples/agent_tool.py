"""An agent (langchain.agents.create_agent) that has the Switch Generation graph as a tool.

langchain-core's `@tool` decorator (a stable API; `Runnable.as_tool` is beta and warns on every
call) turns a function that asks the graph into a tool; its result is the text the checkpoints wrote.

The agent itself needs a chat model that can call tools. Offline there is none to run, so this
example scripts one with langchain-core's GenericFakeChatModel: a stand-in for the LLM provider
(a hosted chat model), which we do not own and cannot run here. It asks the tool once, then
answers. Replace it with any tool-calling chat model, e.g. `init_chat_model("openai:gpt-4.1")`.

`stream` runs the agent as LangGraph Studio's chat reads it (`stream_mode="messages"`); with
`subgraphs=True` the switch graph's own tokens come too, each chunk named after the candidate that
wrote it (`chunk.name`, and `switchgen_candidate` / `switchgen_patch` in the stream's metadata).

    python examples/agent_tool.py            # toy checkpoints, offline
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import BaseTool, tool

from switchgen.graph import build_graph, load_config


class ScriptedToolCaller(GenericFakeChatModel):
    """The agent's LLM, faked (see the module docstring): replays its script, accepts any tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolCaller:
        return self

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """The next scripted message as a provider streams it: its text word by word, a tool call in one
        chunk (GenericFakeChatModel streams no tool calls: Studio's `messages` mode then failed)."""
        message = self._generate(messages, stop=stop, **kwargs).generations[0].message
        calls = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                 for i, c in enumerate(getattr(message, "tool_calls", []))]
        words = re.findall(r"\S+\s*", message.text) or [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield ChatGenerationChunk(message=AIMessageChunk(content=word, id=message.id, tool_call_chunks=calls if last else []))


def switchgen_tool(graph: Any) -> BaseTool:
    """The graph as a tool taking a query and returning the answer text."""

    @tool("switch_generation")
    def switch_generation(query: str) -> str:
        """Answer a question by Switch Generation: pretrained, finetuned and aligned checkpoints take turns
        writing the answer."""
        return graph.invoke({"query": query})["output"]

    return switch_generation


def build_agent(question: str, config: Any = None, **build_kwargs: Any) -> Any:
    """The tool and the agent, its scripted model set to ask the tool about `question`."""
    config = config or load_config("toy", max_new_tokens=40, patch_size=10, seed=0)
    tool = switchgen_tool(build_graph(config, **build_kwargs))
    script = iter(
        [
            AIMessage(content="", tool_calls=[{"name": tool.name, "args": {"query": question}, "id": "call_1"}]),
            AIMessage(content="The checkpoints answered together; their answer is in the tool result above."),
        ]
    )
    return create_agent(ScriptedToolCaller(messages=script), tools=[tool])


def run(question: str = "Why is the sky blue?", config: Any = None, **build_kwargs: Any) -> dict:
    """Build the tool and the agent, ask `question`; returns the agent's final state."""
    return build_agent(question, config, **build_kwargs).invoke({"messages": [{"role": "user", "content": question}]})


def stream(question: str = "Why is the sky blue?", config: Any = None, *, subgraphs: bool = True,
           **build_kwargs: Any) -> Iterator[tuple[str, str]]:
    """The agent's run in `messages` mode as (author, text): a candidate (P, F, A) for the switch graph's
    tokens (with `subgraphs`), "tool" for the tool's result, "agent" for the agent model's text."""
    agent = build_agent(question, config, **build_kwargs)
    inputs = {"messages": [{"role": "user", "content": question}]}
    for part in agent.stream(inputs, stream_mode="messages", subgraphs=subgraphs):
        chunk, metadata = part[1] if subgraphs else part
        if isinstance(chunk, ToolMessage):
            yield "tool", chunk.text
        elif chunk.text:
            yield metadata.get("switchgen_candidate") or "agent", chunk.text


if __name__ == "__main__":
    author = None
    for who, text in stream():
        if who != author:
            print(f"\n[{who}] ", end="")
            author = who
        print(text, end="", flush=True)
    print()
