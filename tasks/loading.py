"""A split's rows from a local file (JSONL, JSON, CSV, Parquet, a save_to_disk folder) or the Hub."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from switchgen.core.errors import InputError
from switchgen.tasks.spec import Source


def resolve_path(source: Source, base_dir: Path) -> Path:
    """The local file a source names: inside its kit's folder, or relative to the task's YAML file."""
    assert source.path is not None
    if source.kit is not None:
        from switchgen.kits.registry import kit_dir  # builds the kit: only when its data is read

        return kit_dir(source.kit) / source.path
    path = Path(source.path).expanduser()
    return path if path.is_absolute() else base_dir / path


def load_rows(source: Source, base_dir: Path, where: str) -> list[dict[str, Any]]:
    """Every row of the source as a dict; `where` names the task and split in errors."""
    rows = _load_dataset(source, where) if source.dataset is not None else _load_local(resolve_path(source, base_dir), source, where)
    if source.rows is not None:
        start, stop = source.rows
        rows = rows[start:stop]
    if not rows:
        raise InputError(f"{where}: {source.describe()} holds no rows")
    return rows


def _load_local(path: Path, source: Source, where: str) -> list[dict[str, Any]]:
    if path.is_dir():
        return _load_from_disk(path, source.split, where)
    if not path.is_file():
        raise InputError(f"{where}: {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(row) for row in csv.DictReader(f)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow raises several types for a bad file
            raise InputError(f"{path}: not a Parquet file ({err})") from None
    raise InputError(f"{where}: {path}: unknown file type {suffix!r} (use .jsonl, .json, .csv, .parquet or a dataset folder)")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path}:{lineno}: not a JSON object") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object")
        rows.append(row)
    return rows


def _load_from_disk(path: Path, split: str | None, where: str) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InputError(f"{where}: {path} is not a folder written by datasets' save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise InputError(f"{where}: {path} has no split {split!r}; it has {sorted(data)}")
        data = data[split]
    return data.to_list()


def _load_dataset(source: Source, where: str) -> list[dict[str, Any]]:
    import datasets

    try:
        data = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except ValueError as err:  # unknown split / config
        raise InputError(f"{where}: {source.describe()}: {str(err).splitlines()[0]}") from None
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise InputError(f"{where}: {source.describe()} could not be loaded: {str(err).splitlines()[0]}") from None
    return data.to_list()
