"""`switchgen eval`: every method on every task's test split, scored, resumable, with intervals.

Layout of `out`: `<task>/<method>.jsonl` (one record per test example, in the split's order:
id, query, reference, output, score, segments, decisions, tokens_used, seconds), `results.json`
and `results.md`. Records are written by `switchgen generate`'s resumable writer
(core/jobs.py `write_records`): a killed run keeps every finished record and a rerun
resumes after the last one. Scores are filled in afterwards in batches (a reward model scores a
batch per forward pass) and the file is rewritten atomically; `oracle.jsonl` is derived from the
other methods' files every run. Each method file's fingerprint (`<method>.jsonl.fingerprint.json`:
the run's configuration, seed, split and task, and the method's name, patch size and adapter) is
checked before any model loads: a rerun with other settings is refused, and so is one whose run
settings differ from another method's file in the same task folder (their results would be
compared as if one run made them). `overwrite` starts those files over instead.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import ConfigError, InputTooLong, ServerError, ServerUnreachable
from switchgen.core.files import atomic_write_text
from switchgen.core.fingerprint import (
    check_fingerprint,
    config_fingerprint,
    differences,
    fingerprint_path,
    location,
    read_fingerprint,
)
from switchgen.core.jobs import check_resumable, default_concurrency, discard, write_records
from switchgen.core.jsonl import dumps_record
from switchgen.core.records import complete_lines, is_failed, method_name, read_jsonl
from switchgen.core.seeds import derive_seed
from switchgen.evaluation.methods import (
    ORACLE,
    EvalSetup,
    build_method,
    check_methods,
    patch_size_of,
    split_patch_size,
    variant,
)
from switchgen.evaluation.stats import mean_interval, paired_difference
from switchgen.tasks import Task, load_task


def method_file(out: Path, task: str, method: str) -> Path:
    """Where a method's records for a task are: OUT/<task>/<method>.jsonl."""
    return out / task / f"{method}.jsonl"


@dataclass
class Prepared:
    """Everything checked before any model loads."""

    tasks: list[Task]
    records: dict[str, list[dict[str, Any]]]
    methods: list[str]
    split: str = "test"


