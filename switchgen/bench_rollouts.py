"""`switchgen bench --rollouts`: switcher-training rollouts with the shared KV prefix against independent generations.

Both variants run the same instances with the same seeds on the same loaded weights, every patch to
its full size (EOS ignored), so they write the same tokens: `shared` on backends that reuse KV
caches (continuations of one trace find its prefix cached), `independent` on `reuse_cache=False`
backends (every patch of every continuation re-encodes its whole context, as independent
generations do). At concurrency c, c runs of an instance are in flight at once (the engine batches
them). Scoring is left out: it times generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from switchgen.bench_runs import Timing, bench_config, interleaved, median, queries_for, raw_figures
from switchgen.core.config import SwitchConfig
from switchgen.graph.builder import build_graph
from switchgen.servers.base import Backend, GenerationParams
from switchgen.servers.engine.local import LocalEngine


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


@dataclass
class _Variant:
    """One rollouts variant at one concurrency: what it wrote and prefilled in its last run."""

    rollouts: object
    counters: dict[str, PrefillCounter]
    records: list[dict]
    continuations: int = 0
    prefilled: int = 0

    def __call__(self, rep: int) -> Timing:
        before = sum(x.prefilled for x in self.counters.values())
        start = time.perf_counter()
        done = [self.rollouts.instance(r) for r in self.records]
        seconds = time.perf_counter() - start
        self.continuations = sum(len(p["continuation_tokens"]) for d in done for p in d["patches"])
        self.prefilled = sum(x.prefilled for x in self.counters.values()) - before
        return Timing(seconds, sum(d["tokens"] for d in done))


def _variants(config: SwitchConfig, budget: int, device: str | None, instances: int, k: int,
              pools: dict[int, ThreadPoolExecutor], concurrency: tuple[int, ...]) -> tuple[LocalEngine, SwitchConfig, dict]:
    from switchgen.training.rollouts import Rollouts, rollout_config
    from switchgen.training.settings import RolloutSettings

    engine = LocalEngine()
    cfg = rollout_config(bench_config(config, budget, device))
    counters = {
        name: {c.name: PrefillCounter(engine.backend(c.model, device=c.device, dtype=c.dtype, reuse_cache=reuse))
               for c in cfg.candidates}
        for name, reuse in (("shared", True), ("independent", False))
    }
    records = [{"id": f"bench-{i}", "query": q} for i, q in enumerate(queries_for(instances))]
    settings = RolloutSettings(k=k, seed=0)
    variants = {}
    for name, backends in counters.items():
        graph = build_graph(cfg, engine=engine, backends=backends)
        for c in concurrency:
            rollouts = Rollouts(graph, cfg, lambda outputs, record: [0.0] * len(outputs), settings, pool=pools.get(c))
            variants[f"{name}@{c}"] = _Variant(rollouts, backends, records)
    return engine, cfg, variants


def run_rollouts_bench(
    config: SwitchConfig, *, budget: int = 512, instances: int = 2, k: int = 4, reps: int = 3,
    concurrency: tuple[int, ...] = (1,), device: str | None = None, progress: Callable[[str], None] = print,
    section_seconds: float | None = None,
) -> dict:
    """Rollouts/s with the shared prefix and without, interleaved, at each concurrency."""
    torch.manual_seed(0)
    pools = {c: ThreadPoolExecutor(max_workers=c) for c in concurrency if c > 1}
    try:
        engine, cfg, variants = _variants(config, budget, device, instances, k, pools, concurrency)
        progress(f"rollouts: {instances} instances x {len(cfg.candidates)} candidates x k={k}, budget {budget}, "
                 f"concurrency {concurrency}, {reps} reps")
        runs = interleaved(variants, reps, progress, section_seconds)
    finally:
        for pool in pools.values():
            pool.shutdown()
    out: dict[int, dict] = {}
    for c in concurrency:
        row = {}
        for name in ("shared", "independent"):
            t, v = median(runs[f"{name}@{c}"]), variants[f"{name}@{c}"]
            row[name] = {"median_s": t.seconds, "tokens": t.tokens, "rollouts": v.continuations,
                         "rollouts_per_s": v.continuations / t.seconds, "tokens_per_s": t.tokens / t.seconds,
                         "prefilled_tokens": v.prefilled}
        row["speedup"] = row["independent"]["median_s"] / row["shared"]["median_s"]  # same runs, same tokens
        out[c] = row
    return {
        "device": str(engine.loaded_models[0].device), "torch_threads": torch.get_num_threads(), "budget": budget,
        "patch_size": cfg.patch_size, "instances": instances, "k": k, "reps": reps, "rollouts": out,
        "raw": raw_figures(runs),
    }
