"""`switchgen generate`: a JSONL file of queries in, one record per query out, resumable.

Records are appended one by one and flushed, so a run that dies keeps every finished record;
a rerun checks them against the input and continues after the last one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from tqdm import tqdm

from switchgen.errors import InputError
from switchgen.graph.config import SwitchConfig


def read_inputs(path: Path) -> list[dict[str, Any]]:
    """Every record of the input file, checked before any model runs."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object with an \"input\" field")
            if not isinstance(record.get("input"), str) or not record["input"].strip():
                raise InputError(f"{path}:{lineno}: missing or empty \"input\" (a non-empty string)")
            records.append(record)
    if not records:
        raise InputError(f"{path}: no input records (expected one JSON object with \"input\" per line)")
    return records


def default_output(input_path: Path) -> Path:
    """FILE_switch_generation.jsonl beside the input, as the reference code names it."""
    return input_path.with_name(input_path.name.removesuffix(".jsonl") + "_switch_generation.jsonl")


def records_done(output: Path, inputs: list[dict[str, Any]]) -> int:
    """How many inputs already have a record in `output`; a torn last line is cut off."""
    if not output.exists():
        return 0
    with output.open("rb+") as f:
        data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            f.truncate(len(complete))
    lines = complete.decode("utf-8").splitlines()
    if len(lines) > len(inputs):
        raise InputError(f"{output}: holds {len(lines)} records but the input has {len(inputs)}; choose another --output")
    for lineno, (line, source) in enumerate(zip(lines, inputs, strict=False), 1):
        try:
            done = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{output}:{lineno}: not valid JSON; delete the file or choose another --output") from None
        if not isinstance(done, dict) or done.get("input") != source["input"]:
            raise InputError(
                f"{output}:{lineno}: this record is for another input; delete the file or choose another --output"
            )
    return len(lines)


def make_record(source: dict[str, Any], result: dict[str, Any], config: SwitchConfig) -> dict[str, Any]:
    """The input record plus "output" and a "generation_log" with the reference's keys and ours."""
    segments = result.get("segments", [])
    log = {
        "query": result.get("query", source["input"]),
        "generated_segments": [s["text"] for s in segments],
        "segment_model_index": [s["index"] for s in segments],
        "generated_sequence": result.get("output", ""),
        "candidates": config.names,
        "segment_candidates": [s["candidate"] for s in segments],
        "segment_tokens": [s["tokens"] for s in segments],
        "finish_reasons": [s["finish_reason"] for s in segments],
        "decisions": result.get("decisions", []),
        "tokens_used": result.get("tokens_used", 0),
        "max_new_tokens": config.max_new_tokens,
    }
    return {**source, "output": result.get("output", ""), "generation_log": log}


def run_file(
    graph: CompiledStateGraph,
    config: SwitchConfig,
    inputs: list[dict[str, Any]],
    output: Path,
    *,
    progress: bool = True,
) -> tuple[int, int]:
    """Generate for every input without a record yet; returns (already done, written now)."""
    start = records_done(output, inputs)
    todo: Iterable[dict[str, Any]] = inputs[start:]
    bar = tqdm(total=len(inputs), initial=start, desc="switch generation", unit="query", disable=not progress)
    written = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as out, bar:
        for source in todo:
            result = graph.invoke({"query": source["input"]})
            out.write(json.dumps(make_record(source, result, config), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            written += 1
            bar.update(1)
    return start, written
