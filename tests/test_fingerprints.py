"""Resumable outputs cannot mix runs: `switchgen generate`, `eval` and `rollouts` (the command, in process,
real forward passes on the toy kit) refuse a rerun with other settings into an existing output, in one
line naming the difference and the ways out, and leave the output untouched; the same settings resume;
`--overwrite` starts over. (`distill`: tests/test_distill.py; the shared check: core/fingerprint.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switchgen.cli import main
from switchgen.core.fingerprint import differences, fingerprint_path

SMALL = ["--max-new-tokens", "8", "--patch-size", "4"]


def refused(capsys, argv: list, *needles: str) -> str:
    """Run `argv`; it must fail with one line holding `needles` and the ways out."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in (*needles, "--overwrite", "choose another"):
        assert needle in err, (needle, err)
    return err


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def generated(toy_kit, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("generate")
    inputs = root / "q.jsonl"
    inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in ("Hi there.", "Why is the sky blue?")))
    output = root / "out.jsonl"
    assert main(["generate", "--input", str(inputs), "--output", str(output), "--preset", "toy", *SMALL, "--no-progress"]) == 0
    return inputs, output


def test_generate_resumes_same_settings_refuses_others(generated, tmp_path, capsys):
    inputs, made = generated
    output = tmp_path / "out.jsonl"
    output.write_bytes(made.read_bytes())
    fingerprint_path(output).write_bytes(fingerprint_path(made).read_bytes())
    before = snapshot(output, fingerprint_path(output))
    args = ["generate", "--input", inputs, "--output", output, "--no-progress"]
    assert main([str(a) for a in [*args, "--preset", "toy", *SMALL]]) == 0  # the same settings: nothing to do
    assert "(resumed after 2)" in capsys.readouterr().out and snapshot(*before) == before
    refused(capsys, [*args, "--preset", "toy", "--max-new-tokens", 8, "--patch-size", 2, "--seed", 5],
            "config.patch_size was 4, now 2", "config.seed was null, now 5", "--output")
    refused(capsys, [*args, "--preset", "skills", *SMALL], 'config.candidates[0].model was "toy:P", now "skills:P"')
    assert snapshot(*before) == before
    # --overwrite starts over with the new settings, and records them.
    assert main([str(a) for a in [*args, "--preset", "toy", "--max-new-tokens", 8, "--patch-size", 2, "--overwrite"]]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2 and all(r["generation_log"]["segment_tokens"][0] <= 2 + 2 for r in records)
    recorded = json.loads(fingerprint_path(output).read_text())["fingerprint"]
    assert recorded["config"]["patch_size"] == 2 and recorded["revisions"]["toy:A"].startswith("switchgen-toy")


def test_generate_refuses_an_output_from_before_fingerprints(generated, tmp_path, capsys):
    inputs, made = generated
    output = tmp_path / "old.jsonl"
    output.write_bytes(made.read_bytes())  # records, no fingerprint beside them: an older switchgen's file
    refused(capsys, ["generate", "--input", inputs, "--output", output, "--preset", "toy", *SMALL],
            "has no record of the settings that made it", "old.jsonl.fingerprint.json")
    assert output.read_bytes() == made.read_bytes() and not fingerprint_path(output).exists()


@pytest.fixture(scope="module")
def evaluated(toy_kit, tmp_path_factory) -> tuple[Path, list[str]]:
    from _eval_run import toy_task

    root = tmp_path_factory.mktemp("eval")
    args = ["eval", "--task", str(toy_task(root)), "--preset", "toy", "--limit", "2", "--no-progress"]
    assert main([*args, *SMALL, "--methods", "single:A,switch", "--out", str(root / "out")]) == 0
    return root / "out", args


def test_eval_resumes_same_settings_refuses_others(evaluated, tmp_path, capsys):
    import shutil

    made, args = evaluated
    out = tmp_path / "out"
    shutil.copytree(made, out)
    files = [out / "toy-words" / name for name in ("single:A.jsonl", "switch.jsonl")]
    before = snapshot(*files, *(fingerprint_path(f) for f in files))
    assert main([*args, *SMALL, "--methods", "single:A,switch", "--out", str(out)]) == 0  # resumed: nothing new
    assert snapshot(*before) == before
    # The case: --patch-size 4 --seed 5 into an output made at patch size 4, seed 0.
    refused(capsys, [*args, "--max-new-tokens", 8, "--patch-size", 2, "--seed", 5, "--methods", "single:A,switch",
                     "--out", out], "single:A.jsonl was made with other settings", "run.config.patch_size was 4, now 2",
            "run.config.seed was null, now 5")
    # A new method beside records of other settings would be compared with them as if one run made both.
    refused(capsys, [*args, "--max-new-tokens", 8, "--patch-size", 2, "--methods", "random", "--out", out],
            "single:A.jsonl was made with other settings (run.config.patch_size was 4, now 2)")
    assert snapshot(*before) == before
    # --overwrite: this run's files start over, the others made with other settings go.
    assert main([*args, "--max-new-tokens", "8", "--patch-size", "2", "--methods", "switch", "--out", str(out),
                 "--overwrite"]) == 0
    assert not files[0].exists() and not fingerprint_path(files[0]).exists()
    answers = [json.loads(line) for line in files[1].read_text().splitlines()]
    assert len(answers) == 2 and all(s["tokens"] <= 2 + 2 for a in answers for s in a["segments"])
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(r["method"], r["patch_size"]) for r in rows] == [("switch", 2)]


def test_eval_refuses_a_folder_from_before_fingerprints(evaluated, tmp_path, capsys):
    import shutil

    made, args = evaluated
    out = tmp_path / "old"
    shutil.copytree(made, out)
    for sidecar in out.glob("*/*.fingerprint.json"):
        sidecar.unlink()
    refused(capsys, [*args, *SMALL, "--methods", "switch", "--out", out], "has no record of the settings that made it")


def test_rollouts_resume_and_overwrite(toy_kit, tmp_path, capsys):
    """The refusal itself: tests/test_training.py (a changed --k)."""
    from _eval_run import toy_task

    out = tmp_path / "rollouts.jsonl"
    args = ["rollouts", "--task", str(toy_task(tmp_path)), "--preset", "toy", *SMALL, "--k", "1", "--instances", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    before = snapshot(out, fingerprint_path(out))
    assert main(args) == 0 and snapshot(*before) == before
    refused(capsys, [*args, "--seed", "3"], "settings.seed was 0, now 3")
    assert main([*args, "--seed", "3", "--overwrite"]) == 0
    assert json.loads(fingerprint_path(out).read_text())["fingerprint"]["settings"]["seed"] == 3
    assert out.read_bytes() != before[out]


def test_differences_name_each_setting_and_ignore_unknown_revisions():
    old = {"config": {"patch_size": 4, "candidates": [{"model": "a"}]}, "revisions": {"org/m": None, "x": "1"}}
    new = {"config": {"patch_size": 2, "candidates": [{"model": "b"}]}, "revisions": {"org/m": "abc", "x": "1"}}
    assert differences(old, new) == ['config.candidates[0].model was "a", now "b"', "config.patch_size was 4, now 2"]
    assert differences(old, {**old, "task": {"name": "t"}}) == ['task was (not set), now {"name": "t"}']
