"""`switchgen bench`: what switching costs, measured side by side in one run.

Variants, interleaved, on one engine (the same loaded weights), the same queries and budget:
- switch: the Switch Generation graph as users run it (switcher + candidates, KV caches reused);
- single: the aligned candidate alone writing the same number of tokens in one call (the floor);
- reference: the authors' algorithm on the same engine: every patch re-encodes the whole context,
  the switcher samples up to `patch_size` tokens of text and the lowest candidate index whose digit
  appears anywhere in that text wins (as their code does: not the first digit written). Their script
  also batches each round's calls across all queries; here one query runs alone (the concurrency
  sweep runs it batched across the same queries in flight, for the ratio at equal batching).
With the learned strategy the aligned model anchors the first patch and the one that reaches the
budget, so a budget of at most two patches never calls the switcher: the report says so (`notes`).
Every variant writes to the budget (EOS ignored) so the token counts match. Then a budget sweep
(time per token), a concurrency sweep (throughput of concurrently running graphs) and the spread
under load. Each section's table is shown as soon as it is measured, and each section stops
repeating once its time budget is spent (`section_seconds`), so a bench cannot run unbounded.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from switchgen.bench_runs import (
    LOAD_PROCESSES,
    QUERIES,
    Timing,
    bench_config,
    busy_machine,
    interleaved,
    median,
    queries_for,
    raw_figures,
    repeat_run,
    run_concurrent,
    run_concurrent_single,
    run_reference,
    run_single,
    run_switch,
)
from switchgen.bench_tables import (
    budget_table,
    concurrency_table,
    load_table,
    summary_table,
    variants_table,
)
from switchgen.core.config import SwitchConfig
from switchgen.core.files import atomic_write_text
from switchgen.graph.backends import connect
from switchgen.graph.builder import build_graph
from switchgen.servers.base import Backend
from switchgen.servers.engine.local import LocalEngine


@dataclass(frozen=True)
class BenchSettings:
    budget: int = 512
    reps: int = 5
    budgets: tuple[int, ...] = (128, 256, 512, 1024)
    concurrency: tuple[int, ...] = (1, 4, 8)
    device: str | None = None
    load_reps: int = 5
    section_seconds: float | None = None  # each section stops repeating after this long (None: all reps)


@dataclass
class Setup:
    """One engine, the graph at the bench's budget, and the variants' backends."""

    config: SwitchConfig
    cfg: SwitchConfig
    engine: LocalEngine
    graph: object
    aligned: Backend
    ref_backends: list[Backend]
    ref_switcher: Backend
    query: str = QUERIES[0]
    notes: list[str] = field(default_factory=list)


def setup(config: SwitchConfig, s: BenchSettings) -> Setup:
    torch.manual_seed(0)
    engine = LocalEngine()
    cfg = bench_config(config, s.budget, s.device)
    graph = build_graph(cfg, engine=engine)
    backends, _ = connect(cfg, engine)
    ref_backends = [engine.backend(c.model, device=c.device, dtype=c.dtype, reuse_cache=False) for c in cfg.candidates]
    ref_switcher = engine.backend(
        cfg.switcher_model, device=cfg.switcher_device, dtype=cfg.switcher_dtype, adapter=cfg.switcher.adapter,
        reuse_cache=False,
    )
    notes = [
        f"budget {b}: at most two patches of {min(cfg.patch_size, b)}, both anchored: the switcher is never called"
        for b in dict.fromkeys((s.budget, *s.budgets))
        if cfg.anchor_on and -(-b // min(cfg.patch_size, b)) <= 2
    ]
    return Setup(config, cfg, engine, graph, backends[cfg.aligned_index], ref_backends, ref_switcher, notes=notes)


def measure_variants(b: Setup, s: BenchSettings, progress: Callable[[str], None]) -> dict:
    progress(f"variants: budget {s.budget}, patch {b.cfg.patch_size}, {s.reps} reps")
    runs = interleaved(
        {
            "switch": lambda rep: run_switch(b.graph, b.query),
            "single": lambda rep: run_single(b.cfg, b.aligned, b.query, s.budget),
            "reference": lambda rep: run_reference(b.cfg, b.ref_backends, b.ref_switcher, [b.query]),
        },
        s.reps, progress, s.section_seconds,
    )
    med = {name: median(r) for name, r in runs.items()}
    variants = {n: {"median_s": t.seconds, "tokens": t.tokens, "s_per_token": t.seconds / t.tokens} for n, t in med.items()}
    switcher = {"calibration": b.cfg.switcher_calibration,
                "passes_per_answer": statistics.median(t.passes for t in runs["switch"])}
    return {"variants": variants, "raw": raw_figures(runs), "switcher": switcher}


def measure_budgets(b: Setup, s: BenchSettings, progress: Callable[[str], None]) -> dict:
    """Time per token at each budget, switch and aligned alone; short budgets repeated to ~equal tokens."""
    progress("budget sweep")
    graphs = {n: build_graph(bench_config(b.config, n, s.device), engine=b.engine) for n in s.budgets}
    times = {n: max(1, max(s.budgets) // n) for n in s.budgets}
    variants = {
        str(n): (lambda rep, g=g, n=n: repeat_run(times[n], lambda: run_switch(g, b.query))) for n, g in graphs.items()
    }
    variants |= {
        f"single-{n}": (lambda rep, n=n: repeat_run(times[n], lambda: run_single(b.cfg, b.aligned, b.query, n)))
        for n in s.budgets
    }
    runs = interleaved(variants, s.reps, progress, s.section_seconds)
    sweep = {}
    for n in s.budgets:
        t, single = median(runs[str(n)]), median(runs[f"single-{n}"])
        sweep[n] = {"median_s": t.seconds, "tokens": t.tokens, "s_per_token": t.seconds / t.tokens,
                    "single_s_per_token": single.seconds / single.tokens}
    return {"budget_sweep": sweep}


def measure_concurrency(b: Setup, s: BenchSettings, progress: Callable[[str], None]) -> dict:
    """Throughput with c queries in flight, switch and aligned alone; the reference batched across the most."""
    progress("concurrency sweep")
    queries = queries_for(max(s.concurrency))
    variants = {str(c): (lambda rep, c=c: run_concurrent(b.graph, queries, c)) for c in s.concurrency}
    variants |= {f"single-{c}": (lambda rep, c=c: run_concurrent_single(b.cfg, b.aligned, queries, c))
                 for c in s.concurrency}
    # The reference batched across the same queries in flight: equal batching.
    variants["reference-batched"] = lambda rep: run_reference(b.cfg, b.ref_backends, b.ref_switcher, queries)
    runs = interleaved(variants, s.reps, progress, s.section_seconds)

    def row(t: Timing) -> dict:
        return {"median_s": t.seconds, "tokens": t.tokens, "tokens_per_s": t.tokens / t.seconds}

    ref = median(runs["reference-batched"])
    return {
        "concurrency_sweep": {c: row(median(runs[str(c)])) for c in s.concurrency},
        "concurrency_sweep_single": {c: row(median(runs[f"single-{c}"])) for c in s.concurrency},
        "reference_batched": {"queries": len(queries), "median_s": ref.seconds, "tokens": ref.tokens},
    }


def measure_load(b: Setup, s: BenchSettings, progress: Callable[[str], None]) -> dict:
    """Each variant's spread (slowest / fastest repetition) while other processes load the machine."""
    progress(f"spread under load: {LOAD_PROCESSES} busy processes")
    variants = {"switch": lambda rep: run_switch(b.graph, b.query),
                "single": lambda rep: run_single(b.cfg, b.aligned, b.query, s.budget)}
    with busy_machine():
        runs = interleaved(variants, s.load_reps, progress, s.section_seconds)
    spread = {name: max(t.seconds for t in r) / min(t.seconds for t in r) for name, r in runs.items()}
    return {"load": {
        "processes": LOAD_PROCESSES, "reps": min(len(r) for r in runs.values()), "raw": raw_figures(runs),
        "median_s": {n: statistics.median(t.seconds for t in r) for n, r in runs.items()},
        "spread": spread, "spread_ratio": spread["switch"] / spread["single"],
    }}


