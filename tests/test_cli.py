"""`switchgen generate`: JSONL in, one record per query out, resumable, with one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from switchgen.cli import main
from switchgen.nodes.generator import MAX_CHARACTER_TOKENS

QUERIES = [
    "What is 2 plus 3?",
    "Tell me a short story.",
    "Why is the ocean salty? \u00e9\u4e2d",
    "Explain to a ten-year-old why the sky is blue.",
    "Which is bigger, 6 or 8?",
]

CONFIG_YAML = """\
candidates:
  - {name: P, role: pretrained, model: "toy:P", device: cpu}
  - {name: F, role: finetuned, model: "toy:F", device: cpu}
  - {name: A, role: aligned, model: "toy:A", device: cpu}
switcher: {strategy: learned, model: "toy:switcher", device: cpu, top_p: 0.7}
anchor: false
patch_size: 10
max_new_tokens: 40
seed: 0
"""

LOG_KEYS = {
    "query",
    "generated_segments",
    "segment_model_index",
    "generated_sequence",
    "candidates",
    "decisions",
}


def write_inputs(path: Path, queries: list[str] = QUERIES, blank_line: bool = True) -> Path:
    lines = [json.dumps({"id": i, "input": q, "meta": {"source": "test", "n": [i, i + 1]}}) for i, q in enumerate(queries)]
    if blank_line and len(lines) > 2:
        lines.insert(2, "")  # blank lines are skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def config_file(tmp_path: Path, toy_kit) -> Path:
    path = tmp_path / "toy-small.yaml"
    path.write_text(CONFIG_YAML)
    return path


def generate(*args: object) -> int:
    return main(["generate", *map(str, args), "--no-progress"])


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_floats(record: dict) -> tuple[dict, list]:
    """A record with the switcher's float outputs taken out (they may differ in the last bits when a
    prompt's prefix came from the KV cache rather than a fresh forward pass), and those floats."""
    record = json.loads(json.dumps(record))
    floats = []
    for d in record["generation_log"]["decisions"]:
        floats.append((d.pop("probabilities"), d.pop("digit_mass")))
    return record, floats


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=False):
        (ca, fa), (cb, fb) = without_floats(ra), without_floats(rb)
        assert ca == cb
        for (pa, ma), (pb, mb) in zip(fa, fb, strict=False):
            assert (pa is None) == (pb is None) and (ma is None) == (mb is None)
            if pa is not None:
                assert pa == pytest.approx(pb, rel=1e-4, abs=1e-6)
            if ma is not None:
                assert ma == pytest.approx(mb, rel=1e-4)


def check_records(records: list[dict], queries: list[str] = QUERIES) -> None:
    assert [r["input"] for r in records] == queries
    for i, record in enumerate(records):
        assert record["id"] == i and record["meta"] == {"source": "test", "n": [i, i + 1]}
        log = record["generation_log"]
        assert LOG_KEYS <= set(log)
        assert log["query"] == record["input"]
        assert log["candidates"] == ["P", "F", "A"]
        assert isinstance(record["output"], str)
        assert log["generated_sequence"] == record["output"] == "".join(log["generated_segments"])
        assert len(log["segment_model_index"]) == len(log["generated_segments"]) == len(log["decisions"]) >= 1
        assert all(0 <= k < 3 for k in log["segment_model_index"])
        assert [d["index"] for d in log["decisions"]] == log["segment_model_index"]
        assert log["tokens_used"] <= 40


# -- round trip -----------------------------------------------------------------------------


def test_round_trip_default_output_name(tmp_path: Path, config_file: Path, capsys):
    inputs = write_inputs(tmp_path / "queries.jsonl")
    assert generate("--input", inputs, "--config", config_file) == 0
    output = tmp_path / "queries_switch_generation.jsonl"
    assert output.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "queries.jsonl", "queries_switch_generation.jsonl", "queries_switch_generation.jsonl.fingerprint.json", "toy-small.yaml"
    ]
    check_records(read_records(output))
    assert output.read_bytes().endswith(b"\n")
    assert f"{len(QUERIES)} records in {output}" in capsys.readouterr().out


