"""`switchgen generate`: a JSONL file of queries in, one record per query out, resumable.

Records are appended one by one and flushed, so a run that dies keeps every finished record;
a rerun checks them against the input and continues after the last one. With `concurrency` N,
N queries run at once (inference servers batch them) and records are still written in input
order; by default the in-process engine gets enough queries at once to fill its batches
(`default_concurrency`). A query that a server fails gets a record with "error" (and no generation_log) and the
run goes on; a rerun retries those first. A server that cannot be reached stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError, InputTooLong, OutputError, ServerError, ServerUnreachable
from switchgen.core.files import check_writable
from switchgen.core.fingerprint import config_fingerprint
from switchgen.core.jobs import RunResult, default_concurrency, write_records
from switchgen.core.jsonl import invalid_text, loads_record, split_lines
from switchgen.core.records import error_record


def read_inputs(path: Path) -> list[dict[str, Any]]:
    """Every record of the input file, checked before any model runs."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(split_lines(path.read_bytes()), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        record = loads_record(line, where)
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object with an \"input\" field")
        if not isinstance(record.get("input"), str) or not record["input"].strip():
            raise InputError(f"{where}: missing or empty \"input\" (a non-empty string)")
        problem = invalid_text(record["input"])
        if problem:
            raise InputError(f"{where}: \"input\" {problem}")
        records.append(record)
    if not records:
        raise InputError(f"{path}: no input records (expected one JSON object with \"input\" per line)")
    return records


def check_output(output: Path, input_path: Path | None = None) -> None:
    """Refuse an output that cannot take records, before any model loads (OutputError naming the fix).

    A folder, the input file itself (also through `..` or a symlink), a path under a file, a place
    this process cannot write: each is found here by the same calls the run makes (a missing
    folder is created, as the run would; a file is opened for appending, a new one created and
    removed again), not by guessing from permission bits.
    """
    fix = "choose another --output"
    if output.is_dir():
        raise OutputError(f"--output {output} is a folder; {fix} (a .jsonl file)")
    if input_path is not None and input_path.exists() and (
        output.resolve() == input_path.resolve() or (output.exists() and os.path.samefile(output, input_path))
    ):
        raise OutputError(f"--output {output} is the input file {input_path}; {fix}")
    check_writable(output, "--output")


def default_output(input_path: Path) -> Path:
    """FILE_switch_generation.jsonl beside the input, as the reference code names it."""
    return input_path.with_name(input_path.name.removesuffix(".jsonl") + "_switch_generation.jsonl")


def fingerprint(config: SwitchConfig) -> dict[str, Any]:
    """What shapes `switchgen generate`'s records: the configuration (seed, patch size and budget
    included) and the revisions of the models it reads."""
    from switchgen.servers.engine.loading import model_revisions

    return {"command": "generate", "config": config_fingerprint(config), "revisions": model_revisions(config)}


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
    concurrency: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Generate for every input without a record yet (and retry failed records first).

    `concurrency` None: `default_concurrency(config)`. `on_record` sees each record once it is in
    the file (the CLI counts permanent failures with it). An `output` made with another
    `fingerprint(config)` is refused, unless `overwrite` starts it over.
    """
    if concurrency is None:
        concurrency = default_concurrency(config)

    def one(index: int) -> dict[str, Any]:
        source = inputs[index]
        try:
            result = graph.invoke({"query": source["input"]})
        except ServerUnreachable:
            raise
        except (ServerError, InputTooLong) as err:  # this query only: recorded, and the run goes on
            return error_record(source, err)
        return make_record(source, result, config)

    return write_records(output, inputs, one, fingerprint=fingerprint(config), overwrite=overwrite, flag="--output",
                         progress=progress, concurrency=concurrency, on_record=on_record)


