"""`switchgen rollouts`: a switcher's training data by the paper's recipe (arXiv 2510.09913, §2-3).

For each training query of a task:

1. a trace by random switching, cut at a random 10-90% of `max_new_tokens`, rounded down to a
   patch boundary: the switcher is only ever asked between patches, so a trace cut mid-patch is
   a state inference never shows it (a trace that ended on its own before the cut loses its last
   patch, so that a next patch is still to be written);
2. the divergent step: each candidate writes one more patch after the trace (a forced author);
3. k continuations per candidate by random switching from the trace plus that patch, to EOS or
   the budget, each scored by the task's metric; the candidate's utility is their mean (a patch
   that ends the answer has nothing to continue: its k scores are the one finished answer's);
4. the label: the candidate with the highest utility. Ties (utilities within 1e-9): the aligned
   candidate when it is among the best (the author the graph falls back to), else the lowest
   index. The margin is the label's utility minus the best other one's (0 on a tie).

Every step is a run of the Switch Generation graph: the trace goes in as `segments`, the
divergent author as `forced`, and random switching and the run's seed through the run context.
So a candidate sees the trace exactly as at inference, remote backends (TGI, vLLM) work, and the
engine's prefix cache shares the trace's KV cache between the runs that continue it. Each run's
seed derives from (--seed, instance id, candidate, continuation): the same seed gives the same file.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from switchgen.core.config import SwitchConfig
from switchgen.core.errors import InputError, ServerError, ServerUnreachable
from switchgen.core.fingerprint import config_fingerprint
from switchgen.core.jobs import write_records
from switchgen.core.seeds import derive_seed
from switchgen.core.trace import ENDED, Segment
from switchgen.training.settings import RolloutSettings

if TYPE_CHECKING:
    from switchgen.tasks import Task

TIE = 1e-9

# outputs and their task record -> one score per output (a task metric's `score`, batched)
Scorer = Callable[[list[str], dict[str, Any]], list[float]]


def rollout_config(config: SwitchConfig) -> SwitchConfig:
    """`config` with random switching: the graph the rollouts run (no switcher LM is loaded or asked)."""
    data = config.model_dump()
    data["switcher"]["strategy"] = "random"
    return SwitchConfig.model_validate(data)


def switcher_base(config: SwitchConfig) -> str:
    """The model a switcher is trained on by default: the aligned candidate's (as in the paper)."""
    return config.candidates[config.aligned_index].model


def _as_input(segment: Segment) -> Segment:
    """A written segment as graph input: its author and exact token count, no finish reason."""
    return {"candidate": segment["candidate"], "index": segment["index"], "text": segment["text"],
            "tokens": segment["tokens"]}


def pick_label(means: Sequence[float], aligned: int) -> tuple[int, float, bool]:
    """(label, margin, tie): the best mean; ties go to `aligned` if among the best, else the lowest index."""
    best = max(means)
    tied = [i for i, m in enumerate(means) if best - m <= TIE]
    label = aligned if aligned in tied else tied[0]
    others = [m for i, m in enumerate(means) if i != label]
    margin = 0.0 if len(tied) > 1 or not others else means[label] - max(others)
    return label, margin, len(tied) > 1


def fingerprint(config: SwitchConfig, settings: RolloutSettings, task: dict[str, Any] | None) -> dict[str, Any]:
    """What shapes a rollouts file (core/fingerprint.py): the configuration the graph runs, the
    models' revisions, --k, --seed and the trace cut, and the task (`Task.fingerprint()`)."""
    from switchgen.servers.engine.loading import model_revisions

    config = rollout_config(config)
    return {"command": "rollouts", "config": config_fingerprint(config), "revisions": model_revisions(config),
            "settings": {**asdict(settings), "cut": list(settings.cut)}, "task": task}


