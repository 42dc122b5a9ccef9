"""`switchgen bench`: what switching costs, measured side by side in one run.

Variants, interleaved, on one engine (the same loaded weights), the same queries and budget:
- switch: the Switch Generation graph as users run it (switcher + candidates, KV caches reused);
- single: the aligned candidate alone writing the same number of tokens in one call (the floor);
- reference: the authors' algorithm on the same engine: every patch re-encodes the whole context,
  the switcher samples up to `patch_size` tokens of text and the lowest candidate index whose digit
  appears anywhere in that text wins (as their code does: not the first digit written). Their script
  also batches each round's calls across all queries; here each query runs alone (the concurrency
  sweep is where batching shows).
With the learned strategy the aligned model anchors the first patch and the one that reaches the
budget, so a budget of at most two patches never calls the switcher: the report says so (`notes`).
Every variant writes to the budget (EOS ignored) so the token counts match. Then a budget sweep
(time per token) and a concurrency sweep (throughput of concurrently running graphs).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch

from switchgen.core.config import SwitchConfig
from switchgen.core.files import atomic_write_text
from switchgen.core.prompts import candidate_prompt, has_chat_template, switcher_prompt, user_turn
from switchgen.graph.backends import connect
from switchgen.graph.builder import build_graph
from switchgen.servers.base import Backend, GenerationParams
from switchgen.servers.engine.local import LocalEngine

QUERIES = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about a lighthouse keeper.",
    "What is the capital of France, and what is it famous for?",
    "Give three tips for learning a new language.",
    "How many legs do three spiders and two cats have in total?",
    "Describe the water cycle in a few sentences.",
    "Why do cats purr?",
    "Summarise the plot of a heist movie you invent.",
]


@dataclass
class Timing:
    seconds: float
    tokens: int
    passes: int = 0  # the learned switcher's forward passes (switcher.calibration multiplies them)


def _repeat(times: int, fn: Callable[[], Timing]) -> Timing:
    """`fn` run `times` times, summed: short runs are timed over as many tokens as long ones."""
    runs = [fn() for _ in range(times)]
    return Timing(sum(r.seconds for r in runs), sum(r.tokens for r in runs))


def _median(runs: list[Timing]) -> Timing:
    return Timing(statistics.median(r.seconds for r in runs), int(statistics.median(r.tokens for r in runs)))


def bench_config(config: SwitchConfig, budget: int, device: str | None) -> SwitchConfig:
    data = config.model_dump()
    data.update(max_new_tokens=budget, seed=data.get("seed") or 0)
    data["patch_size"] = min(data["patch_size"], budget)
    data["sampling"]["ignore_eos"] = True
    if device:
        for cand in data["candidates"]:
            cand["device"] = device
        data["switcher"]["device"] = device
    return SwitchConfig.model_validate(data)


def run_switch(graph, query: str) -> Timing:
    start = time.perf_counter()
    result = graph.invoke({"query": query})
    passes = sum(d.get("passes", 0) for d in result["decisions"])
    return Timing(time.perf_counter() - start, result["tokens_used"], passes)


def run_single(config: SwitchConfig, aligned: Backend, query: str, tokens: int) -> Timing:
    cand = config.candidates[config.aligned_index]
    view = config.candidate_view(config.aligned_index, has_chat_template(aligned.tokenizer))
    prompt = candidate_prompt(aligned.tokenizer, view, query, [], cand.plain_template)
    params = GenerationParams(max_new_tokens=tokens, temperature=0.7, top_p=0.9, seed=0, ignore_eos=True)
    start = time.perf_counter()
    patch = aligned.generate(prompt, params)
    return Timing(time.perf_counter() - start, patch.tokens)


def _reference_switch(config: SwitchConfig, switcher: Backend, query: str, segments, indices, r: int) -> int:
    """The reference switcher: sample `patch_size` tokens of text; the lowest index whose digit appears wins."""
    n = len(config.candidates)
    text = switcher.generate(
        user_turn(switcher.tokenizer, switcher_prompt(query, segments, indices, n)),
        GenerationParams(max_new_tokens=config.patch_size, temperature=0.7, top_p=0.9, seed=r, ignore_eos=True),
    ).text
    return next((j for j in range(n) if str(j) in text), n - 1)


def _reference_patch(config: SwitchConfig, backend: Backend, query: str, segments, r: int, size: int):
    prompt = candidate_prompt(backend.tokenizer, "reference", query, segments)
    return backend.generate(
        prompt, GenerationParams(max_new_tokens=size, temperature=0.7, top_p=0.9, seed=r, ignore_eos=True)
    )


def run_reference(config: SwitchConfig, backends: list[Backend], switcher: Backend, query: str) -> Timing:
    """The authors' loop (switch_generation.py) for one query, on fresh-cache backends."""
    return run_reference_batched(config, backends, switcher, [query])


