"""Task: a definition (TaskSpec) plus its rows, rendered into records the graph and the metric use."""

from __future__ import annotations

import hashlib
import json
import random
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from switchgen.core.errors import ConfigError, InputError, describe
from switchgen.tasks.loading import load_rows
from switchgen.tasks.metric_factory import make_metric
from switchgen.tasks.metrics import Metric, last_boxed
from switchgen.tasks.spec import Source, TaskSpec

SPLITS = ("train", "test")
LETTERS = string.ascii_uppercase


def builtin_dir() -> Path:
    return Path(__file__).parent / "definitions"


def task_names() -> list[str]:
    """The built-in tasks (tasks/definitions/*.yaml)."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def load_task(task: str | Path | TaskSpec | dict[str, Any]) -> Task:
    """A built-in task by name, a task YAML file, a TaskSpec or its dict."""
    if isinstance(task, Task):
        return task
    if isinstance(task, TaskSpec):
        return Task(task)
    if isinstance(task, dict):
        return Task(_validate(task, "task"))
    path = Path(task)
    if path.suffix not in (".yaml", ".yml"):
        if str(task) not in task_names():
            raise ConfigError(f"unknown task {str(task)!r}; built-in tasks: {', '.join(task_names())} (or a task YAML path)")
        path = builtin_dir() / f"{task}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such task file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (name, test, query, reference, metric)")
    spec = _validate(data, str(path))
    spec._base_dir = path.parent
    return Task(spec)


def _validate(data: dict[str, Any], where: str) -> TaskSpec:
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {describe(err, 'task')}") from None


def field(row: dict[str, Any], path: str) -> Any:
    """A dotted path into a row (`choices.text`, `mc1_targets.labels`)."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


class Task:
    """A task ready to run: `records(split)` renders its rows; `metric()` makes its metric (once per run)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self._rows: dict[str, list[dict[str, Any]]] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric_name(self) -> str:
        return self.spec.metric.name

    def source(self, split: str) -> Source:
        if split not in SPLITS:
            raise InputError(f"task {self.name}: unknown split {split!r}; splits are {', '.join(SPLITS)}")
        source = getattr(self.spec, split)
        if source is None:
            raise InputError(f"task {self.name} has no {split} split (it defines: {', '.join(self.splits)})")
        return source

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if getattr(self.spec, s) is not None]

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split not in self._rows:
            self._rows[split] = load_rows(self.source(split), self.spec.base_dir, f"task {self.name} ({split})")
        return self._rows[split]

    def records(self, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
        """The split's records: {"id", "query", "reference", and "choices" for multiple choice}."""
        rows = self.rows(split)
        for cap in (self.spec.limit, limit):
            if cap is not None:
                rows = rows[:cap]
        records = [self._record(row, i, split) for i, row in enumerate(rows)]
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"task {self.name} ({split}): id {dup!r} occurs twice (id_field {self.spec.id_field!r})")
        return records

    def metric(self) -> Metric:
        return make_metric(self.spec.metric.name, self.spec.metric.args)

    def describe(self) -> str:
        return " ".join(f"{s}={self.source(s).describe()}" for s in self.splits)

    def fingerprint(self) -> dict[str, Any]:
        """What of the task shapes a run's records (core/fingerprint.py): sources, query template,
        reference, metric. Its description does not, nor its row limit (records are matched by id)."""
        return self.spec.model_dump(mode="json", exclude={"description", "limit"})

    def _get(self, row: dict[str, Any], path: str, split: str, index: int) -> Any:
        try:
            return field(row, path)
        except KeyError:
            fields = ", ".join(sorted(row)) or "none"
            raise InputError(f"task {self.name} ({split}, row {index}): no field {path!r} (fields: {fields})") from None

    def _record(self, row: dict[str, Any], index: int, split: str) -> dict[str, Any]:
        spec = self.spec
        rid = str(self._get(row, spec.id_field, split, index)) if spec.id_field else f"{split}-{index}"
        record: dict[str, Any] = {"id": rid}
        values = dict(row)
        if spec.choices is not None:
            options, answer = self._choices(row, rid, split, index)
            values["choices"] = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
            record["choices"] = options
            record["reference"] = LETTERS[answer]
        else:
            record["reference"] = self._reference(row, split, index)
        try:
            record["query"] = spec.query.format_map(_Fields(values))
        except _MissingField as err:
            raise InputError(
                f"task {self.name} ({split}, row {index}): the query template uses {{{err.args[0]}}} "
                f"but the row has no such field (fields: {', '.join(sorted(row))})"
            ) from None
        except (ValueError, IndexError, AttributeError) as err:
            raise ConfigError(f"task {self.name}: bad query template ({err})") from None
        return record

    def _reference(self, row: dict[str, Any], split: str, index: int) -> Any:
        spec = self.spec
        paths = [spec.reference] if isinstance(spec.reference, str) else list(spec.reference or [])
        values = [self._get(row, p, split, index) for p in paths]
        value: Any = values[0] if len(values) == 1 else [a for v in values for a in (v if isinstance(v, list) else [v])]
        if spec.reference_transform == "json":
            try:
                value = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                raise InputError(f"task {self.name} ({split}, row {index}): reference is not JSON: {value!r}") from None
        elif spec.reference_transform == "gsm8k":
            value = str(value).rsplit("####", 1)[-1].strip()
        elif spec.reference_transform == "boxed":
            boxed = last_boxed(str(value))
            if boxed is None:
                raise InputError(f"task {self.name} ({split}, row {index}): no \\boxed{{}} answer in the reference")
            value = boxed
        return value

    def _choices(self, row: dict[str, Any], rid: str, split: str, index: int) -> tuple[list[str], int]:
        spec = self.spec.choices
        assert spec is not None
        raw = self._get(row, spec.field, split, index)
        if isinstance(raw, dict):
            labels = [str(k) for k in raw]
            options = [str(v) for v in raw.values()]
        else:
            options = [str(v) for v in raw]
            labels = [str(x) for x in self._get(row, spec.labels, split, index)] if spec.labels else list(LETTERS[: len(options)])
        if not 2 <= len(options) <= len(LETTERS):
            raise InputError(f"task {self.name} ({split}, row {index}): {len(options)} options (need 2 to 26)")
        answer = self._get(row, spec.answer, split, index)
        try:
            correct = self._answer_index(answer, spec.answer_format, options, labels)
        except (ValueError, IndexError, TypeError):
            raise InputError(
                f"task {self.name} ({split}, row {index}): answer {answer!r} is not a valid {spec.answer_format} "
                f"for {len(options)} options"
            ) from None
        if spec.shuffle:
            order = list(range(len(options)))
            random.Random(int(hashlib.sha256(f"{self.name}/{rid}".encode()).hexdigest()[:16], 16)).shuffle(order)
            options = [options[i] for i in order]
            correct = order.index(correct)
        return options, correct

    @staticmethod
    def _answer_index(answer: Any, fmt: str, options: list[str], labels: list[str]) -> int:
        if fmt == "index":
            i = int(answer)
        elif fmt == "one_hot":
            i = list(answer).index(1)
        elif fmt == "letter":
            i = LETTERS.index(str(answer).strip().upper())
        elif fmt == "label":
            i = labels.index(str(answer).strip())
        else:
            i = options.index(str(answer))
        if not 0 <= i < len(options):
            raise IndexError(i)
        return i


class _MissingField(KeyError):
    pass


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise _MissingField(key)