class Rollouts:
    """The recipe for one configuration: `instance(record)` -> that query's rollouts record."""

    def __init__(
        self,
        graph: Any,
        config: SwitchConfig,
        score: Scorer,
        settings: RolloutSettings,
        *,
        task: Task | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.graph, self.config, self.score, self.settings = graph, config, score, settings
        self.task = task.name if task is not None else ""
        self.task_fingerprint = task.fingerprint() if task is not None else None
        self.pool = pool  # runs of one instance in parallel (--concurrency); None: one after another

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.pool.map(fn, items)) if self.pool is not None else [fn(x) for x in items]

    def _seed(self, rid: str, *parts: object) -> int:
        seed = derive_seed(self.settings.seed, "rollouts", rid, *parts)
        assert seed is not None
        return seed

    def _run(self, query: str, seed: int, segments: list[Segment] | None = None, forced: str | None = None,
             **context: int) -> dict:
        inputs: dict[str, Any] = {"query": query}
        if segments:
            inputs["segments"] = segments
        if forced is not None:
            inputs["forced"] = [forced]
        return self.graph.invoke(inputs, context={"strategy": "random", "seed": seed, **context})

    def settings_record(self) -> dict[str, Any]:
        cfg = self.config
        return {**asdict(self.settings), "cut": list(self.settings.cut), "max_new_tokens": cfg.max_new_tokens,
                "patch_size": cfg.patch_size, "models": [c.model for c in cfg.candidates]}

    def fingerprint(self) -> dict[str, Any]:
        return fingerprint(self.config, self.settings, self.task_fingerprint)

    def instance(self, record: dict[str, Any]) -> dict[str, Any]:
        """One query's rollouts record: a trace cut at random, each candidate's next patch, scored continuations."""
        cfg = self.config
        rid, query = str(record["id"]), record["query"]
        lo, hi = self.settings.cut
        length = random.Random(self._seed(rid, "cut")).uniform(lo, hi) * cfg.max_new_tokens
        cut = int(length) // cfg.patch_size * cfg.patch_size  # down to a patch boundary (0: the first decision)
        trace, tokens = self._trace(rid, query, cut)
        used = sum(s["tokens"] for s in trace)
        patches = self._map(lambda name: self._divergent(rid, query, trace, name), cfg.names)
        runs = self._continuations(rid, query, trace, patches)
        per = self._per_candidate(record, trace, patches, runs)
        tokens += sum(p["tokens"] for p in patches) + sum(sum(p["continuation_tokens"]) for p in per)
        label, margin, tie = pick_label([p["mean"] for p in per], cfg.aligned_index)
        return {
            "id": rid, "task": self.task, "query": query, "reference": record.get("reference"),
            "candidates": cfg.names, "base": switcher_base(cfg), "settings": self.settings_record(),
            "cut": cut, "trace": trace, "trace_tokens": used, "patches": per,
            "label": label, "label_name": cfg.names[label], "margin": margin, "tie": tie, "tokens": tokens,
        }

    def _trace(self, rid: str, query: str, cut: int) -> tuple[list[Segment], int]:
        """Step 1: random switching up to `cut` tokens; (the trace as graph input, tokens generated)."""
        run = self._run(query, self._seed(rid, "trace"), max_new_tokens=cut) if cut else {"segments": [], "tokens_used": 0}
        written = list(run["segments"])
        if written and written[-1]["finish_reason"] in ("eos", "stop"):
            written.pop()  # it ended before the cut: the decision before its last patch is still open
        return [_as_input(s) for s in written], run["tokens_used"]

    def _divergent(self, rid: str, query: str, trace: list[Segment], name: str) -> Segment:
        """Step 2: candidate `name` writes the next patch."""
        budget = self.config.max_new_tokens
        cap = min(budget, sum(s["tokens"] for s in trace) + self.config.patch_size)
        out = self._run(query, self._seed(rid, "patch", name), trace, forced=name, max_new_tokens=cap)
        new = out["segments"][len(trace)]
        if new["finish_reason"] == "budget" and cap < budget:
            new = {**new, "finish_reason": "length"}  # only this run's cap was reached
        return new

    def _continuations(self, rid: str, query: str, trace: list[Segment], patches: list[Segment]) -> dict:
        """Step 3: k continuations by random switching (to EOS or the budget) after each patch that did not end."""
        names = self.config.names
        jobs = [(i, j) for i, p in enumerate(patches) if p["finish_reason"] not in ENDED for j in range(self.settings.k)]

        def continuation(job: tuple[int, int]) -> dict:
            i, j = job
            return self._run(query, self._seed(rid, "continue", names[i], j), [*trace, _as_input(patches[i])])

        return dict(zip(jobs, self._map(continuation, jobs), strict=True))

    def _per_candidate(self, record: dict, trace: list[Segment], patches: list[Segment], runs: dict) -> list[dict]:
        """Step 4: every output scored by the task's metric; per candidate its scores and their mean."""
        k, base_text = self.settings.k, "".join(s["text"] for s in trace)
        used = sum(s["tokens"] for s in trace)
        outputs: list[str] = []
        owners: list[int] = []
        for i, p in enumerate(patches):
            ended = p["finish_reason"] in ENDED
            outputs += [base_text + p["text"]] if ended else [runs[(i, j)]["output"] for j in range(k)]
            owners += [i] * (1 if ended else k)
        scores = [float(s) for s in self.score(outputs, record)]
        if len(scores) != len(outputs):
            raise InputError(f"the metric gave {len(scores)} scores for {len(outputs)} outputs")
        per: list[dict[str, Any]] = []
        for i, p in enumerate(patches):
            mine = [s for owner, s in zip(owners, scores, strict=True) if owner == i]
            mine = mine * k if len(mine) == 1 else mine
            cont_tokens = [runs[(i, j)]["tokens_used"] - used - p["tokens"] for j in range(k) if (i, j) in runs]
            per.append({"candidate": p["candidate"], "index": i, "text": p["text"], "tokens": p["tokens"],
                        "finish_reason": p["finish_reason"], "scores": mine, "mean": statistics.fmean(mine),
                        "continuation_tokens": cont_tokens})
        return per


