"""switchgen analyze on records from real graph runs, checked against independent recomputations.

The eval folder is produced by real forward passes on the toy kit (every method a real graph run);
the checks below recount everything from the raw JSONL with plain loops and the standard library,
so a mistake in switchgen.analysis.stats cannot hide behind itself.
"""

from __future__ import annotations

import json
import statistics
import struct
from collections import Counter
from pathlib import Path

import pytest

from switchgen.analysis import analyze


def raw(root: Path, task: str, method: str) -> list[dict]:
    return [json.loads(line) for line in (root / task / f"{method}.jsonl").read_text().splitlines() if line.strip()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(eval_dir: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    path = analyze(eval_dir, out)
    return path, json.loads((out / "analysis.json").read_text())


def test_report_embeds_every_plot(report, eval_dir):
    path, numbers = report
    text = path.read_text()
    images = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert {img.rsplit("_", 1)[0] for img in images} == {"positions", "sequences", "tokens", "cost", "patch_sizes"}
    for img in images:
        width, height = png_size(path.parent / img)
        assert width > 300 and height > 150
    for task, task_numbers in numbers.items():
        assert f"## {task}" in text
        assert task_numbers["focus"] == "switch" and task_numbers["focus_why"] == "the default"
        assert "Analysed method: `switch` (the default)." in text
        assert {"switch", "random"} <= set(task_numbers["switching"])
        assert not any(m.startswith("single:") or "@" in m for m in task_numbers["switching"])


def test_patch_size_ablation_is_one_command(report, eval_dir):
    _, numbers = report
    results = json.loads((eval_dir / "results.json").read_text())["results"]
    sizes = {r["method"]: r["patch_size"] for r in results}
    for base in ("switch", "random", "untuned"):
        assert sizes[f"{base}@4"] == 4 and sizes[f"{base}@12"] == 12
        for answer in raw(eval_dir, "toy-words", f"{base}@4"):  # 4-token patches: every full patch has 4 tokens
            assert answer["segments"] and all(s["tokens"] == 4 for s in answer["segments"][:-1])
    assert sizes["switch"] == sizes["single:A"] == 8  # the configuration's
    assert "| patch size |" in (eval_dir / "results.md").read_text()
    ablation = numbers["toy-words"]["patch_sizes"]
    assert [p["patch_size"] for p in sorted(ablation["switch"], key=lambda p: p["patch_size"])] == [4, 8, 12]
    assert [p["patch_size"] for p in ablation["untuned"]] == [4, 12]  # untuned ran only in the ablation
    for p in ablation["random"]:
        method = "random" if p["patch_size"] == 8 else f"random@{p['patch_size']}"
        answers = raw(eval_dir, "toy-words", method)
        assert p["mean"] == pytest.approx(sum(a["score"] for a in answers) / len(answers))


def test_sequence_statistics_match_a_recount(report, eval_dir):
    _, numbers = report
    for task, task_numbers in numbers.items():
        answers = raw(eval_dir, task, "switch")
        authors = [[s["candidate"] for s in a["segments"]] for a in answers]
        for n in (2, 3):
            expected = {}
            for seq in {tuple(x[i : i + n]) for x in authors for i in range(len(x) - n + 1)}:
                using = [a["score"] for a, x in zip(answers, authors, strict=True) if any(tuple(x[i : i + n]) == seq for i in range(len(x) - n + 1))]
                others = [a["score"] for a, x in zip(answers, authors, strict=True) if not any(tuple(x[i : i + n]) == seq for i in range(len(x) - n + 1))]
                effect = sum(using) / len(using) - sum(others) / len(others) if others else None
                expected[seq] = (len(using), len(using) / len(answers), effect)
            got = {tuple(s["sequence"]): (s["used"], s["frequency"], s["effect"]) for s in numbers[task]["sequences"][str(n)]}
            assert got.keys() == expected.keys() and len(got) >= 2
            for seq, (used, freq, effect) in expected.items():
                assert got[seq][0] == used and got[seq][1] == pytest.approx(freq)
                assert (got[seq][2] is None) == (effect is None)
                if effect is not None:
                    assert got[seq][2] == pytest.approx(effect)
            points = [(f, e) for _, f, e in expected.values() if e is not None]
            r = task_numbers["correlation"][str(n)]
            try:
                want = statistics.correlation([p[0] for p in points], [p[1] for p in points])
            except statistics.StatisticsError:  # fewer than 2 points or a constant variable
                want = None
            if len(points) < 3:
                want = None
            assert (r is None) == (want is None)
            if want is not None:
                assert r == pytest.approx(want)


def test_positions_tokens_and_table_match_a_recount(report, eval_dir):
    _, numbers = report
    for task, task_numbers in numbers.items():
        candidates = task_numbers["candidates"]
        for method in task_numbers["switching"]:
            answers = raw(eval_dir, task, method)
            shares = task_numbers["positions"][method]
            for i, n in enumerate(shares["answers"]):
                at_i = [a["segments"][i]["candidate"] for a in answers if len(a["segments"]) > i]
                assert n == len(at_i)
                for c, row in zip(shares["candidates"], shares["shares"], strict=True):
                    assert row[i] == pytest.approx(at_i.count(c) / len(at_i))
            tokens = Counter()
            for a in answers:
                for s in a["segments"]:
                    tokens[s["candidate"]] += s["tokens"]
            assert task_numbers["tokens_by_candidate"][method] == dict(tokens)
        # Table 5, recounted: the fixture's metric is 0/1, so correct means a score of 1.
        singles = {m: {a["id"]: a["score"] for a in raw(eval_dir, task, m)} for m in task_numbers["methods"] if m.startswith("single:")}
        assert [m.removeprefix("single:") for m in singles] == candidates
        cells = Counter()
        for a in raw(eval_dir, task, "switch"):
            right = sum(scores[a["id"]] == 1.0 for scores in singles.values())
            row = "all correct" if right == len(singles) else "all wrong" if right == 0 else "some correct"
            cells[row, a["score"] == 1.0] += 1
        table = task_numbers["singles_vs_switch"]["rows"]
        for row, v in table.items():
            assert (v["switch_correct"], v["switch_wrong"]) == (cells[row, True], cells[row, False])
        assert sum(cells.values()) == task_numbers["singles_vs_switch"]["n"] == len(raw(eval_dir, task, "switch"))
        costs = {c["method"]: c for c in task_numbers["costs"]}
        for m in task_numbers["methods"]:
            answers = raw(eval_dir, task, m)
            assert costs[m]["tokens"] == pytest.approx(sum(a["tokens_used"] for a in answers) / len(answers))


def test_analyze_cli_bad_input_is_one_line(eval_dir, tmp_path, capsys):
    from switchgen.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad" / "t"
    bad.mkdir(parents=True)
    (bad / "switch.jsonl").write_text('{"id": "1", "score": 1.0, "segments": [{"text": "x"}]}\n')
    (tmp_path / "a-file").write_text("x")
    cases = ((["analyze", str(tmp_path / "missing")], "no such folder"), (["analyze", str(empty)], "no <task>/<method>.jsonl"),
             (["analyze", str(bad.parent)], "switch.jsonl:1: not an eval record"),
             (["analyze", str(eval_dir), "--out", str(tmp_path / "a-file")], "is not a folder"))
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_analyze_names_its_method_and_refuses_one_not_in_the_run(eval_dir, tmp_path, capsys):
    import shutil

    from switchgen.cli import main

    assert main(["analyze", str(eval_dir), "--out", str(tmp_path / "r1")]) == 0
    assert "toy-words: author sequences of switch (the default)" in capsys.readouterr().err
    assert main(["analyze", str(eval_dir), "--out", str(tmp_path / "r2"), "--method", "random"]) == 0
    assert "toy-words: author sequences of random (--method)" in capsys.readouterr().err
    assert "### Author sequences (random)" in (tmp_path / "r2" / "report.md").read_text()
    assert main(["analyze", str(eval_dir), "--out", str(tmp_path / "r3"), "--method", "fixed:A+P"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--method fixed:A+P: not in" in err and "single:P, single:F, single:A, switch" in err
    assert not (tmp_path / "r3").exists()
    # A run without switch: the report says which method it analysed instead, and why.
    other = tmp_path / "no-switch"
    shutil.copytree(eval_dir, other, ignore=shutil.ignore_patterns("switch*", "report*"))
    assert main(["analyze", str(other)]) == 0
    assert "author sequences of random (no switch in this run" in capsys.readouterr().err
    assert "Analysed method: `random` (no switch in this run: the first switching method" in (other / "report" / "report.md").read_text()


def test_binary_scores_get_wilson_intervals(eval_dir):
    """0/1 scores: Wilson's score interval, recomputed here from its formula (20/20 is not [1, 1]);
    the paired differences keep the bootstrap."""
    import math

    from switchgen.evaluation.stats import mean_interval, wilson_ci

    def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
        p = k / n
        centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)

    assert wilson_ci(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4) and wilson_ci(0, 20)[0] == 0.0
    assert mean_interval([1.0] * 20) == (wilson_ci(20, 20), "wilson")
    assert mean_interval([0.5, 1.0, 0.0])[1] == "bootstrap"
    rows = json.loads((eval_dir / "results.json").read_text())["results"]
    for row in rows:
        scores = [a["score"] for a in raw(eval_dir, row["task"], row["method"])]
        assert set(scores) <= {0.0, 1.0} and row["ci_method"] == "wilson"
        assert row["ci"] == pytest.approx(wilson(int(sum(scores)), len(scores)), abs=1e-12)
        if row["delta_ci"] is not None:
            assert row["delta_ci"][0] <= row["delta_vs_aligned"] <= row["delta_ci"][1]
    assert "Wilson's score interval" in (eval_dir / "results.md").read_text()


def test_plots_show_n(report, eval_dir, tmp_path):
    """The heat map reads count/n in each cell and fades a column by its n; the sequence scatter sizes
    each marker by the answers using it and names n beside each label."""
    from switchgen.analysis.plots import position_heatmaps, sequence_scatter
    from switchgen.analysis.stats import SequenceStat, authors_by_position
    from switchgen.core.records import read_eval_records

    _, numbers = report
    # 4-token and 12-token patches of one budget together: the later patches are reached by fewer answers.
    records = [r for m in ("switch@4", "switch@12") for r in read_eval_records(eval_dir / "toy-words" / f"{m}.jsonl")]
    shares = authors_by_position(records, ["P", "F", "A"])
    answers = shares.answers
    assert answers[-1] < answers[0]
    fig = position_heatmaps("toy-words", {"switch": shares}, tmp_path / "h.png")
    alpha = fig.axes[0].images[0].get_alpha()
    assert [round(float(a), 6) for a in alpha[0]] == [round(max(0.15, (n / max(answers)) ** 0.5), 6) for n in answers]
    assert alpha[0][-1] < 1.0 == alpha[0][0]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[: len(answers)] == [f"{round(v * n)}/{n}" for v, n in zip(shares.shares[0], answers, strict=True)]
    stats = {int(n): [SequenceStat(tuple(s["sequence"]), s["used"], s["frequency"], s["mean_with"], s["mean_without"])
                      for s in seqs] for n, seqs in numbers["toy-words"]["sequences"].items()}
    fig = sequence_scatter("toy-words", "switch", stats, {2: None, 3: None}, tmp_path / "s.png")
    shown = [s for n in (2, 3) for s in stats[n] if s.effect is not None]
    sizes = [float(x) for c in fig.axes[0].collections for x in c.get_sizes()]
    most = max(s.used for n in (2, 3) for s in stats[n])
    assert sizes == pytest.approx([12 + 188 * s.used / most for s in shown])
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels and labels <= {f"{s.label} (n={s.used})" for s in shown}


@pytest.fixture(scope="module")
def eval_dir(toy_kit, tmp_path_factory) -> Path:
    """One real eval run with the patch-size ablation (switch, random, untuned at 4 and 12 tokens)."""
    from _eval_run import write_eval_dir
    from conftest import toy_config_dict

    # Seed 2: the switch's answers follow different author sequences and score differently (both needed
    # for sequence effects to exist); which seed does so depends on the engine's sampler.
    return write_eval_dir(tmp_path_factory.mktemp("eval"), toy_config_dict, "single:P,single:F,single:A,switch,random",
                          "--patch-sizes", "4,12", "--seed", "2")


def test_heat_maps_list_only_the_switching_methods_authors(tmp_path: Path):
    """A baseline with an author of its own (logit-merge's `merge`, soup's `soup`) adds no row to the
    switching methods' heat maps and token shares: they would always read 0/n."""
    from switchgen.analysis.report import analyze_task
    from switchgen.core.records import EvalRecord, EvalRun, TaskRun

    def record(i: int, authors: str) -> EvalRecord:
        segments = [{"candidate": a, "index": "PFA".index(a) if a in "PFA" else 0, "tokens": 2} for a in authors]
        return EvalRecord.model_validate({"id": str(i), "score": i % 2, "segments": segments, "tokens_used": 2 * len(authors)})

    switch = [record(i, "APA" if i % 2 else "AAP") for i in range(6)]
    merged = [EvalRecord.model_validate({"id": str(i), "score": 0, "segments": [{"candidate": "merge", "tokens": 4}]})
              for i in range(6)]
    task = TaskRun("t", {"switch": switch, "logit-merge": merged})
    _, numbers = analyze_task(EvalRun(tmp_path, {"t": task}, []), task, tmp_path, "switch", None)
    assert numbers["positions"]["switch"]["candidates"] == ["P", "A"]
    assert set(numbers["tokens_by_candidate"]["switch"]) == {"P", "A"}
