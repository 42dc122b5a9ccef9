"""A task's definition as pydantic models: what a YAML file under tasks/definitions/ holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Model):
    """Where a split's rows come from: a local file or folder, or a Hugging Face dataset."""

    path: str | None = Field(
        None,
        description="A local .jsonl/.json/.csv/.parquet file, or a folder written by datasets' save_to_disk. "
        "Relative paths are relative to the task's YAML file.",
    )
    dataset: str | None = Field(None, description="A Hugging Face dataset id (or a local dataset folder) for load_dataset.")
    config: str | None = Field(None, description="The dataset's configuration (subset), e.g. main for openai/gsm8k.")
    split: str | None = Field(None, description="The dataset's split (HF slicing works: test[:100]); save_to_disk folders too.")
    kit: str | None = Field(None, description="A checkpoint kit (skills) whose folder `path` is relative to; built on first use.")
    rows: tuple[int, int | None] | None = Field(None, description="[start, stop): keep these rows only (stop null: to the end).")

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of path (a local file) or dataset (a Hugging Face dataset id)")
        if self.dataset is not None and not self.split:
            raise ValueError(f"dataset {self.dataset!r} needs split (e.g. test)")
        if self.kit is not None and self.path is None:
            raise ValueError("kit needs path (a file inside the kit)")
        return self

    def describe(self) -> str:
        if self.dataset is not None:
            return f"hf:{self.dataset}" + (f"/{self.config}" if self.config else "") + f"[{self.split}]"
        return (f"{self.kit}-kit:" if self.kit else "") + self.path + (f"[{self.split}]" if self.split else "")


class ChoicesSpec(_Model):
    """A multiple-choice question's options: rendered as lettered lines, the reference becomes the letter."""

    field: str = Field(description="Dotted path to the options: a list of texts, or a mapping letter -> text.")
    labels: str | None = Field(None, description="Dotted path to the options' labels (ARC's choices.label), to map `answer`.")
    answer: str = Field(description="Dotted path to the correct option.")
    answer_format: Literal["letter", "index", "one_hot", "label", "text"] = Field(
        "letter",
        description="letter (A, B, ...), index (0-based), one_hot (a 0/1 list, the first 1), label (one of `labels`), "
        "text (the option's text).",
    )
    shuffle: bool = Field(False, description="Shuffle the options per record (seeded by its id), e.g. TruthfulQA's mc1 lists the right one first.")


class MetricSpec(_Model):
    """A metric by name (see switchgen.tasks.metrics.METRICS, or `module:function`) and its arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "args" not in value and set(value) - {"name"}:
            return {"name": value.get("name"), "args": {k: v for k, v in value.items() if k != "name"}}
        return value


class TaskSpec(_Model):
    """One task. `query` is a str.format template over a record's fields plus {choices} (the lettered options)."""

    name: str = Field(description="The task's name, as --task takes it.")
    description: str = ""
    train: Source | None = Field(None, description="Rows for switcher rollouts (training).")
    test: Source = Field(description="Rows for evaluation.")
    query: str = Field(description="Template of the query, e.g. '{question}' or 'Question: {question}\\n{choices}\\nAnswer:'.")
    reference: str | list[str] | None = Field(
        None, description="Dotted path(s) to the reference; several fields give a list of aliases. Unused with choices."
    )
    reference_transform: Literal["none", "json", "gsm8k", "boxed"] = Field(
        "none",
        description="json (a JSON-encoded list, PopQA's possible_answers), gsm8k (the number after ####), "
        "boxed (the last \\boxed{...} of a solution).",
    )
    choices: ChoicesSpec | None = None
    id_field: str | None = Field(None, description="Dotted path to a stable id; default: the split name and row number.")
    metric: MetricSpec
    limit: int | None = Field(None, ge=1, description="Use at most this many rows of each split.")
    _base_dir: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"task name {name!r}: letters, digits, '_', '.', '-' only (it names files)")
        return name

    @model_validator(mode="after")
    def _reference_given(self) -> TaskSpec:
        if self.choices is None and self.reference is None:
            raise ValueError("give reference (the field(s) with the answer) or choices (a multiple-choice question)")
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir or Path.cwd()