def test_round_trip_preset_and_overrides(tmp_path: Path, toy_kit):
    inputs = write_inputs(tmp_path / "in.jsonl", QUERIES[:2], blank_line=False)
    output = tmp_path / "sub" / "out.jsonl"
    code = generate("--input", inputs, "--preset", "toy", "--output", output, "--seed", 3, "--max-new-tokens", 30, "--patch-size", 10)
    assert code == 0
    records = read_records(output)
    assert [r["input"] for r in records] == QUERIES[:2]
    for r in records:
        assert r["generation_log"]["max_new_tokens"] == 30
        assert r["generation_log"]["tokens_used"] <= 30
        # A patch may run up to 3 tokens past its size to finish a UTF-8 character (toy: finish_characters).
        assert all(t <= 10 + MAX_CHARACTER_TOKENS - 1 for t in r["generation_log"]["segment_tokens"])


def switchgen_command() -> list[str]:
    exe = Path(sys.executable).with_name("switchgen")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("switchgen")
    return [found] if found else [sys.executable, "-m", "switchgen.cli"]


def run_console(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert env["SWITCHGEN_HOME"]  # the session's toy kit
    return subprocess.run(
        [*switchgen_command(), "generate", *map(str, args), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_console_script_round_trip_matches_in_process(tmp_path: Path, config_file: Path):
    inputs = write_inputs(tmp_path / "queries.jsonl", QUERIES[:3])
    done = run_console("--input", inputs, "--config", config_file)
    assert done.returncode == 0, done.stderr
    output = tmp_path / "queries_switch_generation.jsonl"
    check_records(read_records(output), QUERIES[:3])
    # The same seed in-process gives the same file.
    again = tmp_path / "again.jsonl"
    assert generate("--input", inputs, "--config", config_file, "--output", again) == 0
    assert_same_records(read_records(again), read_records(output))


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_resume_after_prefix_run(tmp_path: Path, config_file: Path, k: int):
    full_inputs = write_inputs(tmp_path / "all.jsonl", blank_line=False)
    prefix_inputs = write_inputs(tmp_path / "prefix.jsonl", QUERIES[:k], blank_line=False)
    output = tmp_path / "out.jsonl"
    assert generate("--input", prefix_inputs, "--config", config_file, "--output", output) == 0
    before = output.read_bytes()
    assert len(before.splitlines()) == k

    assert generate("--input", full_inputs, "--config", config_file, "--output", output) == 0
    after = output.read_bytes()
    assert after.startswith(before)
    assert after.splitlines()[:k] == before.splitlines()
    records = read_records(output)
    check_records(records)
    assert len({r["input"] for r in records}) == len(records) == len(QUERIES)

    # The resumed file is what one uninterrupted run writes.
    fresh = tmp_path / "fresh.jsonl"
    assert generate("--input", full_inputs, "--config", config_file, "--output", fresh) == 0
    assert_same_records(read_records(fresh), records)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_resume_after_torn_line(tmp_path: Path, config_file: Path, k: int):
    inputs = write_inputs(tmp_path / "q.jsonl")
    output = tmp_path / "q_switch_generation.jsonl"
    assert generate("--input", inputs, "--config", config_file) == 0
    finished = output.read_bytes()
    lines = finished.splitlines(keepends=True)
    assert len(lines) == len(QUERIES)
    torn = lines[k][: len(lines[k]) // 2]
    output.write_bytes(b"".join(lines[:k]) + torn)

    assert generate("--input", inputs, "--config", config_file) == 0
    after = output.read_bytes()
    assert after.splitlines()[:k] == [line.rstrip(b"\n") for line in lines[:k]]
    check_records(read_records(output))
    assert after.endswith(b"\n")
    # The records written after the resume are those of the uninterrupted run.
    assert_same_records(read_records(output), [json.loads(line) for line in lines])


def test_rerun_of_a_finished_file_changes_nothing(tmp_path: Path, config_file: Path, capsys):
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:2])
    assert generate("--input", inputs, "--config", config_file) == 0
    output = tmp_path / "q_switch_generation.jsonl"
    finished = output.read_bytes()
    capsys.readouterr()
    assert generate("--input", inputs, "--config", config_file) == 0
    assert output.read_bytes() == finished
    assert "resumed after 2" in capsys.readouterr().out


# -- errors ---------------------------------------------------------------------------------

GOOD = json.dumps({"input": "What is 2 plus 3?"})


def existing_record(query: str) -> str:
    return json.dumps({"input": query, "output": "kept", "generation_log": {}}) + "\n"


def record_settings(output: Path, config: Path) -> None:
    """The fingerprint a run of `config` records beside `output`, so that a rerun may resume it (if the
    configuration loads at all: a YAML that does not is refused before any fingerprint is compared)."""
    from switchgen.core.errors import SwitchgenError
    from switchgen.core.fingerprint import fingerprint_path, write_fingerprint
    from switchgen.generate import fingerprint
    from switchgen.graph import load_config

    try:
        write_fingerprint(fingerprint_path(output), fingerprint(load_config(config)))
    except SwitchgenError:
        pass


CASES = {
    # name: (input file text or None for a missing file, line named in the message or None)
    "malformed-json": (f"{GOOD}\n{GOOD}\n{{\"input\": \"unterminated\n", 3),
    "no-input-field": (f"{GOOD}\n{json.dumps({'text': 'hi'})}\n", 2),
    "input-not-a-string": (f"{json.dumps({'input': 5})}\n", 1),
    "input-empty": (f"{GOOD}\n{json.dumps({'input': '  '})}\n", 2),
    "not-an-object": (f"{json.dumps(['input', 'x'])}\n", 1),
    "empty-file": ("", None),
    "only-blank-lines": ("\n\n  \n", None),
    "missing-file": (None, None),
    "not-utf8": (GOOD.encode() + b"\n" + b'{"input": "caf\xe9"}\n', 2),
}


def check_error(code: int, err: str, *needles: str) -> str:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_file(tmp_path: Path, config_file: Path, capsys, case: str):
    text, lineno = CASES[case]
    inputs = tmp_path / "bad.jsonl"
    if isinstance(text, bytes):
        inputs.write_bytes(text)
    elif text is not None:
        inputs.write_text(text, encoding="utf-8")
    output = tmp_path / "bad_switch_generation.jsonl"
    output.write_text(existing_record("What is 2 plus 3?"))
    before = output.read_bytes()
    capsys.readouterr()
    code = generate("--input", inputs, "--config", config_file)
    err = capsys.readouterr().err
    check_error(code, err, str(inputs), *([f"{inputs}:{lineno}"] if lineno else []))
    assert output.read_bytes() == before


def test_output_file_not_utf8_is_left_alone(tmp_path: Path, config_file: Path, capsys):
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:2])
    output = tmp_path / "out.jsonl"
    output.write_bytes(existing_record(QUERIES[0]).encode() + b'{"input": "\xff\xfe"}\n')
    before = output.read_bytes()
    capsys.readouterr()
    code = generate("--input", inputs, "--config", config_file, "--output", output)
    check_error(code, capsys.readouterr().err, str(output))
    assert output.read_bytes() == before


