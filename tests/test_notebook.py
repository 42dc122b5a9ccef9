"""The notebooks run top to bottom (nbclient) on the skills kit, so they never rot; both are committed with
their outputs, which show no path of the machine that ran them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from switchgen.evaluation.stats import paired_difference

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for v in out.get("data", {}).values())
    return "".join(parts)


MACHINE_PATH = re.compile(r"(/tmp/|/var/folders/|/home/|/root/|/Users/|/work/|site-packages|[A-Z]:\\)")


def executed_copy(nb):
    """`nb` with its outputs cleared, as a reader's fresh run starts."""
    for cell in nb.cells:
        cell.pop("outputs", None) if cell.cell_type != "code" else cell.update(outputs=[], execution_count=None)
    return nb


def test_committed_notebooks_show_no_machine_paths():
    """Committed outputs are read on GitHub: no scratch folder, home or virtualenv of the machine that ran them."""
    for path in sorted(NOTEBOOK.parent.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = "".join(outputs(c) for c in nb.cells if c.cell_type == "code")
        assert text, f"commit {path.name} executed, with its outputs"
        assert not MACHINE_PATH.search(text), (path.name, MACHINE_PATH.search(text).group(0))


def test_quickstart_notebook_executes(skills_kit, tmp_path):
    """Committed with its outputs (on the skills kit: real text), and re-executed here top to bottom."""
    from switchgen.tasks import load_task

    nb = nbformat.read(NOTEBOOK, as_version=4)
    forced_cell = next(c for c in nb.cells if c.cell_type == "code" and '"forced": authors' in c.source)
    committed = outputs(forced_cell)
    # The kernel inherits the session's SWITCHGEN_HOME (conftest), so it uses the skills kit built for the tests.
    nb = executed_copy(nb)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    html = "".join(outputs(c) for c in code)
    # The answer coloured by its authors: one span per segment, tagged with the candidate.
    authors = re.findall(r'data-candidate="(\w+)"', html)
    assert authors and set(authors) <= {"P", "F", "A"}
    # The decisions table: a header and one row per decision.
    assert "<th>p(P)</th>" in html and html.count("<tr>") >= 2
    assert "[A]Answer:" in html  # the stream printed tokens with their author
    # What switching can do: A, P, A answers in the form asked; no model alone does (greedy: the committed outputs).
    city = load_task("skills-switch").records("test", limit=1)[0]["reference"][0]
    forced = outputs(next(c for c in nb.cells if c.cell_type == "code" and '"forced": authors' in c.source))
    assert f"A+P+A        'Answer: {city}.'" in forced and forced.count(f"'Answer: {city}.'") == 1
    assert forced == committed


TRAIN_AND_EVALUATE = NOTEBOOK.with_name("train_and_evaluate.ipynb")
BASELINES = ["single:P", "single:F", "single:A", "random", "untuned", "route"]


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_train_and_evaluate_notebook_executes(skills_kit, skills_switch_rollouts, tmp_path):
    """skills kit -> rollouts -> train -> eval -> analyze -> distill, top to bottom, committed WITH its
    outputs (a reader on GitHub sees the plots): the committed copy must already show them.

    It is also the suite's fidelity test, on the files the notebook's commands wrote: on skills-switch
    (A writes "Answer:", P knows the city, A ends) the switcher that `switchgen rollouts` + `switchgen
    train` made beats random, untuned, route and every single model by more than the paired bootstrap
    interval; distillation recovers most of that gain; random switching's best sequence is the one
    the task needs. benchmarks/skills_fidelity.py runs the same at the preset's full budget."""
    nb = nbformat.read(TRAIN_AND_EVALUATE, as_version=4)
    assert images(nb) >= 5, "commit notebooks/train_and_evaluate.ipynb executed, with its plots"
    nb = executed_copy(nb)
    # The rollouts the notebook's command would write, made once for the session (conftest): it resumes them.
    shutil.copytree(skills_switch_rollouts.parent, tmp_path / "train-and-evaluate-run")  # records + their fingerprint
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert images(nb) == 5  # positions, tokens, patch sizes, cost, sequences
    text = "".join(outputs(c) for c in code)
    assert "A+P+A        'Answer: " in text  # the three authors together answer in the format
    assert "| switch@1 | 1 |" in text and "| untuned@4 | 4 |" in text  # the ablation ran
    assert "| all wrong | " in text  # the single-vs-switch table was shown
    assert "Recovered fraction of switching's gain" in text
    assert "{'loss'" not in text  # --no-progress keeps the trainers quiet

    run = tmp_path / "train-and-evaluate-run"

    def scores(method: str) -> list[float]:
        return [json.loads(line)["score"] for line in (run / "eval" / "skills-switch" / f"{method}.jsonl").read_text().splitlines()]

    switch = scores("switch")
    assert len(switch) == 30
    for method in BASELINES:
        delta, (lo, hi) = paired_difference(switch, scores(method))
        assert lo > 0, f"switch vs {method}: {delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    report = json.loads((run / "distilled" / "switchgen-distill.json").read_text())
    assert set(report["methods"]) == {"single:A", "switch", "single:D"}
    assert report["recovered"] >= 0.5, report["recovered"]
    assert report["concurrency"] == 4  # the compared run's: seconds measured alike
    assert report["methods"]["single:D"]["switcher_calls_per_answer"] == 0 < report["methods"]["switch"]["switcher_calls_per_answer"]

    analysis = json.loads((run / "report-random" / "analysis.json").read_text())["skills-switch"]
    best = max((s for s in analysis["sequences"]["3"] if s["effect"] is not None), key=lambda s: s["effect"])
    assert best["sequence"][0] == "A" and best["sequence"][1] in ("P", "F") and best["effect"] > 0.5, best
