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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from langgraph.graph.state import CompiledStateGraph
from tqdm import tqdm

from switchgen.config import SwitchConfig
from switchgen.errors import InputError, InputTooLong, OutputError, ServerError, ServerUnreachable
from switchgen.files import atomic_write_text, check_writable
from switchgen.jsonl import append_record, dumps_record, invalid_text, loads_record, split_lines

IN_PROCESS_BATCH = 16  # queries in flight when every token comes from this process: fills the engine's batches
SERVER_CONCURRENCY = 1  # with a remote candidate or switcher: one at a time unless --concurrency says otherwise


def default_concurrency(config: SwitchConfig) -> int:
    """Queries to keep in flight when the user does not say (`generate`, and the eval and rollout jobs).

    The in-process engine decodes concurrent graphs in one batch per checkpoint, so one query at a
    time leaves it mostly idle: by default it gets enough queries to fill its batches. Servers
    keep the old default (their operators size their own batches and limits).
    """
    remote = any(c.backend != "local" for c in config.candidates)
    remote = remote or (config.switcher.strategy == "learned" and config.switcher_server().backend != "local")
    return SERVER_CONCURRENCY if remote else IN_PROCESS_BATCH


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


def records_done(output: Path, inputs: list[dict[str, Any]], key: str = "input") -> int:
    """How many inputs already have a record in `output`.

    The records are checked against the inputs first; only then is a torn last line (a run
    killed mid-write) cut off, so a file that is refused is left exactly as it was.
    """
    if not output.exists():
        return 0
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    lines = split_lines(complete)
    if len(lines) > len(inputs):
        raise InputError(f"{output}: holds {len(lines)} records but the input has {len(inputs)}; choose another --output")
    for lineno, (line, source) in enumerate(zip(lines, inputs, strict=False), 1):
        try:
            done = loads_record(line)
        except InputError:
            raise InputError(f"{output}:{lineno}: not a JSON record; delete the file or choose another --output") from None
        if not isinstance(done, dict) or done.get(key) != source[key]:
            raise InputError(
                f"{output}:{lineno}: this record is for another input; delete the file or choose another --output"
            )
    if len(complete) != len(data):
        with output.open("rb+") as f:
            f.truncate(len(complete))
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


class RunResult(NamedTuple):
    start: int  # records already in the file
    written: int  # records appended now
    failed: int  # records (old retried or new) that hold an "error" (permanent ones included)


def is_failed(record: dict[str, Any]) -> bool:
    """A record of a query that failed (on a server, or refused as too long): "error" and no generation_log."""
    return record.get("generation_log") is None and "error" in record


def is_retried(record: dict[str, Any]) -> bool:
    """A failed record that a rerun retries: all but permanent failures (an input too long for a model)."""
    return is_failed(record) and not record.get("permanent")


def error_record(source: dict[str, Any], err: Exception) -> dict[str, Any]:
    record = {**source, "output": None, "generation_log": None, "error": str(err)}
    if isinstance(err, InputTooLong):
        record["permanent"] = True  # no rerun can fix it: shorten the input
    return record


T = TypeVar("T")
R = TypeVar("R")


def in_order(items: Iterable[T], fn: Callable[[T], R], concurrency: int) -> Iterator[tuple[T, R]]:
    """`fn` over `items` on `concurrency` threads, yielded in input order as soon as each is ready.

    At most 2 x concurrency are submitted ahead of the first unfinished one, so a slow query
    holds back only a bounded number of finished ones.
    """
    if concurrency <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="switchgen-query")
    it = iter(items)
    window: deque[tuple[T, Future[R]]] = deque((item, pool.submit(fn, item)) for item in islice(it, 2 * concurrency))
    try:
        while window:
            item, future = window.popleft()
            result = future.result()
            for nxt in islice(it, 1):
                window.append((nxt, pool.submit(fn, nxt)))
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_file(
    graph: CompiledStateGraph,
    config: SwitchConfig,
    inputs: list[dict[str, Any]],
    output: Path,
    *,
    progress: bool = True,
    concurrency: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Generate for every input without a record yet (and retry failed records first).

    `concurrency` None: `default_concurrency(config)`. `on_record` sees each record once it is in
    the file (the CLI counts permanent failures with it).
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

    return write_records(output, inputs, one, progress=progress, concurrency=concurrency, on_record=on_record)


def write_records(
    output: Path,
    inputs: list[dict[str, Any]],
    one: Callable[[int], dict[str, Any]],
    *,
    key: str = "input",
    progress: bool = True,
    concurrency: int = 1,
    desc: str = "switch generation",
    unit: str = "query",
    postfix: Callable[[], str] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """The resumable JSONL job: `one(i)` makes input i's record; records are appended in input order,
    each whole or not at all, so a killed run keeps every finished record. A rerun checks the records
    against the inputs (on `key`), retries failed ones (`is_retried`) first, then resumes after the
    last. Used by `switchgen generate`, `switchgen eval` and `switchgen rollouts` (`postfix`: text
    shown after the progress bar's rate, e.g. tokens/s; `on_record` sees each record once it is in the file).
    """
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    start = records_done(output, inputs, key)
    lines = [loads_record(line) for line in split_lines(output.read_bytes())] if start else []
    retry = [i for i, record in enumerate(lines) if is_retried(record)]

    failed = written = 0
    bar = tqdm(total=len(inputs), initial=start - len(retry), desc=desc, unit=unit, disable=not progress)

    def tick(record: dict[str, Any]) -> None:
        nonlocal failed
        failed += is_failed(record)
        if on_record is not None:
            on_record(record)
        if postfix is not None:
            bar.set_postfix_str(postfix(), refresh=False)
        bar.update(1)

    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with bar:
            if retry:  # redo failed records, then replace them in one atomic rewrite
                for index, record in in_order(retry, one, concurrency):
                    lines[index] = record
                    tick(record)
                _rewrite(output, lines)
            fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                for _, record in in_order(range(start, len(inputs)), one, concurrency):
                    append_record(fd, record)
                    written += 1
                    tick(record)
            finally:
                os.close(fd)
    except ServerUnreachable as err:
        done = start + written
        raise ServerUnreachable(f"{err}. {output} keeps its {done} finished records: rerun to resume") from None
    except OSError as err:  # a full disk, a vanished folder: the file holds whole records only
        done = start + written
        raise OutputError(
            f"cannot write {output} ({err.strerror or err}); it keeps its {done} finished records: "
            "free space (or fix the path) and rerun to resume"
        ) from None
    return RunResult(start, written, failed)


def _rewrite(output: Path, lines: list[dict[str, Any]]) -> None:
    """Replace `output` by these records atomically: the old file stays whole until the new one is."""
    atomic_write_text(output, "".join(dumps_record(record) + "\n" for record in lines))
