"""The resumable JSONL job every command that writes records runs: generate, eval, rollouts.

`write_records` appends one record per input, in input order, each whole or not at all, so a
killed run keeps every finished record; a rerun checks the records against the inputs and the
run's fingerprint against the one recorded beside them (core/fingerprint.py: no rerun with other
settings adds to them), retries the failed ones first, then resumes after the last. `in_order`
keeps N queries in flight while the records still come out in order; by default the in-process
engine gets enough queries at once to fill its batches (`default_concurrency`).
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
from switchgen.core.fingerprint import check_fingerprint, fingerprint_path, write_fingerprint
from switchgen.core.jsonl import append_record, dumps_record, loads_record, split_lines
from switchgen.core.records import complete_lines, is_failed, is_retried

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


def check_resumable(output: Path, fingerprint: dict[str, Any], *, inputs: list[dict[str, Any]] | None = None,
                    key: str = "input", overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse, before any model loads, an output that this run cannot add to, leaving it as it is: records
    for other `inputs` (checked first, on `key`, when given: the more specific mistake), or records another
    run made (OutputError naming the difference: they are resumed only by a run of the same fingerprint)."""
    if overwrite:
        return
    if inputs is not None:
        _check_records(output, inputs, key, flag)
    if complete_lines(output):
        check_fingerprint(fingerprint_path(output), fingerprint, output=output, flag=flag)


def discard(output: Path) -> None:
    """`--overwrite`: remove a records file and its fingerprint (the records first: a kill in between
    leaves a fingerprint without records, which the next run replaces)."""
    for path in (output, fingerprint_path(output)):
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"cannot remove {path} ({err.strerror or err}) for --overwrite; choose another --out") from None


def write_records(
    output: Path,
    inputs: list[dict[str, Any]],
    one: Callable[[int], dict[str, Any]],
    *,
    fingerprint: dict[str, Any],
    overwrite: bool = False,
    flag: str = "--out",
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
    against the inputs (on `key`) and `fingerprint` (see `_resume`), retries failed ones (`is_retried`)
    first, then resumes after the last. Used by `switchgen generate`, `eval` and `rollouts` (`postfix`:
    text after the progress bar's rate, e.g. tokens/s; `on_record` sees each record once it is in the file).
    """
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    start, lines = _resume(output, inputs, key, fingerprint, overwrite, flag)
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


def _resume(output: Path, inputs: list[dict[str, Any]], key: str, fingerprint: dict[str, Any], overwrite: bool,
            flag: str) -> tuple[int, list[dict[str, Any]]]:
    """(records already in `output`, those records). `fingerprint` (core/fingerprint.py: what shaped
    the records) must be the one recorded beside them; a new file gets it first. `overwrite` starts
    the file over instead (`flag` names the output's option in messages)."""
    if overwrite:
        discard(output)
    check_resumable(output, fingerprint, inputs=inputs, key=key, flag=flag)
    start = records_done(output, inputs, key, flag)
    if not start:  # a new file (or one without a whole record): this run's fingerprint goes first
        write_fingerprint(fingerprint_path(output), fingerprint)
    return start, [loads_record(line) for line in split_lines(output.read_bytes())] if start else []


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


def records_done(output: Path, inputs: list[dict[str, Any]], key: str = "input", flag: str = "--out") -> int:
    """How many inputs already have a record in `output`.

    The records are checked against the inputs first; only then is a torn last line (a run
    killed mid-write) cut off, so a file that is refused is left exactly as it was.
    """
    done, complete, size = _check_records(output, inputs, key, flag)
    if complete != size:
        with output.open("rb+") as f:
            f.truncate(complete)
    return done


def _check_records(output: Path, inputs: list[dict[str, Any]], key: str, flag: str) -> tuple[int, int, int]:
    """(whole records, their bytes, the file's bytes) of `output`, each record checked to be for its input."""
    if not output.exists():
        return 0, 0, 0
    data = output.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    lines = split_lines(complete)
    fix = f"pass --overwrite to start over, or choose another {flag}"
    if len(lines) > len(inputs):
        raise InputError(f"{output}: holds {len(lines)} records but the input has {len(inputs)}; {fix}")
    for lineno, (line, source) in enumerate(zip(lines, inputs, strict=False), 1):
        try:
            done = loads_record(line)
        except InputError:
            raise InputError(f"{output}:{lineno}: not a JSON record; {fix}") from None
        if not isinstance(done, dict) or done.get(key) != source[key]:
            raise InputError(f"{output}:{lineno}: this record is for another input; {fix}")
    return len(lines), len(complete), len(data)
