"""Runs in LangChain callbacks (what LangSmith records) and token streaming in LangGraph's `messages` mode.

A callback handler records every run; the graph's patches and switcher calls must appear as runs
with their author, model, tokens and decision, and the `messages` stream must carry each patch's
tokens as AIMessageChunks that join to the answer.
"""

from __future__ import annotations

from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage

from switchgen.core.errors import UnsupportedError


class Recorder(BaseCallbackHandler):
    """Every run the callbacks report: kind, name, parent, metadata, inputs, outputs, tokens streamed."""

    def __init__(self) -> None:
        self.runs: dict[UUID, dict] = {}

    def _start(self, kind: str, run_id: UUID, parent_run_id: UUID | None, kwargs: dict, inputs: object) -> None:
        self.runs[run_id] = {"kind": kind, "name": kwargs.get("name"), "parent": parent_run_id,
                             "metadata": kwargs.get("metadata") or {}, "tags": kwargs.get("tags") or [],
                             "inputs": inputs, "tokens": [], "output": None,
                             "params": kwargs.get("invocation_params") or {}}

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        self._start("chat", run_id, parent_run_id, kwargs, messages)

    def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, **kwargs):
        self._start("llm", run_id, parent_run_id, kwargs, prompts)

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self._start("chain", run_id, parent_run_id, kwargs, inputs)

    def on_llm_new_token(self, token, *, run_id, **kwargs):
        self.runs[run_id]["tokens"].append(token)

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.runs[run_id]["output"] = response

    def of(self, kind: str, name: str | None = None) -> list[dict]:
        return [r for r in self.runs.values() if r["kind"] == kind and (name is None or r["name"] == name)]


def test_each_patch_and_switcher_call_is_a_run_with_author_model_tokens_and_decision(make_graph):
    config, graph = make_graph(max_new_tokens=60, patch_size=20, aligned_model="toy:F")
    recorder = Recorder()
    result = graph.invoke({"query": "Why is the sky blue?"}, {"callbacks": [recorder]})
    patches = recorder.of("chat")
    assert [r["name"] for r in patches] == [s["candidate"] for s in result["segments"]]
    models = {c.name: c.model for c in config.candidates}
    for run, segment in zip(patches, result["segments"], strict=True):
        node = recorder.runs[run["parent"]]
        assert node["kind"] == "chain" and node["name"] == segment["candidate"]  # a child of its node's run
        assert run["metadata"]["ls_model_name"] == models[segment["candidate"]]
        assert run["metadata"]["switchgen_candidate"] == segment["candidate"]
        assert "".join(run["tokens"]) == segment["text"]
        message = run["output"].generations[0][0].message
        assert message.text == segment["text"] and message.name == segment["candidate"]
        assert message.usage_metadata["output_tokens"] == segment["tokens"]
        assert message.usage_metadata["input_tokens"] > 0
        assert isinstance(run["inputs"][0][0], HumanMessage) and run["inputs"][0][0].text.endswith(
            "".join(s["text"] for s in result["segments"][: segment_index(result, segment)]))
    asked = [d for d in result["decisions"] if d["how"] in ("switcher", "fallback")]
    calls = recorder.of("llm", "switcher")
    assert len(calls) == len(asked) >= 1  # the anchored first step asks nobody
    for run, decision in zip(calls, asked, strict=True):
        assert run["metadata"]["ls_model_name"] == "toy:switcher"
        assert "Which model should generate the next segment?" in run["inputs"][0]
        recorded = run["output"].generations[0][0].generation_info["decision"]
        assert recorded["chosen"] == decision["chosen"] and recorded["probabilities"] == decision["probabilities"]


def segment_index(result: dict, segment: dict) -> int:
    return next(i for i, s in enumerate(result["segments"]) if s is segment)


def test_no_listener_no_runs(make_graph):
    """Without callbacks nothing is traced, and the answer is the same."""
    _, graph = make_graph(max_new_tokens=40, patch_size=20)
    assert graph.invoke({"query": "Hi"})["output"] == graph.invoke({"query": "Hi"}, {"callbacks": [Recorder()]})["output"]


