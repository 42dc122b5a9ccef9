"""The resumable JSONL job every command that writes records runs: generate, eval, rollouts.

`write_records` appends one record per input, in input order, each whole or not at all, so a
killed run keeps every finished record; a rerun checks the records against the inputs, retries
the failed ones first, then resumes after the last. `in_order` keeps N queries in flight while
the records still come out in order; by default the in-process engine gets enough queries at
once to fill its batches (`default_concurrency`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tqdm import tqdm

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError, OutputError, ServerUnreachable
from switchgen.core.files import atomic_write_text
from switchgen.core.jsonl import append_record, dumps_record, loads_record, split_lines
from switchgen.core.records import is_failed, is_retried

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


class RunResult(NamedTuple):
    start: int  # records already in the file
    written: int  # records appended now
    failed: int  # records (old retried or new) that hold an "error" (permanent ones included)



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
            for record in _appended(output, in_order(range(start, len(inputs)), one, concurrency)):
                written += 1
                tick(record)
    except (ServerUnreachable, OSError) as err:
        raise _kept(err, output, start + written) from None
    return RunResult(start, written, failed)


def _appended(output: Path, made: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Append each record as it is made, whole or not at all; yields it once it is in the file."""
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        for _, record in made:
            append_record(fd, record)
            yield record
    finally:
        os.close(fd)


def _kept(err: Exception, output: Path, done: int) -> Exception:
    """The error that stopped a job, saying that the file keeps its `done` finished records."""
    if isinstance(err, ServerUnreachable):
        return ServerUnreachable(f"{err}. {output} keeps its {done} finished records: rerun to resume")
    # a full disk, a vanished folder: the file holds whole records only
    return OutputError(
        f"cannot write {output} ({getattr(err, 'strerror', None) or err}); it keeps its {done} finished records: "
        "free space (or fix the path) and rerun to resume"
    )


def _rewrite(output: Path, lines: list[dict[str, Any]]) -> None:
    """Replace `output` by these records atomically: the old file stays whole until the new one is."""
    atomic_write_text(output, "".join(dumps_record(record) + "\n" for record in lines))


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


