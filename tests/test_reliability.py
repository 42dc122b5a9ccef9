"""Reliability: each class of failure found by attacking switchgen (issue 11), walked with several cases.

What every test here holds to: no traceback reaches a user (the CLI returns 2 with one line naming
what to fix), no record is lost, duplicated or torn, and every server still answers correctly
afterwards. Every model call is a real forward pass on the toy kit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from switchgen.cli import main
from switchgen.errors import InputError
from switchgen.jsonl import dumps_record, loads_record, split_lines

SMALL_YAML = """\
candidates:
  - {name: P, role: pretrained, model: "toy:P", device: cpu}
  - {name: F, role: finetuned, model: "toy:F", device: cpu}
  - {name: A, role: aligned, model: "toy:A", device: cpu}
switcher: {strategy: learned, model: "toy:switcher", device: cpu, top_p: 0.7}
patch_size: 10
max_new_tokens: 20
seed: 0
"""


def cli(capsys, *args: object) -> tuple[int, str]:
    """Run the CLI in process; (exit code, stderr). An exception escaping main() fails the test."""
    code = main([*map(str, args)])
    return code, capsys.readouterr().err


def one_line_error(err: str, *words: str) -> None:
    """A single `switchgen: error:` line that names what to fix, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("switchgen: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture()
def small_config(tmp_path: Path, toy_kit) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_YAML)
    return path


# -- 4. JSONL: one reader and one writer, every record round-trips ------------------------------

AWKWARD = [
    "line\u2028separator",
    "para\u2029separator",
    "next\u0085line",
    "lone \ud800 surrogate",
    "high \udbff and low \udc00 apart, emoji \U0001f600",
    "ctrl \x0b\x0c\x1c\x1d\x1e\r\t\x00",
    "quote \" backslash \\ slash /",
    "日本語のテキスト",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_jsonl_round_trips_every_string(text: str):
    record = {"input": "q", "field": text, "nested": {text: [text, 1.5, None, True]}}
    line = dumps_record(record)
    assert len(split_lines((line + "\n").encode("utf-8"))) == 1
    assert len(line.splitlines()) == 1  # also for str.splitlines, which splits on U+2028 and U+0085
    line.encode("utf-8")  # lone surrogates are escaped, so the line is UTF-8 text
    assert loads_record(line.encode("utf-8")) == record


def test_jsonl_surrogate_pair_reads_back_as_its_character():
    # Two surrogate code points in a row are written as escapes, which JSON reads as the one
    # character they encode (as json.dumps(ensure_ascii=True) would): documented, not lost.
    assert loads_record(dumps_record({"x": "\ud83d\ude00"})) == {"x": "\U0001f600"}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_jsonl_refuses_nan_and_infinity_both_ways(value: float):
    with pytest.raises(InputError, match="NaN and Infinity"):
        dumps_record({"x": value})
    for token in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(InputError, match="not valid JSON"):
            loads_record(f'{{"x": {token}}}'.encode(), "f.jsonl:3")


def test_generate_resumes_across_records_with_awkward_characters(tmp_path: Path, small_config: Path, capsys):
    queries = ["What is 2\u2028plus 3?", "Why\u2029is it?", "next\u0085line", "日本語で答えて。"]
    inputs = tmp_path / "in.jsonl"
    rows = [{"input": q, "tag": "lone \ud800", "i": i} for i, q in enumerate(queries)]
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")  # ASCII-escaped input
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 0, err
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 0, err  # the rerun reads the first two records back (it used to split them on U+2028)
    records = [loads_record(line) for line in split_lines(out.read_bytes())]
    assert [r["input"] for r in records] == queries and [r["i"] for r in records] == [0, 1, 2, 3]
    assert all(r["tag"] == "lone \ud800" for r in records)
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(queries)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"input": "q", "score": NaN}', ["in.jsonl:2", "NaN"]),
        ('{"input": "q", "score": -Infinity}', ["in.jsonl:2", "Infinity"]),
        ('{"input": "bad \\ud800 text"}', ["in.jsonl:2", "lone surrogate"]),
        ('{"input": "bad \\udfff"}', ["in.jsonl:2", "lone surrogate"]),
    ],
)
def test_generate_refuses_bad_json_before_writing(tmp_path: Path, small_config: Path, capsys, line: str, words):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"input": "fine"}\n' + line + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code, err = cli(capsys, "generate", "--input", inputs, "--config", small_config, "--output", out, "--no-progress")
    assert code == 2
    one_line_error(err, *words)
    assert not out.exists()  # nothing half-written (it used to leave an empty file)


# -- 6. Graph API: bad input raises InputError and leaves the thread untouched ---------------------


@pytest.fixture(scope="module")
def thread_graph(engine, toy_config):
    from langgraph.checkpoint.memory import InMemorySaver

    from switchgen.graph import build_graph

    config = toy_config(patch_size=5, max_new_tokens=10)
    return build_graph(config, engine=engine, checkpointer=InMemorySaver())


BAD_TURNS = [
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": "many"}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": 2.5}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": -40}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "x", "tokens": True}]}, None, "'tokens' must be a whole number"),
    ({"query": "q", "forced": [True]}, None, "unknown candidate True"),
    ({"query": "q", "forced": [1.0]}, None, "unknown candidate 1.0"),
    ({"query": "q", "forced": [None]}, None, "unknown candidate None"),
    ({"query": "bad \ud800 text"}, None, "lone surrogate"),
    ({"messages": [("user", "fine"), ("assistant", "x\udfff"), ("user", "q")]}, None, "lone surrogate"),
    ({"query": "q", "segments": [{"candidate": "A", "text": "\ud83d"}]}, None, "lone surrogate"),
    ({"query": "q"}, {"seed": 2**64}, "seed"),
    ({"query": "q"}, {"seed": -1}, "seed"),
    ({"query": "q"}, {"seed": 10**5000}, "seed"),
    ({"query": "q"}, {"review": "no"}, "review"),
    ({"query": "q"}, {"review": 1}, "review"),
    ({"query": "q"}, {"patch_size": 2.5}, "patch_size"),
    ({"query": "q"}, {"max_new_tokens": True}, "max_new_tokens"),
]


@pytest.mark.parametrize(("turn", "context", "words"), BAD_TURNS)
def test_graph_refuses_bad_input_and_leaves_the_thread(thread_graph, turn, context, words):
    import uuid

    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    thread_graph.invoke({"query": "What is 2 plus 3?"}, thread)
    before = thread_graph.get_state(thread)
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        thread_graph.invoke(turn, thread, context=context)
    after = thread_graph.get_state(thread)
    assert after.config == before.config and after.values["messages"] == before.values["messages"]
    # ... and the thread goes on answering
    result = thread_graph.invoke({"query": "And 3 plus 4?"}, thread)
    assert len(result["messages"]) == 4 and result["tokens_used"] <= 10


def test_given_segment_tokens_count_against_the_budget(thread_graph):
    thread = {"configurable": {"thread_id": "budget"}}
    result = thread_graph.invoke({"query": "q", "segments": [{"candidate": "A", "text": "Sure, ", "tokens": 0}]}, thread)
    assert result["tokens_used"] <= 10
    result = thread_graph.invoke({"query": "q", "segments": [{"candidate": "A", "text": "Sure, ", "tokens": 10}]}, thread)
    assert result["tokens_used"] == 10 and len(result["segments"]) == 1  # the budget is spent: nothing more written