def run_reference_batched(
    config: SwitchConfig, backends: list[Backend], switcher: Backend, queries: list[str]
) -> Timing:
    """The authors' loop over all `queries` at once, as their script runs it: in lockstep rounds.

    Each round the switcher writes its text for every query (one batch), then each query's chosen
    model writes its patch (a batch per model, all models stepping together); the next round starts
    when every query's patch is done. On fresh-cache backends: every call re-encodes its whole context.
    """
    n, patch, budget = len(backends), config.patch_size, config.max_new_tokens
    rounds = -(-budget // patch)
    segments: list[list[str]] = [[] for _ in queries]
    indices: list[list[int]] = [[] for _ in queries]
    tokens = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        for r in range(rounds):
            size = min(patch, budget - r * patch)
            if n == 3 and r in (0, rounds - 1):
                chosen = [n - 1] * len(queries)
            else:
                chosen = list(pool.map(
                    _reference_switch, repeat(config), repeat(switcher), queries, segments, indices, repeat(r)
                ))
            outs = list(pool.map(
                _reference_patch, repeat(config), [backends[k] for k in chosen], queries, segments, repeat(r), repeat(size)
            ))
            for q, out in enumerate(outs):
                segments[q].append(out.text)
                indices[q].append(chosen[q])
                tokens += out.tokens
    return Timing(time.perf_counter() - start, tokens)


def run_concurrent(graph, queries: list[str], concurrency: int) -> Timing:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda q: graph.invoke({"query": q}), queries))
    return Timing(time.perf_counter() - start, sum(r["tokens_used"] for r in results))