def engine_report(b: Setup) -> dict:
    """Weights in memory and what the decode workers did (batch sizes, prefill passes, CUDA graphs)."""
    roles = len(b.cfg.candidates) + (1 if b.cfg.switcher.strategy == "learned" else 0)
    size = sum(sum(p.numel() * p.element_size() for p in m.model.parameters()) for m in b.engine.loaded_models)
    workers = {id(w): w for w in b.engine.workers}.values()
    batches = [batch for w in workers for _, batch in w.fused.values()]
    return {
        "weights": {"roles": roles, "checkpoints_in_memory": len(b.engine.loaded_models), "weight_bytes": size},
        "engine": {
            "max_batch": max((w.max_batch_seen for w in workers), default=0),
            "max_prefill_rows": max((w.max_prefill_seen for w in workers), default=0),
            "graph_captures": sum(batch.graphs.captures for batch in batches),
            "graph_replays": sum(batch.graphs.replays for batch in batches),
            "cuda_max_allocated": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        },
    }


def ratios(report: dict) -> dict[str, float]:
    """The goal ratios of whatever sections ran (see bench_tables.goal for the targets)."""
    out: dict[str, float] = {}
    v = report.get("variants")
    if v:
        out["switch_vs_single"] = v["switch"]["s_per_token"] / v["single"]["s_per_token"]
        out["reference_vs_switch"] = v["reference"]["s_per_token"] / v["switch"]["s_per_token"]
    conc = report.get("concurrency_sweep")
    if conc:
        lo, hi = min(conc), max(conc)
        ref, single = report["reference_batched"], report["concurrency_sweep_single"]
        out[f"reference_batched_vs_switch_c{hi}"] = conc[hi]["tokens_per_s"] * ref["median_s"] / ref["tokens"]
        out[f"switch_vs_single_c{hi}"] = single[hi]["tokens_per_s"] / conc[hi]["tokens_per_s"]
        if hi > lo:
            out[f"throughput_c{hi}_vs_c{lo}"] = conc[hi]["tokens_per_s"] / conc[lo]["tokens_per_s"]
    sweep = report.get("budget_sweep")
    if sweep and len(sweep) > 1:
        lo, hi = min(sweep), max(sweep)
        out[f"per_token_{hi}_vs_{lo}"] = sweep[hi]["s_per_token"] / sweep[lo]["s_per_token"]
    if report.get("load"):
        out["spread_under_load_vs_single"] = report["load"]["spread_ratio"]
    return out


