"""notebooks/quickstart.ipynb runs top to bottom on the toy checkpoints (nbclient), so it never rots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(str(v) for v in out.get("data", {}).values())
    return "".join(parts)


def test_quickstart_notebook_executes(toy_kit, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    # The kernel inherits the session's SWITCHGEN_HOME (conftest), so it uses the toy kit built for the tests.
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    html = "".join(outputs(c) for c in code)
    # The answer coloured by its authors: one span per segment, tagged with the candidate.
    authors = re.findall(r'data-candidate="(\w+)"', html)
    assert authors and set(authors) <= {"P", "F", "A"}
    # The decisions table: a header and one row per decision.
    assert "<th>p(P)</th>" in html and html.count("<tr>") >= 2
    assert "[A]" in html  # the stream printed tokens with their author


TRAIN_AND_EVALUATE = NOTEBOOK.with_name("train_and_evaluate.ipynb")


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_train_and_evaluate_notebook_executes(toy_kit, tmp_path):
    """kit -> rollouts -> train -> eval -> analyze -> distill, top to bottom; committed WITH its outputs
    (so a reader on GitHub sees the plots): the committed copy must already show them."""
    nb = nbformat.read(TRAIN_AND_EVALUATE, as_version=4)
    assert images(nb) >= 5, "commit notebooks/train_and_evaluate.ipynb executed, with its plots"
    for cell in nb.cells:
        cell.pop("outputs", None) if cell.cell_type != "code" else cell.update(outputs=[], execution_count=None)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert images(nb) == 5  # positions, sequences, tokens, cost, patch sizes
    text = "".join(outputs(c) for c in code)
    assert "| switch@5 | 5 |" in text and "| untuned@20 | 20 |" in text  # the ablation ran
    assert "some correct" in text  # the single-vs-switch table was shown
    assert "Recovered fraction of switching's gain" in text
    report = json.loads((tmp_path / "train-and-evaluate-run" / "distilled" / "switchgen-distill.json").read_text())
    assert set(report["methods"]) == {"single:A", "switch", "single:D"}