def test_unknown_preset(tmp_path: Path, capsys):
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:1])
    output = tmp_path / "q_switch_generation.jsonl"
    output.write_text(existing_record(QUERIES[0]))
    before = output.read_bytes()
    code = generate("--input", inputs, "--preset", "no-such-preset")
    check_error(code, capsys.readouterr().err, "no-such-preset")
    assert output.read_bytes() == before


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        (CONFIG_YAML.replace('model: "toy:F"', 'model: "./does/not/exist"'), "does/not/exist"),
        (CONFIG_YAML.replace('model: "toy:switcher"', 'model: "./no/such/switcher"'), "no/such/switcher"),
        (CONFIG_YAML.replace('model: "toy:A"', 'model: "toy:Z"'), "toy:Z"),
        (CONFIG_YAML.replace("patch_size: 10", "patch_size: 100"), "patch_size"),
        (CONFIG_YAML.replace("seed: 0", "seed: 0\nunknown_field: 1"), "unknown_field"),
        ("candidates: [\n", None),
        ("- just\n- a list\n", None),
    ],
    ids=["missing-candidate-path", "missing-switcher-path", "unknown-toy-model", "patch-over-budget", "extra-field",
         "bad-yaml", "not-a-mapping"],
)
def test_bad_config(tmp_path: Path, capsys, toy_kit, yaml_text: str, needle: str | None):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:2])
    output = tmp_path / "q_switch_generation.jsonl"
    output.write_text(existing_record(QUERIES[0]))
    record_settings(output, config)
    before = output.read_bytes()
    capsys.readouterr()
    code = generate("--input", inputs, "--config", config)
    check_error(code, capsys.readouterr().err, *([needle] if needle else []))
    assert output.read_bytes() == before


