"""ChatSwitchGeneration (a LangChain chat model over the graph) and LangChain LLMs as candidates.

Real forward passes on the toy checkpoints throughout. HuggingFacePipeline runs the toy models
through transformers' own pipeline; HuggingFaceEndpoint talks HTTP to switchgen's own
TGI-protocol server (`switchgen serve`) on the toy models, since no TGI container runs here.
"""

from __future__ import annotations

import asyncio

import pytest
from _serving import hub_online  # noqa: F401 - fixture
from conftest import chat_prompt
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langgraph.graph import START, MessagesState, StateGraph

from switchgen import ChatSwitchGeneration, LangChainLLMBackend
from switchgen.core.errors import ConfigError, InputError
from switchgen.graph import build_graph
from switchgen.servers.base import GenerationParams

MESSAGES = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("What is 2 plus 3?")]


@pytest.fixture(scope="module")
def chat_model(toy_config, engine) -> ChatSwitchGeneration:
    config = toy_config(aligned_model="toy:F", max_new_tokens=30, patch_size=10, seed=4)
    return ChatSwitchGeneration(graph=build_graph(config, engine=engine))


def check_answer(message: AIMessage) -> None:
    meta = message.response_metadata
    assert message.content == "".join(s["text"] for s in meta["segments"])
    assert len(meta["decisions"]) == len(meta["segments"]) >= 3  # 30 tokens, patches of 10
    assert [d["chosen"] for d in meta["decisions"]] == [s["candidate"] for s in meta["segments"]]
    assert message.usage_metadata["output_tokens"] == meta["tokens_used"] == 30
    assert message.usage_metadata["input_tokens"] > 0


def test_invoke_returns_one_ai_message_with_the_trace(chat_model):
    answer = chat_model.invoke(MESSAGES)
    assert isinstance(answer, AIMessage)
    check_answer(answer)
    assert answer.response_metadata["query"] == "What is 2 plus 3?"
    # The same model, asked again with the same seed, answers the same (a pure function of the messages).
    assert chat_model.invoke(MESSAGES).content == answer.content
    assert chat_model.invoke("What is 2 plus 3?").content != answer.content  # the history matters


def check_authors(chunks: list[AIMessageChunk], segments: list[dict]) -> None:
    """Each text chunk names its author (`name`, and switchgen_candidate/switchgen_patch in its metadata);
    a patch's chunks join to its segment's text."""
    texts = [c for c in chunks if c.content]
    assert texts and all(c.name == c.response_metadata["switchgen_candidate"] for c in texts)
    by_patch: dict[int, str] = {}
    for c in texts:
        assert c.name == segments[c.response_metadata["switchgen_patch"]]["candidate"]
        by_patch[c.response_metadata["switchgen_patch"]] = by_patch.get(c.response_metadata["switchgen_patch"], "") + c.content
    assert by_patch == {i: s["text"] for i, s in enumerate(segments) if s["text"]}


def test_stream_yields_the_text_as_written_then_the_metadata(chat_model):
    chunks = list(chat_model.stream(MESSAGES))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 5 and chunks[-1].content == "" and chunks[-1].response_metadata["segments"]
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    check_answer(whole)
    answer = chat_model.invoke(MESSAGES)
    assert whole.content == answer.content
    check_authors(chunks, answer.response_metadata["segments"])
    assert len({c.name for c in chunks if c.content}) >= 2  # the seed's answer has two authors


def test_async_and_batch(chat_model):
    expected = chat_model.invoke(MESSAGES).content

    async def run() -> tuple[AIMessage, list[AIMessageChunk]]:
        answer = await chat_model.ainvoke(MESSAGES)
        chunks = [c async for c in chat_model.astream(MESSAGES)]
        return answer, chunks

    answer, chunks = asyncio.run(run())
    assert answer.content == expected
    assert "".join(c.content for c in chunks) == expected
    batch = chat_model.batch([MESSAGES, "Tell me a short story."])
    assert batch[0].content == expected and all(isinstance(m, AIMessage) for m in batch)


