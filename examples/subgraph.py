"""The Switch Generation graph as one node of a larger LangGraph graph.

The compiled graph reads and writes the standard `messages` channel, so it is added as a node
as is: the parent's conversation goes in (its last human message is the question) and one
AIMessage comes out, with the segments and decisions in its response_metadata. Here a parent
node before it puts a system instruction first (every candidate sees it through its chat
template), and one after it reads who wrote what.

    python examples/subgraph.py              # toy checkpoints, offline
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import RemoveMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES

from switchgen.graph import build_graph, load_config


class ParentState(MessagesState):
    authors: list[str]  # who wrote each patch of the last answer


def instruct(state: ParentState) -> dict:
    """A node of the parent graph: puts a system instruction first, before the checkpoints write."""
    system = SystemMessage(content="Answer in one short paragraph.")
    return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), system, *state["messages"]]}


def read_authors(state: ParentState) -> dict:
    """A node of the parent graph: reads the switching decisions from the answer's metadata."""
    answer = state["messages"][-1]
    return {"authors": [d["chosen"] for d in answer.response_metadata["decisions"]]}


def build_parent(config: Any = None, **build_kwargs: Any):
    config = config or load_config("toy", max_new_tokens=40, patch_size=10, seed=0)
    builder = StateGraph(ParentState)
    builder.add_node("instruct", instruct)
    builder.add_node("switchgen", build_graph(config, **build_kwargs))  # the compiled graph as a node
    builder.add_node("read_authors", read_authors)
    builder.add_edge(START, "instruct")
    builder.add_edge("instruct", "switchgen")
    builder.add_edge("switchgen", "read_authors")
    builder.add_edge("read_authors", END)
    return builder.compile()


def run(question: str = "Why is the sky blue?", **kwargs: Any) -> tuple[dict, list[dict]]:
    """Run the parent graph, streaming; returns its final state and the tokens with their authors."""
    parent = build_parent(**kwargs)
    tokens: list[dict] = []
    final: dict = {}
    # subgraphs=True passes on the custom events of the switchgen node: tokens with their author.
    for _namespace, mode, data in parent.stream(
        {"messages": [{"role": "user", "content": question}]}, stream_mode=["custom", "values"], subgraphs=True
    ):
        if mode == "custom":
            tokens.append(data)
        elif not _namespace:
            final = data
    return final, tokens


if __name__ == "__main__":
    state, tokens = run()
    print("".join(f"[{t['candidate']}]{t['text']}" for t in tokens))
    print("authors:", state["authors"])
