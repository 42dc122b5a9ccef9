"""The records commands write and read back, and the one way to read a records file.

Every command that writes records (`switchgen generate`, `eval`, `rollouts`) appends whole
JSONL lines (core/jobs.py); every reader goes through `read_jsonl`, which keeps the complete
lines only (a torn last line, from a kill, is not a record) and names the file and line of a
bad one. Eval and rollouts records are checked with pydantic here, at the boundary, so a malformed
file is a one-line error, not a traceback deep in a plot or a training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchgen.core.errors import InputError, InputTooLong, describe
from switchgen.core.jsonl import loads_record, split_lines


def complete_lines(path: Path) -> list[bytes]:
    """The complete lines of a records file (a torn last line, from a kill, is not one); none if it is missing."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    return split_lines(data[: data.rfind(b"\n") + 1])


def read_jsonl(path: Path) -> list[Any]:
    """Every complete, non-blank line of `path` as its JSON value; InputError naming `path:line` otherwise."""
    return [loads_record(line, f"{path}:{n}") for n, line in enumerate(complete_lines(path), 1) if line.strip()]


# -- a query's record (generate, eval, rollouts) ------------------------------------------------------------


def is_failed(record: dict[str, Any]) -> bool:
    """A record of a query that failed (on a server, or refused as too long): "error" and no generation_log."""
    return record.get("generation_log") is None and "error" in record


def is_retried(record: dict[str, Any]) -> bool:
    """A failed record that a rerun retries: all but permanent failures (an input too long for a model)."""
    return is_failed(record) and not record.get("permanent")


def is_permanent(record: dict[str, Any]) -> bool:
    """A failed record that no rerun retries (an input too long for a model): it stays in the file."""
    return is_failed(record) and bool(record.get("permanent"))


def error_record(source: dict[str, Any], err: Exception) -> dict[str, Any]:
    """The record of a query that failed: the input plus "error" (and "permanent" when no rerun can fix it)."""
    record = {**source, "output": None, "generation_log": None, "error": str(err)}
    if isinstance(err, InputTooLong):
        record["permanent"] = True  # no rerun can fix it: shorten the input
    return record


# -- `switchgen rollouts` output: one record per train query, read back by `switchgen train` --------------


class TraceStep(BaseModel):
    """A patch of the trace a rollout decision was taken after."""

    model_config = ConfigDict(extra="allow")
    candidate: str
    text: str
    index: int = Field(ge=0)


class Outcome(BaseModel):
    """What one candidate's next patch led to: its continuations' scores and their mean."""

    model_config = ConfigDict(extra="allow")
    candidate: str
    scores: list[float]
    mean: float = Field(allow_inf_nan=False)


class RolloutRecord(BaseModel):
    """A finished rollouts record: the decision's context (query, trace) and its label."""

    model_config = ConfigDict(extra="allow")
    id: str
    query: str
    candidates: list[str] = Field(min_length=1)
    base: str
    trace: list[TraceStep]
    patches: list[Outcome]
    label: int = Field(ge=0)
    margin: float = Field(ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _indices_in_range(self) -> RolloutRecord:
        n = len(self.candidates)
        if self.label >= n:
            raise ValueError(f"label {self.label} is not one of the {n} candidates (0..{n - 1})")
        if any(step.index >= n for step in self.trace):
            raise ValueError(f"a trace step's index is not one of the {n} candidates (0..{n - 1})")
        if len(self.patches) != n:
            raise ValueError(f"{len(self.patches)} patches for {n} candidates")
        return self


def read_rollouts_file(path: Path) -> list[dict[str, Any]]:
    """The finished records of a rollouts file (failed ones, holding "error", skipped), each checked."""
    records = []
    for lineno, line in enumerate(complete_lines(path), 1):
        if not line.strip():
            continue
        value = loads_record(line, f"{path}:{lineno}")
        if isinstance(value, dict) and "error" in value and "label" not in value:
            continue
        try:
            records.append(RolloutRecord.model_validate(value).model_dump())
        except ValidationError as err:
            raise InputError(f"{path}:{lineno}: not a rollouts record of `switchgen rollouts`: "
                             f"{describe(err, 'record')}") from None
    return records


# -- `switchgen eval` output: DIR/<task>/<method>.jsonl and DIR/results.json --------------------------------


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


def read_eval_records(path: Path) -> list[EvalRecord]:
    """The scored records of one method file; records that failed (no score) are skipped."""
    records: list[EvalRecord] = []
    for lineno, line in enumerate(complete_lines(path), 1):
        if not line.strip():
            continue
        value = loads_record(line, f"{path}:{lineno}")
        try:
            record = EvalRecord.model_validate(value)
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
        run = TaskRun(task_dir.name)
        for path in sorted(task_dir.glob("*.jsonl")):
            if records := read_eval_records(path):
                run.methods[method_name(path)] = records
        if run.methods:
            tasks[run.task] = run
    if not tasks:
        raise InputError(f"{root}: no <task>/<method>.jsonl records found (is it a `switchgen eval --out` folder?)")
    return EvalRun(root, tasks, read_results(root / "results.json").rows())


class ResultRow(BaseModel):
    """One (task, method) row of results.json: mean, interval, n, costs (kept as written)."""

    model_config = ConfigDict(extra="allow")
    task: str
    method: str


class EvalResults(BaseModel):
    """results.json of `switchgen eval`: the rows, and the concurrency the answers were timed at."""

    model_config = ConfigDict(extra="allow")
    concurrency: int | None = None
    results: list[ResultRow] = Field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [row.model_dump() for row in self.results]


def read_results(path: Path) -> EvalResults:
    """A results.json of `switchgen eval` (empty when it is missing); InputError naming what is wrong."""
    if not path.is_file():
        return EvalResults()
    try:
        return EvalResults.model_validate(loads_record(path.read_bytes(), str(path)))
    except ValidationError as err:
        raise InputError(f"{path}: not a results.json of `switchgen eval`: {describe(err, 'results.json')}") from None