def test_messages_mode_streams_tokens_through_a_graph_node(chat_model):
    def respond(state: MessagesState) -> dict:
        return {"messages": [chat_model.invoke(state["messages"])]}

    outer = StateGraph(MessagesState).add_node("respond", respond).add_edge(START, "respond").compile()
    parts = list(outer.stream({"messages": MESSAGES}, stream_mode="messages"))
    assert len(parts) > 5
    assert {meta["langgraph_node"] for _, meta in parts} == {"respond"}
    text = "".join(chunk.content for chunk, _ in parts)
    answer = chat_model.invoke(MESSAGES)
    assert text == answer.content
    check_authors([chunk for chunk, _ in parts], answer.response_metadata["segments"])
    # The answer the node stored is the graph's: the per-chunk author keys are not joined into it.
    stored = outer.invoke({"messages": MESSAGES})["messages"][-1]
    assert stored.content == answer.content and not {"switchgen_candidate", "switchgen_patch"} & set(stored.response_metadata)
    assert stored.response_metadata["segments"] == answer.response_metadata["segments"]


def test_per_call_context_and_bad_calls(chat_model):
    answer = chat_model.invoke(MESSAGES, context={"strategy": "single", "candidate": "P", "patch_size": 15})
    assert [s["candidate"] for s in answer.response_metadata["segments"]] == ["P", "P"]
    with pytest.raises(InputError, match="unknown candidate"):
        chat_model.invoke(MESSAGES, context={"strategy": "single", "candidate": "Z"})
    with pytest.raises(InputError, match="review"):
        chat_model.invoke(MESSAGES, context={"review": True})
    with pytest.raises(InputError, match="stop sequences"):
        chat_model.invoke(MESSAGES, stop=["\n"])
    with pytest.raises(InputError, match="no human message"):
        chat_model.invoke([SystemMessage("Only a system message.")])


def test_from_config_builds_the_graph(toy_kit):
    model = ChatSwitchGeneration.from_config("toy", context={"max_new_tokens": 20, "patch_size": 10, "seed": 1})
    answer = model.invoke("Hello")
    assert answer.response_metadata["max_new_tokens"] == 20 and answer.usage_metadata["output_tokens"] <= 20


