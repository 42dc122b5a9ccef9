"""The skills kit through `switchgen eval`: the designed differences, measured.

Each single model wins the task built for it, and on skills-switch no single model gets far while
a per-question author sequence (the oracle over fixed sequences) answers nearly everything. Real
greedy generations of the kit's checkpoints, scored by the tasks' own metrics.
"""

from __future__ import annotations

import json

import pytest

from switchgen.evaluation import method_file, prepare, run_eval
from switchgen.graph import load_config

TASKS = ["skills-recall", "skills-colour", "skills-abstain", "skills-switch"]
WINNER = {"skills-recall": "P", "skills-colour": "F", "skills-abstain": "A"}
SINGLES = ["single:P", "single:F", "single:A"]
FIXED = ["fixed:A+P+A", "fixed:P+A", "fixed:A+P"]


@pytest.fixture(scope="module")
def skills_results(tmp_path_factory):
    from switchgen.servers.engine.local import LocalEngine

    config = load_config("skills", seed=0)
    prepared = prepare(TASKS, [*SINGLES, *FIXED, "oracle"], config, limit=12)
    out = tmp_path_factory.mktemp("skills-eval")
    rows = run_eval(config, prepared, out, concurrency=8, progress=False, engine=LocalEngine())
    table = {(r["task"], r["method"]): r for r in rows}
    table["out"] = out
    return table


@pytest.mark.parametrize("task", sorted(WINNER))
def test_each_single_model_wins_its_task(skills_results, task):
    means = {m: skills_results[(task, m)]["mean"] for m in SINGLES}
    winner = f"single:{WINNER[task]}"
    assert all(means[winner] > means[m] for m in SINGLES if m != winner), means
    assert means[winner] >= 0.8, means


def test_switching_task_needs_switching(skills_results):
    singles = {m: skills_results[("skills-switch", m)]["mean"] for m in SINGLES}
    oracle = skills_results[("skills-switch", "oracle")]
    assert all(v <= 0.4 for v in singles.values()), singles
    assert oracle["mean"] >= 0.8 and oracle["n"] == 12
    assert oracle["delta_vs_aligned"] > 0 and oracle["delta_ci"][0] > 0  # the paired interval excludes zero
    # The oracle over the fixed sequences alone (per question the best of them) reaches it too.
    fixed = [[json.loads(line)["score"] for line in method_file(skills_results["out"], "skills-switch", m).read_text().splitlines()]
             for m in FIXED]
    assert sum(map(max, zip(*fixed, strict=True))) / 12 >= 0.8
