"""Fidelity, end to end at a small size: on the skills kit's task built to need switching
(skills-switch: A writes "Answer:", P knows the city, A ends the answer), a switcher trained by
`switchgen rollouts` + `switchgen train` beats random, untuned, route and every single model on
the test split by more than the paired bootstrap interval, as `switchgen eval` measures it.

Small size: a 12-token budget (the answer is 5 tokens and EOS), k=2, one pass over the 240 train
queries, 30 test queries. The README's table is the same commands at the preset's full budget.
"""

from __future__ import annotations

import json

import pytest

from switchgen.cli import main
from switchgen.evaluation.stats import paired_difference

pytest.importorskip("switchgen.kits.skills", reason="the skills kit has not landed on this branch")

BASELINES = ["single:P", "single:F", "single:A", "random", "untuned", "route"]
SIZE = ["--max-new-tokens", "12"]


def test_trained_switcher_beats_every_baseline_on_skills_switch(tmp_path):
    rollouts, adapter, out = tmp_path / "rollouts.jsonl", tmp_path / "switcher", tmp_path / "eval"
    assert main(["rollouts", "--task", "skills-switch", "--preset", "skills", "--out", str(rollouts), "--k", "2",
                 "--seed", "0", "--concurrency", "4", "--no-progress", *SIZE]) == 0
    assert main(["train", "--data", str(rollouts), "--out", str(adapter), "--lr", "5e-3", "--epochs", "30",
                 "--batch-size", "16", "--lora-r", "8", "--no-progress"]) == 0
    report = json.loads((adapter / "switchgen-training.json").read_text())
    assert report["after"]["digit_mass"] > 0.9 > report["before"]["digit_mass"]
    assert main(["eval", "--task", "skills-switch", "--preset", "skills", "--methods", ",".join([*BASELINES, "switch"]),
                 "--adapter", str(adapter), "--out", str(out), "--limit", "30", "--seed", "0", "--no-progress",
                 *SIZE]) == 0

    def scores(method: str) -> list[float]:
        lines = (out / "skills-switch" / f"{method}.jsonl").read_text().splitlines()
        return [json.loads(line)["score"] for line in lines]

    switch = scores("switch")
    assert len(switch) == 30
    for method in BASELINES:
        delta, (lo, hi) = paired_difference(switch, scores(method))
        assert lo > 0, f"switch vs {method}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"