def prepare(
    tasks: Sequence[str | Task], methods: Sequence[str], config: SwitchConfig, limit: int | None, split: str = "test"
) -> Prepared:
    """Load the tasks' records (the test split; `train` for distillation data) and check the methods:
    bad input fails here, before any model loads."""
    if not tasks:
        raise ConfigError("no tasks: give --task NAME (see `switchgen tasks`)")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    loaded = [load_task(t) for t in tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(f"a task is listed twice: {', '.join(names)}")
    records = {t.name: t.records(split, limit=limit) for t in loaded}
    methods = list(methods)
    check_methods(methods, config)
    return Prepared(loaded, records, methods, split)


def aligned_method(config: SwitchConfig) -> str:
    """The baseline every method's paired difference is taken against."""
    return f"single:{config.names[config.aligned_index]}"


def fingerprints(config: SwitchConfig, prepared: Prepared, seed: int | None,
                 adapter: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    """Each (task, method) file's fingerprint: `run` (shared by every method file of a task folder:
    configuration, model revisions, seed, split, task) and `method` (name, patch size, adapter)."""
    from switchgen.servers.engine.loading import model_revision, model_revisions

    shared = {"config": config_fingerprint(config), "revisions": model_revisions(config), "seed": seed,
              "split": prepared.split}
    out = {}
    for task in prepared.tasks:
        run = {**shared, "task": task.fingerprint()}
        for method in prepared.methods:
            own = location(adapter) if split_patch_size(method)[0] == "switch" else None  # only switch runs --adapter
            out[task.name, method] = {"command": "eval", "run": run, "method": {
                "name": method, "patch_size": patch_size_of(method, config), "adapter": own,
                "revisions": {own: model_revision(own)} if own else {}}}
    return out


def check_outputs(out: Path, prepared: Prepared, prints: dict[tuple[str, str], dict[str, Any]],
                  overwrite: bool = False) -> None:
    """Before any model loads: every method file this run adds to was made by the same settings, and
    so was every other method file of its task folders (with `overwrite`, those that were not are
    removed, and this run's own files start over when written)."""
    for task in prepared.tasks:
        records = prepared.records[task.name]
        mine = [m for m in prepared.methods if m != ORACLE]
        for method in mine:
            path = method_file(out, task.name, method)
            if overwrite:
                continue
            if len(complete_lines(path)) > len(records):  # a file of another split or task stops the run now
                raise ConfigError(f"{path} holds more records than this run's {len(records)} examples (a larger "
                                  "--limit?): use the same --limit, pass --overwrite to start over, or choose another --out")
            check_resumable(path, prints[task.name, method], inputs=records, key="id")
        run = prints[task.name, mine[0]]["run"] if mine else None
        for path in sorted((out / task.name).glob("*.jsonl")):
            if run is not None and method_name(path) not in prepared.methods and complete_lines(path):
                _check_sibling(path, run, overwrite)


def _check_sibling(path: Path, run: dict[str, Any], overwrite: bool) -> None:
    """Another method's file in a task folder this run writes to: made by this run's settings, or
    refused (removed with `overwrite`). oracle.jsonl, derived from the others, goes with them."""
    if method_name(path) == ORACLE:
        if overwrite:
            discard(path)
        return
    recorded = read_fingerprint(fingerprint_path(path))
    if recorded is not None and not differences(recorded.get("run"), run):
        return
    if overwrite:
        discard(path)
        return
    check_fingerprint(fingerprint_path(path), {**(recorded or {}), "run": run}, output=path, flag="--out")


def run_eval(
    config: SwitchConfig,
    prepared: Prepared,
    out: Path,
    *,
    seed: int | None = 0,
    concurrency: int | None = None,
    adapter: str | None = None,
    progress: bool = True,
    engine=None,
    log: Callable[[str], None] = lambda line: None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Generate, score and summarise; returns results.json's rows (and writes the three outputs).
    `overwrite`: start over the method files this run writes (see `check_outputs`)."""
    from switchgen.graph.backends import connect, server_probes
    from switchgen.servers.clients.remote import check_servers
    from switchgen.servers.engine.local import LocalEngine

    if concurrency is None:
        concurrency = default_concurrency(config)  # as switchgen generate: fill the engine's batches
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    prints = fingerprints(config, prepared, seed, adapter)
    check_outputs(out, prepared, prints, overwrite)
    check_servers(server_probes(config))
    engine = engine or LocalEngine()
    candidates, _ = connect(variant(config, strategy="random"), engine)  # the candidates' backends, once
    setup = EvalSetup(config, engine, dict(zip(config.names, candidates, strict=True)), adapter=adapter)
    generating = [m for m in prepared.methods if m != ORACLE]
    built: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for task in prepared.tasks:
        records = prepared.records[task.name]
        key = task.spec.metric.model_dump_json()
        metric = metrics.get(key) or metrics.setdefault(key, task.metric())  # once per run (a reward model loads here)
        for name in generating:
            if name not in built:
                built[name] = build_method(name, setup)
            method = built[name]
            path = method_file(out, task.name, name)

            def one(i: int, method=method, task=task, records=records) -> dict[str, Any]:
                return _answer(method, records[i], derive_seed(seed, "eval", task.name, records[i]["id"]))

            res = write_records(path, records, one, fingerprint=prints[task.name, name], overwrite=overwrite, key="id",
                                progress=progress, concurrency=concurrency, desc=f"{task.name} {name}")
            if res.failed:
                log(f"{task.name} {name}: {res.failed} queries failed on a server (records hold \"error\"; rerun to retry)")
            _score_file(path, records, metric)
        if ORACLE in prepared.methods:
            _write_oracle(out, task.name, generating, records)
    rows = summarise(config, prepared, out)
    write_results(out, rows, prepared, config, concurrency)
    return rows


def _answer(method, record: dict[str, Any], seed: int | None) -> dict[str, Any]:
    base = {"id": record["id"], "query": record["query"], "reference": record["reference"]}
    start = time.perf_counter()
    try:
        result = method.invoke(record["query"], seed)
    except ServerUnreachable:
        raise
    except (ServerError, InputTooLong) as err:  # this query only: recorded; a rerun retries all but too-long inputs
        return {**base, "output": None, "score": None, "error": str(err),
                **({"permanent": True} if isinstance(err, InputTooLong) else {})}
    seconds = time.perf_counter() - start
    rec = {
        **base,
        "output": result.get("output", ""),
        "score": None,
        "segments": result.get("segments", []),
        "decisions": result.get("decisions", []),
        "tokens_used": result.get("tokens_used", 0),
        "seconds": round(seconds, 4),
    }
    if "route" in result:
        rec["route"] = result["route"]
    return rec


def _score_file(path: Path, records: list[dict[str, Any]], metric) -> None:
    """Fill in every missing score in one batched call, then rewrite the file atomically."""
    done = read_jsonl(path)
    todo = [i for i, r in enumerate(done) if r.get("score") is None and not is_failed(r)]
    if not todo:
        return
    scores = metric.score([done[i]["output"] for i in todo], [records[i] for i in todo])
    lo, hi = metric.range
    for i, value in zip(todo, scores, strict=True):
        if not (lo <= value <= hi) and not math.isnan(value):
            raise ConfigError(f"metric {metric.name} gave {value} for {done[i]['id']}, outside its range {metric.range}")
        done[i]["score"] = value
    atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in done))


def _write_oracle(out: Path, task: str, methods: list[str], records: list[dict[str, Any]]) -> None:
    """Per question the best-scoring record among `methods` (the first one on ties), with its method."""
    files = {m: read_jsonl(method_file(out, task, m)) for m in methods}
    best = []
    for i, record in enumerate(records):
        scored = [(m, files[m][i]) for m in methods if i < len(files[m]) and files[m][i].get("score") is not None]
        if not scored:
            continue
        method, top = max(scored, key=lambda mr: mr[1]["score"])  # max keeps the first of equal scores
        assert top["id"] == record["id"]
        best.append({**top, "method": method})
    atomic_write_text(method_file(out, task, ORACLE), "".join(dumps_record(r) + "\n" for r in best))


def summarise(config: SwitchConfig, prepared: Prepared, out: Path) -> list[dict[str, Any]]:
    """results.json's rows: per task and method the mean score, its interval, n, the paired difference to
    the aligned single model (when it is in the run), total tokens and seconds."""
    baseline = aligned_method(config)
    rows = []
    for task in prepared.tasks:
        scores = {m: _scores(out, task.name, m) for m in prepared.methods}
        base = scores.get(baseline)
        for m in prepared.methods:
            recs = read_jsonl(method_file(out, task.name, m))
            values = list(scores[m].values())
            ci, ci_method = mean_interval(values) if values else (None, None)
            row: dict[str, Any] = {
                "task": task.name,
                "method": m,
                "patch_size": None if m == ORACLE else patch_size_of(m, config),
                "metric": task.metric_name,
                "mean": sum(values) / len(values) if values else None,
                "ci": list(ci) if ci else None,
                "ci_method": ci_method,  # wilson (0/1 scores) or bootstrap
                "n": len(values),
                "delta_vs_aligned": None,
                "delta_ci": None,
                "tokens": sum(r.get("tokens_used") or 0 for r in recs),
                "seconds": round(sum(r.get("seconds") or 0.0 for r in recs), 3),
            }
            if base is not None and m != baseline:
                common = [i for i in scores[m] if i in base]
                if common:
                    delta, ci = paired_difference([scores[m][i] for i in common], [base[i] for i in common])
                    row["delta_vs_aligned"], row["delta_ci"] = delta, list(ci)
            rows.append(row)
    return rows


def _scores(out: Path, task: str, method: str) -> dict[str, float]:
    return {r["id"]: float(r["score"]) for r in read_jsonl(method_file(out, task, method)) if r.get("score") is not None}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(rows: list[dict[str, Any]], baseline: str) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        lines += [
            f"### {task} (metric: {mine[0]['metric']})",
            "",
            f"| method | patch size | mean | 95% CI | n | Δ vs {baseline} | 95% CI | tokens | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in mine:
            ci = f"[{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}]" if r["ci"] else "–"
            dci = f"[{_fmt(r['delta_ci'][0])}, {_fmt(r['delta_ci'][1])}]" if r["delta_ci"] else "–"
            delta = f"{r['delta_vs_aligned']:+.3f}" if r["delta_vs_aligned"] is not None else "–"
            size = r.get("patch_size") or "–"
            lines.append(f"| {r['method']} | {size} | {_fmt(r['mean'])} | {ci} | {r['n']} | {delta} | {dci} | {r['tokens']} | {r['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict[str, Any]], prepared: Prepared, config: SwitchConfig,
                  concurrency: int) -> None:
    """results.json and results.md. `concurrency` is recorded because a record's seconds are its latency
    with that many queries in flight: seconds compare between runs only at the same concurrency."""
    baseline = aligned_method(config)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"baseline": baseline, "concurrency": concurrency, "results": rows}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    note = "" if baseline in prepared.methods else f"\n(Add {baseline} to the methods for paired differences.)\n"
    timing = f"\nSeconds: each answer's latency, summed, with {concurrency} queries in flight.\n"
    intervals = ("\n95% CI of a mean: Wilson's score interval when every score is 0 or 1, else the percentile "
                 "bootstrap; of a Δ: the paired bootstrap over the examples both methods answered.\n")
    atomic_write_text(out / "results.md", markdown(rows, baseline) + note + timing + intervals)