# -- LangChain LLMs as candidates ----------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_llm(toy_kit):
    """langchain-huggingface's HuggingFacePipeline over the toy "A" checkpoint (transformers pipeline)."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    return HuggingFacePipeline(pipeline=pipeline("text-generation", model=str(toy_kit["A"]), device="cpu"))


PROMPTS = [
    "<|bos|><|user|>\nWhat is 2 plus 3?<|end|>\n<|assistant|>\n",
    "<|bos|><|user|>\nTell me a short story.<|end|>\n<|assistant|>\nOnce upon",
    "Question: Why is the ocean salty?\n\n",
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("budget", [12, 80])
def test_pipeline_backend_writes_what_transformers_writes(pipeline_llm, hf_greedy, prompt, budget):
    backend = LangChainLLMBackend(pipeline_llm)
    params = GenerationParams(max_new_tokens=budget, greedy=True)
    patch = backend.generate(prompt, params)
    text, tokens, ended = hf_greedy("toy:A", prompt, budget)
    assert (patch.text, patch.tokens) == (text, tokens)
    assert patch.finish_reason == ("eos" if ended else "length")
    pieces: list[str] = []
    streamed = backend.generate(prompt, params, on_text=pieces.append)
    assert streamed == patch and "".join(pieces) == patch.text


def test_pipeline_backend_writes_its_patches_in_the_graph(pipeline_llm, toy_config, engine, hf_greedy):
    """Candidate A through HuggingFacePipeline: each of its patches continues the trace as transformers does."""
    config = toy_config(seed=2, max_new_tokens=40, patch_size=10, sampling={"greedy": True})
    query = "Why is the ocean salty?"
    graph = build_graph(config, engine=engine, backends={"A": LangChainLLMBackend(pipeline_llm)})
    events = list(graph.stream({"query": query, "forced": ["P", "A", "F", "A"]}, stream_mode=["custom", "values"]))
    result = events[-1][1]
    segments = result["segments"]
    assert [s["candidate"] for s in segments][:2] == ["P", "A"]
    trace = ""
    for segment in segments:
        if segment["candidate"] == "A":
            text, tokens, ended = hf_greedy("toy:A", chat_prompt(query, trace), segment["tokens"])
            assert (segment["text"], segment["tokens"]) == (text, tokens)
            assert (segment["finish_reason"] == "eos") == ended
        trace += segment["text"]
    assert result["output"] == trace
    streamed = "".join(e["text"] for mode, e in events if mode == "custom" and e["candidate"] == "A")
    assert streamed == "".join(s["text"] for s in segments if s["candidate"] == "A")


def test_langchain_backends_refuse_what_they_cannot_do(pipeline_llm, toy_config, engine):
    backend = LangChainLLMBackend(pipeline_llm)
    with pytest.raises(ConfigError, match="no next-token probabilities"):
        backend.choice_distribution("prompt", ["0", "1"])
    with pytest.raises(ConfigError, match="unknown candidate"):
        build_graph(toy_config(), engine=engine, backends={"Z": backend})

    class OtherLLM(type(pipeline_llm)):  # an LLM type the adapter has no call arguments for
        pass

    with pytest.raises(ConfigError, match="invoke_kwargs"):
        LangChainLLMBackend(OtherLLM(pipeline=pipeline_llm.pipeline), pipeline_llm.pipeline.tokenizer)


@pytest.fixture(scope="module")
def tgi_url(engine):
    """switchgen's own TGI-protocol server (`switchgen serve`) for the toy models: real forward passes.

    A real TGI container cannot run here; this server answers the same protocol.
    """
    from _serving import start_toy_servers

    with start_toy_servers(engine) as group:
        yield group.urls["A"]


def stop_inside(text: str) -> str:
    """A stop string taken from the middle of `text` (so the patch must stop there)."""
    middle = text[len(text) // 2:]
    return next(middle[i:i + 2] for i in range(len(middle) - 1) if middle[i:i + 2].strip() and "\ufffd" not in middle[i:i + 2])


@pytest.mark.usefixtures("hub_online")
@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_endpoint_backend_against_a_tgi_protocol_server(tgi_url, toy_kit, prompt):
    from langchain_huggingface import HuggingFaceEndpoint

    from switchgen.servers.engine.local import LocalEngine

    reference = LocalEngine().backend("toy:A", device="cpu")  # fresh: encodes the prompt from its text
    backend = LangChainLLMBackend(HuggingFaceEndpoint(endpoint_url=tgi_url), tokenizer=str(toy_kit["A"]))
    for budget in (12, 80):
        params = GenerationParams(max_new_tokens=budget, greedy=True)
        patch = backend.generate(prompt, params)
        local = reference.generate(prompt, params)
        assert (patch.text, patch.tokens, patch.finish_reason) == (local.text, local.tokens, local.finish_reason)
        pieces: list[str] = []
        assert backend.generate(prompt, params, on_text=pieces.append) == patch
        assert "".join(pieces) == patch.text
    stop = stop_inside(patch.text)
    params = GenerationParams(max_new_tokens=80, greedy=True, stop=(stop,))
    stopped = backend.generate(prompt, params)
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert stopped.text == reference.generate(prompt, params).text


def test_pipeline_backend_cuts_at_stop_strings(pipeline_llm):
    from switchgen.servers.engine.local import LocalEngine

    reference = LocalEngine().backend("toy:A", device="cpu")
    backend = LangChainLLMBackend(pipeline_llm)
    full = backend.generate(PROMPTS[0], GenerationParams(max_new_tokens=40, greedy=True))
    params = GenerationParams(max_new_tokens=40, greedy=True, stop=(stop_inside(full.text),))
    pieces: list[str] = []
    for patch in (backend.generate(PROMPTS[0], params), backend.generate(PROMPTS[0], params, on_text=pieces.append)):
        assert patch.finish_reason == "stop" and patch.text == reference.generate(PROMPTS[0], params).text
    assert "".join(pieces) == patch.text
