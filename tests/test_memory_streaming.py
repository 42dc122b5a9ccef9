"""Memory (threads with a checkpointer, SQLite), token streaming with authors, and `switchgen chat`."""

from __future__ import annotations

import io
import re
import sqlite3

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver
from transformers import AutoTokenizer

from switchgen.chat import PALETTE, RESET
from switchgen.cli import main
from switchgen.graph import build_graph
from switchgen.servers.engine.local import LocalEngine

GREEDY = {"aligned_model": "toy:F", "seed": 1, "max_new_tokens": 30, "patch_size": 10, "sampling": {"greedy": True}}


def test_a_thread_remembers_the_conversation_in_sqlite(toy_config, toy_kit, tmp_path, hf_greedy):
    """Turn two, run by a new graph (a restart) on the same SQLite file, continues the whole conversation."""
    config = toy_config(**GREEDY)
    db = tmp_path / "threads.sqlite"
    thread = {"configurable": {"thread_id": "t1"}}
    with sqlite3.connect(db, check_same_thread=False) as conn:
        first = build_graph(config, engine=LocalEngine(), checkpointer=SqliteSaver(conn)).invoke(
            {"query": "What is 2 plus 3?"}, thread
        )
    answer = first["output"]
    # A fresh engine encodes the whole prompt from its text, as transformers does below.
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph = build_graph(config, engine=LocalEngine(), checkpointer=SqliteSaver(conn))
        assert [m.type for m in graph.get_state(thread).values["messages"]] == ["human", "ai"]
        second = graph.invoke({"messages": [{"role": "user", "content": "And times 3?"}]}, thread)
        other = graph.invoke({"query": "And times 3?"}, {"configurable": {"thread_id": "t2"}})
    assert [m.type for m in second["messages"]] == ["human", "ai", "human", "ai"]
    assert second["messages"][1].content == answer
    tok = AutoTokenizer.from_pretrained(toy_kit["A"])
    prompt = tok.apply_chat_template(
        [
            {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And times 3?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    first_patch = second["segments"][0]
    assert first_patch["text"] == hf_greedy("toy:F", prompt, first_patch["tokens"])[0]
    assert other["segments"][0]["text"] != first_patch["text"]  # another thread does not see the first turn


def test_tokens_stream_with_their_author(make_graph):
    _, graph = make_graph(max_new_tokens=40, patch_size=10, seed=4)
    events, final = [], None
    for mode, data in graph.stream({"query": "Tell me a short story."}, stream_mode=["custom", "values"]):
        if mode == "custom":
            events.append(data)
        else:
            final = data
    assert events and set(events[0]) == {"candidate", "text", "patch"}
    segments = final["segments"]
    assert sorted({e["patch"] for e in events}) == list(range(len(segments)))
    for i, segment in enumerate(segments):
        mine = [e for e in events if e["patch"] == i]
        assert {e["candidate"] for e in mine} == {segment["candidate"]}
        assert "".join(e["text"] for e in mine) == segment["text"]
    assert [e["patch"] for e in events] == sorted(e["patch"] for e in events)  # in writing order
    assert len(events) > len(segments)  # token by token, not patch by patch


def test_objective_cue_is_streamed_with_the_final_patch(make_graph):
    _, graph = make_graph(aligned_model="toy:F", objective=True, max_new_tokens=20, patch_size=10)
    events = list(graph.stream({"query": "What is 3 times 3?"}, stream_mode="custom"))
    last = max(e["patch"] for e in events)
    assert "".join(e["text"] for e in events if e["patch"] == last).startswith(" The final answer is")


# -- switchgen chat -------------------------------------------------------------------------

CHAT = ["chat", "--preset", "toy", "--max-new-tokens", "30", "--patch-size", "10", "--seed", "0"]


def chat(monkeypatch, capsys, lines: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code = main([*CHAT, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_streams_coloured_tokens_and_resumes_a_thread(monkeypatch, capsys, tmp_path, toy_kit):
    db = tmp_path / "chat.sqlite"
    code, out, err = chat(monkeypatch, capsys, "Hi there\nWhat next?\n/exit\n", "--db", str(db), "--thread", "abc",
                          "--color", "always")
    assert code == 0, err
    colours = {"P": PALETTE[0], "F": PALETTE[1], "A": PALETTE[2]}
    for name, role in [("P", "pretrained"), ("F", "finetuned"), ("A", "aligned")]:
        assert f"{colours[name]}■ {name} ({role}){RESET}" in out  # the legend
    # Every piece of answer text is wrapped in its author's colour, and the pieces add up to the answers.
    with sqlite3.connect(db, check_same_thread=False) as conn:
        graph = build_graph("toy", checkpointer=SqliteSaver(conn))
        messages = graph.get_state({"configurable": {"thread_id": "abc"}}).values["messages"]
    answers = [m for m in messages if m.type == "ai"]
    assert [m.text for m in messages if m.type == "human"] == ["Hi there", "What next?"] and len(answers) == 2
    painted = re.findall(r"(\x1b\[3\dm)(.*?)\x1b\[0m", out, flags=re.S)
    by_colour = {code: name for name, code in colours.items()}
    written = [(by_colour[c], text) for c, text in painted if not text.startswith("■")]
    for answer in answers:
        for segment in answer.response_metadata["segments"]:
            piece = ""
            while written and written[0][0] == segment["candidate"] and len(piece) < len(segment["text"]):
                piece += written.pop(0)[1]
            assert piece == segment["text"]
    assert "[A " in out and "30/30 tokens" in out  # the decision summary line

    code, out, err = chat(monkeypatch, capsys, "One more\n", "--db", str(db), "--thread", "abc", "--color", "never")
    assert code == 0, err
    assert "thread abc: 4 earlier messages" in out and "you> Hi there" in out and "\x1b[" not in out
    assert answers[0].content in out


def test_chat_review_mode_asks_for_each_author(monkeypatch, capsys, tmp_path, toy_kit):
    # One question; at the first pause an unknown name (refused), then F; afterwards accept each proposal.
    lines = "Hi there\nnobody\nF\n" + "\n" * 10
    code, out, err = chat(monkeypatch, capsys, lines, "--db", str(tmp_path / "r.sqlite"), "--thread", "r", "--review")
    assert code == 0, err
    assert "switcher proposes A" in out  # the anchor's proposal
    assert "'nobody' is not a candidate" in out
    with sqlite3.connect(tmp_path / "r.sqlite", check_same_thread=False) as conn:
        graph = build_graph("toy", checkpointer=SqliteSaver(conn))
        decisions = graph.get_state({"configurable": {"thread_id": "r"}}).values["decisions"]
    assert (decisions[0]["chosen"], decisions[0]["how"], decisions[0]["proposed"]) == ("F", "review", "A")
    assert all(d["how"] != "review" for d in decisions[1:])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patch-size", "0"], "--patch-size"),  # the flag is blamed, not the preset file (issue 11)
        (["--preset", "nope"], "unknown preset"),
        (["--max-new-tokens", "5"], "exceeds max_new_tokens"),
    ],
)
def test_chat_bad_settings_are_one_line_errors(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    base = ["chat", "--db", str(tmp_path / "x.sqlite"), "--max-new-tokens", "30", "--patch-size", "10"]
    if "--preset" not in args:
        base += ["--preset", "toy"]
    code = main([*base, *args])
    out, err = capsys.readouterr()
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err



def _listening_graph(seen: list[bool]):
    """A real one-node LangGraph graph whose node records whether a patch there would be watched."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from switchgen.nodes.streaming import PatchStream
    from switchgen.nodes.tracing import PatchRun

    class S(TypedDict, total=False):
        x: int

    def node(state: S) -> S:
        run = PatchRun.start(candidate="A", model="toy:A", patch=0, prompt="p", message_id=None, invocation={})
        seen.append(PatchStream("A", 0, run).listening)
        run.end(text="", input_tokens=1, output_tokens=0, finish_reason="length", prefilled=1)
        return {"x": 1}

    return StateGraph(S).add_node("n", node).add_edge(START, "n").add_edge("n", END).compile()


def test_a_patch_streams_only_when_its_tokens_are_read(make_graph):
    """A run whose custom stream nobody reads (invoke, batch, `values`) does not ask the backend to
    stream (no detokenising per token, no events across threads); `custom` and `messages` do, and so
    does a parent graph that streams this one as its subgraph. The answer is the same either way."""
    from switchgen.nodes.streaming import WATCHED_KEY

    seen: list[bool] = []
    node_graph = _listening_graph(seen)
    node_graph.invoke({})  # a graph of one's own: no word from switchgen's graph, so streamed
    node_graph.invoke({}, {"configurable": {WATCHED_KEY: False}})
    list(node_graph.stream({}, {"configurable": {WATCHED_KEY: False}}, stream_mode=["values", "messages"]))
    assert seen == [True, False, True]

    _, graph = make_graph(max_new_tokens=24, patch_size=8, seed=3)
    query = {"query": "Tell me a short story."}
    events = list(graph.stream(query, stream_mode="custom"))
    assert len(events) > 3  # token by token
    answer = graph.invoke(query)
    assert "".join(e["text"] for e in events) == "".join(s["text"] for s in answer["segments"])
    watched = [graph._watch({}, kw)["configurable"][WATCHED_KEY]
               for kw in ({}, {"stream_mode": "values"}, {"stream_mode": ["updates", "custom"]}, {"print_mode": "custom"})]
    assert watched == [False, False, True, True]

    from langgraph.graph import END, START, StateGraph

    parent = StateGraph(dict).add_node("inner", graph).add_edge(START, "inner").add_edge("inner", END).compile()
    nested = [data for _, mode, data in parent.stream(query, stream_mode=["custom", "values"], subgraphs=True)
              if mode == "custom"]
    assert [e["text"] for e in nested] == [e["text"] for e in events]