def test_messages_mode_streams_token_chunks_tagged_with_their_author(make_graph):
    _, graph = make_graph(max_new_tokens=60, patch_size=20, aligned_model="toy:F")
    parts = list(graph.stream({"query": "Why is the sky blue?"}, stream_mode=["messages", "values"]))
    final = [data for mode, data in parts if mode == "values"][-1]
    chunks = [(msg, meta) for mode, (msg, meta) in ((m, d) for m, d in parts if m == "messages")]
    assert all(isinstance(msg, AIMessageChunk) for msg, _ in chunks)  # the answer is not sent again whole
    texts = [(msg.name, meta["langgraph_node"], meta["switchgen_patch"], msg.content) for msg, meta in chunks
             if msg.content]
    for i, segment in enumerate(final["segments"]):
        mine = [t for t in texts if t[2] == i]
        assert len(mine) >= 2 and {(t[0], t[1]) for t in mine} == {(segment["candidate"],) * 2}
        assert "".join(t[3] for t in mine) == segment["text"]
    joined = chunks[0][0]
    for msg, _ in chunks[1:]:
        joined += msg
    answer = final["messages"][-1]
    assert joined.id == answer.id and joined.content == answer.content
    assert joined.response_metadata["segments"] == answer.response_metadata["segments"]
    assert joined.usage_metadata == answer.usage_metadata


def test_chat_model_reports_ls_model_name_usage_and_nests_the_graphs_runs(make_graph):
    from switchgen.chat_model import ChatSwitchGeneration

    _, graph = make_graph(max_new_tokens=40, patch_size=20)
    model = ChatSwitchGeneration(graph=graph)
    assert model._get_ls_params()["ls_model_name"] == "switchgen:toy:P+toy:F+toy:A"
    recorder = Recorder()
    answer = model.invoke("Why is the sky blue?", {"callbacks": [recorder]})
    top = next(r for r in recorder.of("chat") if r["parent"] is None)  # the chat model's own run
    assert top["metadata"]["ls_provider"] == "switchgen"
    assert top["metadata"]["ls_model_name"] == "switchgen:toy:P+toy:F+toy:A"
    usage = answer.response_metadata["usage_by_candidate"]
    segments = answer.response_metadata["segments"]
    assert sum(u["output_tokens"] for u in usage.values()) == answer.usage_metadata["output_tokens"]
    assert {name: u["patches"] for name, u in usage.items()} == {
        n: sum(s["candidate"] == n for s in segments) for n in {s["candidate"] for s in segments}}
    patches = [r for r in recorder.of("chat") if r is not top]
    assert len(patches) == len(segments) and all("nostream" in r["tags"] for r in patches)

    def ancestors(run: dict):
        while run["parent"] in recorder.runs:
            run = recorder.runs[run["parent"]]
            yield run

    assert all(top in ancestors(r) for r in patches)


def test_chat_model_refuses_tools_and_structured_output_naming_the_alternative(make_graph):
    from switchgen.chat_model import ChatSwitchGeneration

    _, graph = make_graph()
    model = ChatSwitchGeneration(graph=graph)
    with pytest.raises(UnsupportedError, match="switch graph as one of its tools"):
        model.bind_tools([])
    with pytest.raises(UnsupportedError, match="structured-output chat model"):
        model.with_structured_output(dict)


def test_tool_messages_stay_in_the_history(toy_kit):
    from transformers import AutoTokenizer

    from switchgen.core.prompts import chat_prefix
    from switchgen.nodes.messages import conversation_history

    history = conversation_history([
        HumanMessage("What is the weather?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {}, "id": "c1"}]),
        ToolMessage("Sunny, 21 C", tool_call_id="c1"),
        AIMessage("It is sunny."),
        HumanMessage("And tomorrow?"),
    ])
    assert history == [{"role": "user", "content": "What is the weather?"}, {"role": "tool", "content": "Sunny, 21 C"},
                       {"role": "assistant", "content": "It is sunny."}]
    tokenizer = AutoTokenizer.from_pretrained(toy_kit["P"])  # its template has no tool role
    assert "Tool result: Sunny, 21 C" in chat_prefix(tokenizer, "And tomorrow?", history)