def run_concurrent_single(config: SwitchConfig, aligned: Backend, queries: list[str], concurrency: int) -> Timing:
    """The aligned model alone, `concurrency` queries at once: what batching one checkpoint gives."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda q: run_single(config, aligned, q, config.max_new_tokens), queries))
    return Timing(time.perf_counter() - start, sum(r.tokens for r in results))


def interleaved(variants: dict[str, Callable[[int], Timing]], reps: int, progress: Callable[[str], None]) -> dict:
    """Warm every variant up once, then run them round-robin `reps` times (order rotating)."""
    for fn in variants.values():
        fn(-1)
    runs: dict[str, list[Timing]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            runs[name].append(variants[name](rep))
        progress(f"rep {rep + 1}/{reps}")
    return runs


LOAD_PROCESSES = 2  # other CPU-bound processes running during the spread measurement
LOAD_SECONDS = 600  # each busy process ends on its own after this long, whatever happens to the bench

_BUSY = "import time\nend = time.monotonic() + {seconds}\nx = 0\nwhile time.monotonic() < end:\n    x = (x * 31 + 7) % 1000003\n"


@contextmanager
def busy_machine(processes: int = LOAD_PROCESSES, seconds: float = LOAD_SECONDS) -> Iterator[list[subprocess.Popen]]:
    """`processes` pure-Python spinning processes (other users' work) for the duration of the block."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUSY.format(seconds=seconds)], stdin=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        time.sleep(0.2)  # let them get going
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def spread_under_load(variants: dict[str, Callable[[int], Timing]], reps: int, progress: Callable[[str], None]) -> dict:
    """Each variant's spread (slowest / fastest repetition) while other processes load the machine."""
    with busy_machine():
        runs = interleaved(variants, reps, progress)
    spread = {name: max(t.seconds for t in r) / min(t.seconds for t in r) for name, r in runs.items()}
    return {
        "processes": LOAD_PROCESSES,
        "reps": reps,
        "raw": {n: [(t.seconds, t.tokens) for t in r] for n, r in runs.items()},
        "median_s": {n: statistics.median(t.seconds for t in r) for n, r in runs.items()},
        "spread": spread,
        "spread_ratio": spread["switch"] / spread["single"],
    }


def weights_report(engine: LocalEngine, config: SwitchConfig) -> dict:
    roles = len(config.candidates) + (1 if config.switcher.strategy == "learned" else 0)
    size = sum(
        sum(p.numel() * p.element_size() for p in m.model.parameters()) for m in engine.loaded_models
    )
    return {"roles": roles, "checkpoints_in_memory": len(engine.loaded_models), "weight_bytes": size}


def run_bench(
    config: SwitchConfig,
    *,
    budget: int = 512,
    reps: int = 5,
    budgets: tuple[int, ...] = (128, 256, 512, 1024),
    concurrency: tuple[int, ...] = (1, 4, 8),
    device: str | None = None,
    load_reps: int = 5,
    progress: Callable[[str], None] = print,
) -> dict:
    torch.manual_seed(0)
    engine = LocalEngine()
    cfg = bench_config(config, budget, device)
    graph = build_graph(cfg, engine=engine)
    backends, switcher = connect(cfg, engine)
    ref_backends = [
        engine.backend(c.model, device=c.device, dtype=c.dtype, reuse_cache=False) for c in cfg.candidates
    ]
    ref_switcher = engine.backend(
        cfg.switcher_model,
        device=cfg.switcher_device,
        dtype=cfg.switcher_dtype,
        adapter=cfg.switcher.adapter,
        reuse_cache=False,
    )
    aligned = backends[cfg.aligned_index]
    query = QUERIES[0]

    notes = [
        f"budget {b}: at most two patches of {min(cfg.patch_size, b)}, both anchored: the switcher is never called"
        for b in dict.fromkeys((budget, *budgets))
        if cfg.anchor_on and -(-b // min(cfg.patch_size, b)) <= 2
    ]
    for note in notes:
        progress(f"note: {note}")
    progress(f"variants: budget {budget}, patch {cfg.patch_size}, {reps} reps")
    runs = interleaved(
        {
            "switch": lambda rep: run_switch(graph, query),
            "single": lambda rep: run_single(cfg, aligned, query, budget),
            "reference": lambda rep: run_reference(cfg, ref_backends, ref_switcher, query),
        },
        reps,
        progress,
    )
    med = {name: _median(r) for name, r in runs.items()}

    progress("budget sweep")
    sweep_graphs = {b: build_graph(bench_config(config, b, device), engine=engine) for b in budgets}
    times = {b: max(1, max(budgets) // b) for b in budgets}
    sweep_variants = {
        str(b): (lambda rep, g=g, b=b: _repeat(times[b], lambda: run_switch(g, query))) for b, g in sweep_graphs.items()
    }
    sweep_variants |= {
        f"single-{b}": (lambda rep, b=b: _repeat(times[b], lambda: run_single(cfg, aligned, query, b))) for b in budgets
    }
    sweep_runs = interleaved(sweep_variants, reps, progress)
    sweep = {b: _median(sweep_runs[str(b)]) for b in budgets}
    sweep_single = {b: _median(sweep_runs[f"single-{b}"]) for b in budgets}

    progress("concurrency sweep")
    queries = (QUERIES * ((max(concurrency) + len(QUERIES) - 1) // len(QUERIES)))[: max(concurrency)]
    c_lo, c_hi = min(concurrency), max(concurrency)
    variants = {str(c): (lambda rep, c=c: run_concurrent(graph, queries, c)) for c in concurrency}
    variants |= {f"single-{c}": (lambda rep, c=c: run_concurrent_single(cfg, aligned, queries, c)) for c in concurrency}
    # The reference batched across the same queries in flight: equal batching.
    variants["reference-batched"] = lambda rep: run_reference_batched(cfg, ref_backends, ref_switcher, queries)
    conc_runs = interleaved(variants, reps, progress)
    conc = {int(c): _median(conc_runs[str(c)]) for c in concurrency}
    conc_single = {int(c): _median(conc_runs[f"single-{c}"]) for c in concurrency}
    ref_batched = _median(conc_runs["reference-batched"])

    load = None
    if load_reps > 0:
        progress(f"spread under load: {LOAD_PROCESSES} busy processes")
        load = spread_under_load(
            {"switch": lambda rep: run_switch(graph, query), "single": lambda rep: run_single(cfg, aligned, query, budget)},
            load_reps,
            progress,
        )

    per_token = {name: t.seconds / t.tokens for name, t in med.items()}
    lo, hi = min(budgets), max(budgets)
    return {
        "device": str(aligned.device),
        "torch_threads": torch.get_num_threads(),
        "budget": budget,
        "patch_size": cfg.patch_size,
        "reps": reps,
        "switcher": {"calibration": cfg.switcher_calibration, "passes_per_answer": statistics.median(t.passes for t in runs["switch"])},
        "variants": {n: {"median_s": t.seconds, "tokens": t.tokens, "s_per_token": per_token[n]} for n, t in med.items()},
        "raw": {n: [(t.seconds, t.tokens) for t in r] for n, r in runs.items()},
        "budget_sweep": {
            b: {
                "median_s": t.seconds,
                "tokens": t.tokens,
                "s_per_token": t.seconds / t.tokens,
                "single_s_per_token": sweep_single[b].seconds / sweep_single[b].tokens,
            }
            for b, t in sweep.items()
        },
        "concurrency_sweep": {c: {"median_s": t.seconds, "tokens": t.tokens, "tokens_per_s": t.tokens / t.seconds} for c, t in conc.items()},
        "concurrency_sweep_single": {
            c: {"median_s": t.seconds, "tokens": t.tokens, "tokens_per_s": t.tokens / t.seconds} for c, t in conc_single.items()
        },
        "reference_batched": {"queries": len(queries), "median_s": ref_batched.seconds, "tokens": ref_batched.tokens},
        "load": load,
        "weights": weights_report(engine, cfg),
        "notes": notes,
        "ratios": {
            "switch_vs_single": per_token["switch"] / per_token["single"],
            "reference_vs_switch": per_token["reference"] / per_token["switch"],
            f"reference_batched_vs_switch_c{c_hi}": (ref_batched.seconds / ref_batched.tokens)
            / (conc[c_hi].seconds / conc[c_hi].tokens),
            f"per_token_{hi}_vs_{lo}": (sweep[hi].seconds / sweep[hi].tokens) / (sweep[lo].seconds / sweep[lo].tokens),
            f"throughput_c{c_hi}_vs_c{c_lo}": (conc[c_hi].tokens / conc[c_hi].seconds) / (conc[c_lo].tokens / conc[c_lo].seconds),
            **({"spread_under_load_vs_single": load["spread_ratio"]} if load else {}),
        },
        "single_throughput_ratio": (conc_single[c_hi].tokens / conc_single[c_hi].seconds)
        / (conc_single[c_lo].tokens / conc_single[c_lo].seconds),
    }


def goal(name: str, value: float) -> tuple[str, bool]:
    """The target of a ratio (issue #13) and whether `value` meets it."""
    if name.startswith("per_token_"):
        return "<= 1.3", value <= 1.3
    if name.startswith("throughput_"):
        return ">= 3", value >= 3
    if name.startswith("reference_batched_vs_switch"):
        return ">= 2", value >= 2
    if name == "reference_vs_switch":
        return "(one query at a time; no goal)", True
    if name == "spread_under_load_vs_single":
        return "<= 2", value <= 2
    return "<= 1.10", value <= 1.10


def switcher_note(report: dict) -> str:
    """The switcher's cost in forward passes per answer (switcher.calibration multiplies them), as a line of its own."""
    sw = report.get("switcher")
    return f"\nswitcher: calibration {sw['calibration']}, {sw['passes_per_answer']:g} switcher passes per answer (median)" if sw else ""


def markdown(report: dict) -> str:
    r = report["ratios"]
    v = report["variants"]
    lines = [
        f"device: {report['device']} ({report['torch_threads']} torch threads); budget {report['budget']}, "
        f"patch {report['patch_size']}, median of {report['reps']} interleaved reps after a warm-up{switcher_note(report)}",
        "",
        "| variant | median s | tokens | ms/token |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {t['median_s']:.3f} | {t['tokens']} | {1000 * t['s_per_token']:.2f} |" for n, t in v.items()]
    lines += [
        "",
        "| budget | switch: median s (repeated to ~equal tokens) | tokens | ms/token | aligned alone: ms/token |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b} | {t['median_s']:.3f} | {t['tokens']} | {1000 * t['s_per_token']:.2f} | {1000 * t['single_s_per_token']:.2f} |"
        for b, t in report["budget_sweep"].items()
    ]
    lines += [
        "",
        "| concurrency | switch: median s | tokens | tokens/s | aligned alone: median s | tokens | tokens/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    single = report["concurrency_sweep_single"]
    lines += [
        f"| {c} | {t['median_s']:.3f} | {t['tokens']} | {t['tokens_per_s']:.0f} "
        f"| {single[c]['median_s']:.3f} | {single[c]['tokens']} | {single[c]['tokens_per_s']:.0f} |"
        for c, t in report["concurrency_sweep"].items()
    ]
    ref = report["reference_batched"]
    lines += [
        "",
        f"reference batched across the same {ref['queries']} queries in lockstep rounds: "
        f"median {ref['median_s']:.3f} s for {ref['tokens']} tokens ({ref['tokens'] / ref['median_s']:.0f} tokens/s)",
    ]
    load = report.get("load")
    if load:
        lines += [
            "",
            f"| under load ({load['processes']} busy processes, {load['reps']} reps) | median s | min s | max s | spread (max/min) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, raw in load["raw"].items():
            secs = [t for t, _ in raw]
            lines.append(
                f"| {name} | {load['median_s'][name]:.3f} | {min(secs):.3f} | {max(secs):.3f} | {load['spread'][name]:.2f} |"
            )
    lines += [f"note: {note}" for note in report.get("notes", [])]
    w = report["weights"]
    lines += ["", "| goal | ratio | target | met |", "|---|---:|---:|:---:|"]
    for name, value in r.items():
        target, ok = goal(name, value)
        lines.append(f"| {name} | {value:.2f} | {target} | {'yes' if ok else 'no'} |")
    lines.append(f"| (aligned alone: throughput high vs low concurrency) | {report['single_throughput_ratio']:.2f} | | |")
    lines.append(
        f"| weights in memory | {w['checkpoints_in_memory']} checkpoints for {w['roles']} roles "
        f"({w['weight_bytes'] / 2**20:.1f} MiB) | shared once | "
        f"{'yes' if w['checkpoints_in_memory'] <= w['roles'] else 'no'} |"
    )
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=2))




class PrefillCounter:
    """A backend passed through, counting the prompt tokens each patch had to encode (not found cached)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.prefilled = 0

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def generate(self, prompt: str, params: GenerationParams, on_text=None):
        patch = self.backend.generate(prompt, params, on_text)
        self.prefilled += patch.prefilled
        return patch

    def choice_distribution(self, prompt: str, choices):
        return self.backend.choice_distribution(prompt, choices)


def run_rollouts_bench(
    config: SwitchConfig,
    *,
    budget: int = 512,
    instances: int = 2,
    k: int = 4,
    reps: int = 3,
    concurrency: tuple[int, ...] = (1,),
    device: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict:
    """Rollouts (training/rollouts.py) with the shared-prefix path against the same runs without reuse.

    Both variants run the same instances with the same seeds on the same loaded weights, every
    patch to its full size (EOS ignored), so they write the same tokens: `shared` on backends that
    reuse KV caches (continuations of one trace find its prefix cached), `independent` on
    `reuse_cache=False` backends (every patch of every continuation re-encodes its whole context,
    as independent generations do). At concurrency c, c runs of an instance are in flight at once
    (the engine batches them). Scoring is left out: it times generation.
    """
    from switchgen.training.rollouts import Rollouts, rollout_config
    from switchgen.training.settings import RolloutSettings

    torch.manual_seed(0)
    engine = LocalEngine()
    cfg = rollout_config(bench_config(config, budget, device))
    counters = {
        name: {c.name: PrefillCounter(engine.backend(c.model, device=c.device, dtype=c.dtype, reuse_cache=reuse))
               for c in cfg.candidates}
        for name, reuse in (("shared", True), ("independent", False))
    }
    graphs = {name: build_graph(cfg, engine=engine, backends=backends) for name, backends in counters.items()}
    settings = RolloutSettings(k=k, seed=0)
    records = [{"id": f"bench-{i}", "query": q} for i, q in enumerate((QUERIES * instances)[:instances])]
    counts: dict[str, int] = {}
    prefilled: dict[str, int] = {}
    pools = {c: ThreadPoolExecutor(max_workers=c) for c in concurrency if c > 1}

    def variant(name: str, c: int) -> Callable[[int], Timing]:
        rollouts = Rollouts(graphs[name], cfg, lambda outputs, record: [0.0] * len(outputs), settings, pool=pools.get(c))
        key = f"{name}@{c}"

        def run(rep: int) -> Timing:
            before = sum(x.prefilled for x in counters[name].values())
            start = time.perf_counter()
            done = [rollouts.instance(r) for r in records]
            seconds = time.perf_counter() - start
            counts[key] = sum(len(p["continuation_tokens"]) for d in done for p in d["patches"])
            prefilled[key] = sum(x.prefilled for x in counters[name].values()) - before
            return Timing(seconds, sum(d["tokens"] for d in done))

        return run

    progress(f"rollouts: {instances} instances x {len(cfg.candidates)} candidates x k={k}, budget {budget}, "
             f"concurrency {concurrency}, {reps} reps")
    try:
        runs = interleaved({f"{n}@{c}": variant(n, c) for c in concurrency for n in graphs}, reps, progress)
    finally:
        for pool in pools.values():
            pool.shutdown()
    med = {key: _median(r) for key, r in runs.items()}
    out: dict[int, dict] = {}
    for c in concurrency:
        row = {}
        for name in graphs:
            t = med[f"{name}@{c}"]
            row[name] = {"median_s": t.seconds, "tokens": t.tokens, "rollouts": counts[f"{name}@{c}"],
                         "rollouts_per_s": counts[f"{name}@{c}"] / t.seconds, "tokens_per_s": t.tokens / t.seconds,
                         "prefilled_tokens": prefilled[f"{name}@{c}"]}
        row["speedup"] = row["independent"]["median_s"] / row["shared"]["median_s"]  # same runs, same tokens
        out[c] = row
    return {
        "device": str(engine.loaded_models[0].device),
        "torch_threads": torch.get_num_threads(),
        "budget": budget,
        "patch_size": cfg.patch_size,
        "instances": instances,
        "k": k,
        "reps": reps,
        "rollouts": out,
        "raw": {n: [(t.seconds, t.tokens) for t in r] for n, r in runs.items()},
    }


def rollouts_markdown(report: dict) -> str:
    lines = [
        f"device: {report['device']} ({report['torch_threads']} torch threads); {report['instances']} instances, "
        f"k={report['k']}, budget {report['budget']}, patch {report['patch_size']}, median of {report['reps']} "
        "interleaved reps after a warm-up",
        "",
        "| concurrency | rollouts | median s | continuations | rollouts/s | tokens written | tokens/s "
        "| prompt tokens prefilled |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"shared": "shared prefix (KV caches reused)", "independent": "independent (no prefix reuse)"}
    for c, row in report["rollouts"].items():
        lines += [
            f"| {c} | {labels[n]} | {t['median_s']:.3f} | {t['rollouts']} | {t['rollouts_per_s']:.2f} | {t['tokens']} "
            f"| {t['tokens_per_s']:.0f} | {t['prefilled_tokens']} |"
            for n, t in row.items() if n != "speedup"
        ]
    lines += [""] + [f"shared-prefix speedup at concurrency {c}: {row['speedup']:.2f}x"
                     for c, row in report["rollouts"].items()]
    return "\n".join(lines)

__all__ = ["markdown", "rollouts_markdown", "run_bench", "run_rollouts_bench", "write_json"]
