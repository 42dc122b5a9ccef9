"""An agent (langchain.agents.create_agent) that has the Switch Generation graph as a tool.

langchain-core's `@tool` decorator (a stable API; `Runnable.as_tool` is beta and warns on every
call) turns a function that asks the graph into a tool; its result is the text the checkpoints wrote.

The agent itself needs a chat model that can call tools. Offline there is none to run, so this
example scripts one with langchain-core's GenericFakeChatModel: a stand-in for the LLM provider
(a hosted chat model), which we do not own and cannot run here. It asks the tool once, then
answers. Replace it with any tool-calling chat model, e.g. `init_chat_model("openai:gpt-4.1")`.

    python examples/agent_tool.py            # toy checkpoints, offline
"""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool

from switchgen.graph import build_graph, load_config


class ScriptedToolCaller(GenericFakeChatModel):
    """The agent's LLM, faked (see the module docstring): replays its script, accepts any tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolCaller:
        return self


def switchgen_tool(graph: Any) -> BaseTool:
    """The graph as a tool taking a query and returning the answer text."""

    @tool("switch_generation")
    def switch_generation(query: str) -> str:
        """Answer a question by Switch Generation: pretrained, finetuned and aligned checkpoints take turns
        writing the answer."""
        return graph.invoke({"query": query})["output"]

    return switch_generation


def run(question: str = "Why is the sky blue?", config: Any = None, **build_kwargs: Any) -> dict:
    """Build the tool and the agent, ask `question`; returns the agent's final state."""
    config = config or load_config("toy", max_new_tokens=40, patch_size=10, seed=0)
    tool = switchgen_tool(build_graph(config, **build_kwargs))
    script = iter(
        [
            AIMessage(content="", tool_calls=[{"name": tool.name, "args": {"query": question}, "id": "call_1"}]),
            AIMessage(content="The checkpoints answered together; their answer is in the tool result above."),
        ]
    )
    agent = create_agent(ScriptedToolCaller(messages=script), tools=[tool])
    return agent.invoke({"messages": [{"role": "user", "content": question}]})


if __name__ == "__main__":
    for message in run()["messages"]:
        message.pretty_print()
