"""Tasks: metrics on real answer strings, loaders on fixture files in each source's format, errors.

The built-in definitions point at Hugging Face datasets, which cannot be downloaded here; each is
run on a fixture file (tests/data/tasks/NAME.jsonl) holding rows in that dataset's format, so its
template, choices and reference handling are the real ones.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from switchgen.core.errors import ConfigError, InputError
from switchgen.tasks import Source, load_task, make_metric, task_names
from switchgen.tasks.metrics import choice_letter, final_number

DATA = Path(__file__).parent / "data" / "tasks"


def score(metric: str, output: str, reference) -> float:
    return make_metric(metric).score([output], [{"reference": reference, "query": ""}])[0]


@pytest.mark.parametrize(
    ("metric", "output", "reference", "expected"),
    [
        ("exact_match", "Answer: Pelmora.", "Answer: Pelmora", 1.0),
        ("exact_match", "  the Eiffel Tower!", ["Eiffel Tower", "La tour Eiffel"], 1.0),
        ("exact_match", "Well, let me think. Answer: Pelmora.", "Answer: Pelmora", 0.0),
        ("exact_match", "Paris, France", "Paris", 0.0),
        ("answer_exact_match", "not not True is True, so the answer is False.", "False", 1.0),
        ("answer_exact_match", "False\nbecause not True is False", "False", 1.0),
        ("answer_exact_match", "So the answer is Paris, France.", "Paris", 0.0),
        ("numeric", "48/2 = 24 in May, 48+24 = 72 in all.\n#### 72", "72", 1.0),
        ("numeric", "She earned $1,250.00 in total.", "1250", 1.0),
        ("numeric", "So the answer is 10 dollars, not 12.", "10", 1.0),
        ("numeric", "I think it is 71.", "72", 0.0),
        ("numeric", "No idea.", "72", 0.0),
        ("choice", "The answer is (C).", "C", 1.0),
        ("choice", "Answer: B", "B", 1.0),
        ("choice", "D. Nitrofurantoin is safe in pregnancy.", "D", 1.0),
        ("choice", "A dog is not an option here", "A", 0.0),
        ("choice", "(B) Ceftriaxone", "D", 0.0),
        ("f1", "George Rankin was a politician", ["politician", "political leader"], 2 * (1 / 4 * 1) / (1 / 4 + 1)),
        ("f1", "a political leader", ["politician", "political leader"], 1.0),
        ("f1", "a banker", ["politician"], 0.0),
        ("contains", "He worked as a politician in Australia.", ["politician", "pol"], 1.0),
        ("contains", "He was a police officer.", ["pol"], 0.0),
        ("contains", "Well, he is a baker by trade.", ["baker", ["a baker"]], 1.0),  # fields holding lists
        ("math", "so the graph has $\\boxed{2}$ vertical asymptotes", "2", 1.0),
        ("math", "The maximum is \\boxed{\\sqrt{2}}.", "\\sqrt{2}", 1.0),
        ("math", "We get \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
        ("math", "We get \\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
    ],
)
def test_metrics_on_real_strings(metric, output, reference, expected):
    got = score(metric, output, reference)
    assert got == pytest.approx(expected)
    lo, hi = make_metric(metric).range
    assert lo <= got <= hi


def test_extractors():
    assert final_number("#### 1,000") == 1000.0
    assert final_number("it costs -3.5 degrees") == -3.5
    assert choice_letter("I'd say (A), no wait, the answer is (D)") == "D"
    assert choice_letter("the answer is a bit unclear") is None


def _upper_match(output: str, reference) -> float:
    return float(output.strip().upper() == str(reference).upper())


def test_user_metric_and_unknown_metric():
    metric = make_metric(f"{__name__}:_upper_match", {"range": [0, 1]})
    assert metric.score(["yes ", "no"], [{"reference": "YES"}, {"reference": "YES"}]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        make_metric("bleu")
    with pytest.raises(ConfigError, match="cannot import"):
        make_metric("no_such_module_xyz:fn")


# What each built-in renders for its fixture's first row: (a phrase of the query, the reference).
BUILTIN = {
    "gsm8k": ("How many clips did Natalia sell", "72"),
    "truthfulqa": ("smallest country", None),
    "bbh": ("Q: not ( ( not not True ) ) is", "False"),
    "popqa": ("George Rankin's occupation", ["politician", "political leader", "political figure", "polit.", "pol"]),
    "arc-challenge": ("A. dry palms\nB. wet palms", "A"),
    "mmlu-pro": ("I. Unsafe practices, Distress, Fear, Serious", "I"),
    "medqa": ("D. Nitrofurantoin", "D"),
    "math": ("vertical asymptotes", "2"),
    "alpaca-eval": ("famous actors", None),
}


def test_every_builtin_is_covered_and_listed():
    assert set(BUILTIN) <= set(task_names())
    for name in task_names():
        task = load_task(name)
        assert task.splits == ["train", "test"], name
        assert task.describe().startswith("train=hf:") or name.startswith("skills"), name


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_definitions_on_fixtures_in_their_format(name):
    spec = load_task(name).spec.model_copy(update={"test": Source(path=str(DATA / f"{name}.jsonl"))})
    task = load_task(spec)
    records = task.records("test")
    assert len(records) == 2 and len({r["id"] for r in records}) == 2
    phrase, reference = BUILTIN[name]
    assert phrase in records[0]["query"]
    if reference is not None:
        assert records[0]["reference"] == reference
    if name == "truthfulqa":  # shuffled, deterministically: the reference letter follows the true option
        first = records[0]
        assert first["choices"]["ABCD".index(first["reference"])].startswith("Nauru")
        assert load_task(spec).records("test") == records
    if name == "arc-challenge":  # numeric labels map to letters
        assert records[1]["reference"] == "A" and "A. cellular telephone" in records[1]["query"]
    if name == "popqa":
        assert records[0]["id"] == "4222362"
    if name == "math":
        assert records[1]["reference"] == "\\sqrt{2}"


def _write_formats(tmp_path: Path) -> dict[str, Path]:
    rows = [{"q": "What is 2 plus 3?", "a": "5"}, {"q": "What is 4 plus 4?", "a": "8"}, {"q": "1+1?", "a": "2"}]
    out = {}
    out["jsonl"] = tmp_path / "d.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["json"] = tmp_path / "d.json"
    out["json"].write_text(json.dumps(rows))
    out["csv"] = tmp_path / "d.csv"
    with out["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["q", "a"])
        writer.writeheader()
        writer.writerows(rows)
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    out["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    out["disk"] = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(out["disk"]))
    hub = tmp_path / "hub-format"  # a dataset repository's layout: load_dataset(folder, split=...)
    hub.mkdir()
    (hub / "test.jsonl").write_text(out["jsonl"].read_text())
    (hub / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    out["hub"] = hub
    return out


def test_local_formats_and_hf_loaders_give_the_same_records(tmp_path):
    files = _write_formats(tmp_path)
    seen = []
    for kind, path in files.items():
        if kind == "disk":
            source = {"path": str(path), "split": "test"}
        elif kind == "hub":
            source = {"dataset": str(path), "split": "test"}
        else:
            source = {"path": path.name}
        (tmp_path / f"{kind}.yaml").write_text(json.dumps(
            {"name": f"t-{kind}", "test": source, "train": source, "query": "Q: {q}", "reference": "a", "metric": "numeric", "limit": 2}
        ))
        task = load_task(tmp_path / f"{kind}.yaml")  # relative paths resolve beside the YAML
        seen.append([(r["id"], r["query"], r["reference"]) for r in task.records("test")])
        assert len(task.records("test", limit=1)) == 1
    assert all(s == seen[0] for s in seen)
    assert seen[0] == [("test-0", "Q: What is 2 plus 3?", "5"), ("test-1", "Q: What is 4 plus 4?", "8")]


def test_bad_task_input_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'gsm9k'"):
        load_task("gsm9k")
    base = {"name": "t", "test": {"path": str(tmp_path / "missing.jsonl")}, "query": "{q}", "reference": "a", "metric": "exact_match"}
    with pytest.raises(InputError, match="missing.jsonl: no such file"):
        load_task(base).records("test")
    with pytest.raises(InputError, match="has no train split"):
        load_task(base).records("train")
    with pytest.raises(InputError, match="unknown split 'dev'"):
        load_task(base).records("dev")
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_task({**base, "test": {}})
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "x", "a": "1"}\n')
    with pytest.raises(InputError, match=r"uses \{q\} but the row has no such field \(fields: a, question\)"):
        load_task({**base, "test": {"path": str(data)}}).records("test")
    with pytest.raises(InputError, match="no split 'dev'"):
        files = _write_formats(tmp_path)
        load_task({**base, "test": {"path": str(files["disk"]), "split": "dev"}}).records("test")


def test_switchgen_tasks_lists_source_and_metric(capsys):
    from switchgen.cli import main

    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(task_names())
    gsm8k = next(line for line in lines if line.startswith("gsm8k "))
    assert gsm8k.split()[1] == "numeric" and "test=hf:openai/gsm8k/main[test]" in gsm8k