def test_missing_config_file(tmp_path: Path, capsys):
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:1])
    code = generate("--input", inputs, "--config", tmp_path / "nope.yaml")
    check_error(code, capsys.readouterr().err, str(tmp_path / "nope.yaml"))
    assert not (tmp_path / "q_switch_generation.jsonl").exists()


@pytest.mark.parametrize(
    "existing, lineno",
    [
        (existing_record("Some other question?"), 1),
        (existing_record(QUERIES[0]) + existing_record("Some other question?"), 2),
        (existing_record("Some other question?") + '{"input": "torn', 1),
        (existing_record(QUERIES[0]) + "not json\n", 2),
        ("".join(existing_record(q) for q in QUERIES[:2]) + existing_record("third"), None),  # more than the input
        ("".join(existing_record(q) for q in QUERIES[:2]) + existing_record("third") + '{"inp', None),
    ],
    ids=["other-input", "other-input-line-2", "other-input-torn-tail", "not-json", "too-many", "too-many-torn-tail"],
)
def test_output_for_another_input_is_left_alone(tmp_path: Path, config_file: Path, capsys, existing: str, lineno):
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:2])
    output = tmp_path / "out.jsonl"
    output.write_text(existing, encoding="utf-8")
    before = output.read_bytes()
    capsys.readouterr()
    code = generate("--input", inputs, "--config", config_file, "--output", output)
    check_error(code, capsys.readouterr().err, str(output), *([f"{output}:{lineno}"] if lineno else []))
    assert output.read_bytes() == before


def test_console_script_errors_are_one_line(tmp_path: Path, toy_kit):
    """A real process: a missing model path, found after the first candidate has loaded."""
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG_YAML.replace('model: "toy:F"', 'model: "./does/not/exist"'))
    inputs = write_inputs(tmp_path / "q.jsonl", QUERIES[:2])
    output = tmp_path / "q_switch_generation.jsonl"
    output.write_text(existing_record(QUERIES[0]))
    record_settings(output, config)
    before = output.read_bytes()
    done = run_console("--input", inputs, "--config", config)
    line = check_error(done.returncode, done.stderr, "does/not/exist")
    assert line.startswith("switchgen: error:")
    assert output.read_bytes() == before


@pytest.mark.parametrize("command", ["generate", "chat", "serve", "merge-switcher", "api", "bench", "rollouts", "train",
                                     "eval", "analyze", "distill", "presets", "tasks", "toy-models"])
def test_every_command_has_help(command: str, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and f"switchgen {command}" in capsys.readouterr().out
