"""Messages in, message out: the `messages` channel, per-candidate history rendering, the answer message.

Every run is a real forward pass on the toy checkpoints; expected continuations come from
transformers' own greedy decoding (the `hf_greedy` fixture) on prompts rendered independently
with the toy tokenizer's chat template.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from transformers import AutoTokenizer

from switchgen.core.errors import InputError
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.graph import build_graph

HISTORY = [
    SystemMessage("Answer briefly."),
    HumanMessage("What is 2 plus 3?"),
    AIMessage("The answer is 5."),
]
QUESTION = "And 3 times 3?"

GREEDY = {"aligned_model": "toy:F", "seed": 3, "max_new_tokens": 30, "patch_size": 15, "sampling": {"greedy": True}}


def rendered(toy_kit, messages: list[dict]) -> str:
    """The conversation as the toy chat template renders it (transformers, not switchgen)."""
    tok = AutoTokenizer.from_pretrained(toy_kit["A"])
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def as_dicts() -> list[dict]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": m.text} for m in HISTORY]


def test_last_human_message_is_the_query_and_the_answer_is_one_ai_message(make_graph):
    config, graph = make_graph(max_new_tokens=40, patch_size=10)
    result = graph.invoke({"messages": [*HISTORY, HumanMessage(QUESTION)]})
    assert result["query"] == QUESTION
    messages = result["messages"]
    assert [m.type for m in messages] == ["system", "human", "ai", "human", "ai"]
    answer = messages[-1]
    assert isinstance(answer, AIMessage)
    assert answer.content == result["output"] == "".join(s["text"] for s in result["segments"])
    meta = answer.response_metadata
    assert meta["segments"] == result["segments"] and meta["decisions"] == result["decisions"]
    assert meta["finish_reason"] == result["segments"][-1]["finish_reason"]
    assert meta["tokens_used"] == result["tokens_used"] and meta["max_new_tokens"] == 40
    usage = answer.usage_metadata
    assert usage["output_tokens"] == result["tokens_used"]
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_query_alone_becomes_the_human_message(make_graph):
    _, graph = make_graph(max_new_tokens=20, patch_size=10)
    result = graph.invoke({"query": "Hi there."})
    assert [(m.type, m.text) for m in result["messages"][:1]] == [("human", "Hi there.")]
    assert result["messages"][-1].type == "ai" and len(result["messages"]) == 2


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": QUESTION}],
        [("user", QUESTION)],
        [{"type": "human", "content": [{"type": "text", "text": "And 3 "}, {"type": "text", "text": "times 3?"}]}],
    ],
    ids=["role-dicts", "tuples", "content-blocks"],
)
def test_message_formats(make_graph, messages):
    _, graph = make_graph(max_new_tokens=20, patch_size=10)
    assert graph.invoke({"messages": messages})["query"] == QUESTION


def test_history_reaches_chat_candidates_through_their_template(make_graph, toy_kit, hf_greedy):
    """The first patch continues the whole conversation as the chat template renders it."""
    _, graph = make_graph(**GREEDY)
    result = graph.invoke({"messages": [*HISTORY, HumanMessage(QUESTION)]})
    first = result["segments"][0]
    assert first["candidate"] == "A"  # the anchor, on toy:F
    prompt = rendered(toy_kit, [*as_dicts(), {"role": "user", "content": QUESTION}])
    assert prompt.count("<|user|>") == 2 and "The answer is 5." in prompt
    text, tokens, _ = hf_greedy("toy:F", prompt, first["tokens"])
    assert first["text"] == text and first["tokens"] == tokens
    # Without the history the same question is continued differently.
    alone = graph.invoke({"query": QUESTION})["segments"][0]["text"]
    assert alone != first["text"]


def test_plain_candidates_get_a_plain_transcript(make_graph, hf_greedy):
    plain = {"name": "P", "role": "pretrained", "model": "toy:P", "device": "cpu", "view": "plain"}
    candidates = [
        plain,
        {"name": "F", "role": "finetuned", "model": "toy:F", "device": "cpu"},
        {"name": "A", "role": "aligned", "model": "toy:F", "device": "cpu"},
    ]
    _, graph = make_graph(**{**GREEDY, "candidates": candidates})
    result = graph.invoke({"messages": [*HISTORY, HumanMessage(QUESTION)], "forced": ["P"]})
    first = result["segments"][0]
    assert first["candidate"] == "P"
    # The current turn is labelled as the assistant's (issue 11: without it a base model answers and
    # then writes the user's next turns), and "\nUser:" ends the patch where it would.
    transcript = "System: Answer briefly.\nUser: What is 2 plus 3?\nAssistant: The answer is 5.\nUser: And 3 times 3?\n\nAssistant:"
    text, tokens, _ = hf_greedy("toy:P", transcript, first["tokens"])
    assert text.startswith(first["text"]) and first["tokens"] <= tokens
    assert first["text"] == text or (first["finish_reason"] == "stop" and "\nUser:" in text)


def test_switcher_prompt_is_the_released_one_with_the_last_human_message(make_graph, engine):
    """The switcher ignores the history: its prompt is the released switchers', query = last human message."""
    config, graph = make_graph(anchor=False, max_new_tokens=20, patch_size=10)
    result = graph.invoke({"messages": [*HISTORY, HumanMessage(QUESTION)]})
    decision = result["decisions"][0]
    assert decision["how"] == "switcher"
    switcher = engine.backend("toy:switcher", device="cpu")
    prompt = user_turn(switcher.tokenizer, switcher_prompt(QUESTION, [], [], 3))
    assert prompt == f"<|bos|><|user|>\n{QUESTION} Which model should generate the next segment? Please respond with a number from 0 to 2. The answer is model <|end|>\n<|assistant|>\n"
    expected = switcher.choice_distribution(prompt, ["0", "1", "2"])
    assert list(decision["probabilities"].values()) == pytest.approx(expected.probs, abs=1e-6)