class RolloutsResult(NamedTuple):
    start: int  # records already in the file
    written: int  # records appended now
    failed: int  # records (old retried or new) that hold an "error"
    tokens: int  # tokens generated by this run
    seconds: float


def run_rollouts(
    rollouts: Rollouts,
    records: list[dict[str, Any]],
    output: Path,
    *,
    concurrency: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> RolloutsResult:
    """A record per task record into `output`, resumable exactly like `switchgen generate`
    (core/jobs.py `write_records`): records are appended and fsynced one by one, in input
    order; a rerun checks those written (same ids in the same order, made with the same
    `rollouts.fingerprint()`: else it is refused, unless `overwrite` starts over), cuts off a torn
    last line, retries the failed ones and continues after the last. A server that fails one
    instance records its "error" (a rerun retries it); an unreachable server stops the run with
    the records kept.
    """
    sources = [{**r, "id": str(r["id"])} for r in records]
    tokens = 0
    lock = threading.Lock()
    began = time.perf_counter()

    def one(index: int) -> dict[str, Any]:
        nonlocal tokens
        source = sources[index]
        try:
            rec = rollouts.instance(source)
        except ServerUnreachable:
            raise
        except ServerError as err:  # this instance only: recorded (no generation_log), retried by a rerun
            return {"id": source["id"], "query": source["query"], "error": str(err)}
        with lock:
            tokens += rec["tokens"]
        return rec

    start, written, failed = write_records(
        output, sources, one, fingerprint=rollouts.fingerprint(), overwrite=overwrite, key="id", progress=progress,
        concurrency=concurrency, desc="rollouts",
        unit="instance", postfix=lambda: f"{tokens / max(time.perf_counter() - began, 1e-9):.0f} tokens/s",
    )
    return RolloutsResult(start, written, failed, tokens, time.perf_counter() - began)


def task_scorer(metric: Any) -> Scorer:
    """A task metric (switchgen.tasks.Metric) as a Scorer: one batched call per instance."""
    return lambda outputs, record: metric.score(outputs, [record] * len(outputs))


def instances(records: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The first `n` records (all by default); past the split's end it starts over, ids marked
    "#1", "#2", ...: each repeat draws its own trace (its seeds derive from the id)."""
    if n is None:
        return records
    if n < 1:
        raise InputError(f"--instances must be at least 1, got {n}")
    if not records:
        raise InputError("the task's train split has no records")
    return [records[i % len(records)] if i < len(records)
            else {**records[i % len(records)], "id": f"{records[i % len(records)]['id']}#{i // len(records)}"}
            for i in range(n)]
