"""Reading a `switchgen eval` output folder: `DIR/<task>/<method>.jsonl` and `DIR/results.json`.

The layout is the one agreed in CONTRACTS.md. Records are checked with pydantic at this boundary,
so a malformed file is a one-line error naming the file and line, not a traceback in a plot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchgen.errors import InputError, describe


class PatchRecord(BaseModel):
    """One patch of an answer: who wrote it and how many tokens."""

    model_config = ConfigDict(extra="allow")
    candidate: str
    index: int | None = None  # the candidate's position in the configuration
    tokens: int = Field(0, ge=0)


class EvalRecord(BaseModel):
    """One answer of one method on one example, as `switchgen eval` writes it."""

    model_config = ConfigDict(extra="allow")
    id: str
    query: str = ""
    output: str | None = None
    score: float | None = None
    segments: list[PatchRecord] = Field(default_factory=list)
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    tokens_used: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0)

    @property
    def authors(self) -> list[str]:
        """The author of each patch, in order."""
        return [s.candidate for s in self.segments]


@dataclass
class TaskRun:
    """Every method's records on one task, keyed by method name."""

    task: str
    methods: dict[str, list[EvalRecord]] = field(default_factory=dict)


@dataclass
class EvalRun:
    """An eval output folder: the tasks with their methods' records, and results.json's rows."""

    root: Path
    tasks: dict[str, TaskRun]
    results: list[dict[str, Any]]


def method_name(path: Path) -> str:
    """The method a records file holds: its file name without `.jsonl` (eval names files by method)."""
    return path.name.removesuffix(".jsonl")


def read_records(path: Path) -> list[EvalRecord]:
    """The scored records of one method file; records that failed (no score) are skipped."""
    records: list[EvalRecord] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = EvalRecord.model_validate(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        except ValidationError as err:
            raise InputError(f"{path}:{lineno}: not an eval record: {describe(err, 'record')}") from None
        if record.score is not None:
            records.append(record)
    return records


def load_eval_run(root: Path) -> EvalRun:
    """Every `<task>/<method>.jsonl` under `root`, and results.json when present."""
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected the --out folder of `switchgen eval`)")
    tasks: dict[str, TaskRun] = {}
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(task_dir.glob("*.jsonl"))
        if files:
            run = TaskRun(task_dir.name)
            for path in files:
                records = read_records(path)
                if records:
                    run.methods[method_name(path)] = records
            if run.methods:
                tasks[run.task] = run
    if not tasks:
        raise InputError(f"{root}: no <task>/<method>.jsonl records found (is it a `switchgen eval --out` folder?)")
    results: list[dict[str, Any]] = []
    results_path = root / "results.json"
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8")).get("results", [])
        except (json.JSONDecodeError, AttributeError):
            raise InputError(f"{results_path}: not a results.json of `switchgen eval`") from None
    return EvalRun(root, tasks, results)