def test_new_turn_starts_a_fresh_trace(make_graph, toy_config, engine):
    config = toy_config(aligned_model="toy:F", max_new_tokens=30, patch_size=10)
    graph = build_graph(config, engine=engine, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "fresh"}}
    first = graph.invoke({"query": "Hi.", "forced": ["P"] * 9}, thread)  # forced longer than the turn
    assert [d["chosen"] for d in first["decisions"]] == ["P", "P", "P"]
    second = graph.invoke({"messages": [HumanMessage("Again?")]}, thread)
    assert [m.type for m in second["messages"]] == ["human", "ai", "human", "ai"]
    decisions = second["decisions"]
    assert [d["step"] for d in decisions] == list(range(len(decisions)))
    assert decisions[0]["how"] == "anchor"  # the unused forced decisions did not carry over
    assert len(second["segments"]) == len(decisions) and second["tokens_used"] == 30
    assert second["output"] == second["messages"][-1].content
    assert second["messages"][1].response_metadata["decisions"] == first["decisions"]
    # A partial trace given to a later turn replaces the earlier trace.
    given = [{"candidate": "F", "text": "Well,"}]
    third = graph.invoke({"query": "Go on.", "segments": given}, thread)
    assert third["segments"][0]["text"] == "Well," and third["output"].startswith("Well,")
    assert len(third["decisions"]) == len(third["segments"]) - 1


BAD_INPUTS = [
    ({"query": ""}, None, "query is empty"),
    ({"query": "  "}, None, "query is empty"),
    ({"messages": [AIMessage("no question here")]}, None, "no human message"),
    ({"messages": []}, None, "no human message"),
    ({"messages": [HumanMessage("")]}, None, "empty"),
    ({"messages": "hello"}, None, "must be a list"),
    ({}, None, "no question"),
    ({"query": "Hi", "segments": [{"candidate": "Z", "text": "x"}]}, None, "unknown candidate 'Z'"),
    ({"query": "Hi", "forced": ["nobody"]}, None, "unknown candidate 'nobody'"),
    ({"query": "Hi"}, {"candidate": "Z"}, "unknown candidate 'Z'"),
    ({"query": "Hi"}, {"strategy": "fixed", "sequence": ["P", "Q"]}, "unknown candidate 'Q'"),
    ({"query": "Hi"}, {"patch_size": 0}, "patch_size"),
    ({"query": "Hi"}, {"patch_size": 31}, "exceeds max_new_tokens"),
    ({"query": "Hi"}, {"max_new_tokens": 5}, "exceeds max_new_tokens"),
    ({"query": "Hi"}, {"top_p": 1.5}, "top_p"),
    ({"query": "Hi"}, {"colour": "red"}, "unknown setting"),
]


@pytest.mark.parametrize("state, context, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_fails_before_any_model_and_leaves_the_thread_alone(toy_config, engine, state, context, message):
    config = toy_config(max_new_tokens=30, patch_size=10)
    graph = build_graph(config, engine=engine, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    graph.invoke({"query": "First question."}, thread)
    before = graph.get_state(thread)
    history = len(list(graph.get_state_history(thread)))
    with pytest.raises(InputError, match=message):
        graph.invoke(state, thread, context=context)
    after = graph.get_state(thread)
    assert after.values == before.values and after.config == before.config
    assert len(list(graph.get_state_history(thread))) == history
    # A fresh thread gets no checkpoint at all.
    with pytest.raises(InputError, match=message):
        graph.invoke(state, {"configurable": {"thread_id": "new"}}, context=context)
    assert not list(graph.get_state_history({"configurable": {"thread_id": "new"}}))