def run_bench(
    config: SwitchConfig,
    s: BenchSettings,
    *,
    progress: Callable[[str], None] = print,
    show: Callable[[str], None] = lambda text: None,
) -> dict:
    """Every section that the settings `s` ask for; `show` gets each section's table as soon as it is measured."""
    start = time.perf_counter()
    b = setup(config, s)
    report: dict = {"device": str(b.aligned.device), "torch_threads": torch.get_num_threads(), "budget": s.budget,
                    "patch_size": b.cfg.patch_size, "reps": s.reps, "notes": b.notes}
    for note in b.notes:
        progress(f"note: {note}")
    sections = [(measure_variants, variants_table), (measure_budgets, budget_table),
                (measure_concurrency, concurrency_table), (measure_load, load_table)]
    wanted = {measure_budgets: bool(s.budgets), measure_concurrency: bool(s.concurrency),
              measure_load: s.load_reps > 0}
    for measure, table in sections:
        if wanted.get(measure, True):
            report |= measure(b, s, progress)
            show(table(report))
    report |= engine_report(b)
    report["ratios"] = ratios(report)
    if "concurrency_sweep_single" in report:
        single = report["concurrency_sweep_single"]
        report["single_throughput_ratio"] = single[max(single)]["tokens_per_s"] / single[min(single)]["tokens_per_s"]
    report["wall_s"] = time.perf_counter() - start
    show(summary_table(report))
    return report


def write_json(report: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=2))


__all__ = ["QUERIES", "BenchSettings", "busy_machine", "run_bench", "write_json"]
