"""The runs `switchgen bench` times: the switch graph, the aligned model alone, the authors' algorithm.

Each returns a Timing (seconds, tokens written); every run writes its full budget (EOS ignored), so
variants compare like with like. `interleaved` runs variants round-robin after a warm-up, within a
time budget per section, so no section of a bench can run unbounded.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat

from switchgen.core.config import SwitchConfig
from switchgen.core.prompts import candidate_prompt, has_chat_template, switcher_prompt, user_turn
from switchgen.servers.base import Backend, GenerationParams

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


def repeat_run(times: int, fn: Callable[[], Timing]) -> Timing:
    """`fn` run `times` times, summed: short runs are timed over as many tokens as long ones."""
    runs = [fn() for _ in range(times)]
    return Timing(sum(r.seconds for r in runs), sum(r.tokens for r in runs))


def median(runs: list[Timing]) -> Timing:
    return Timing(statistics.median(r.seconds for r in runs), int(statistics.median(r.tokens for r in runs)))


def raw_figures(runs: dict[str, list[Timing]]) -> dict:
    """Every run's (seconds, tokens) by variant: the report's raw figures."""
    return {n: [(t.seconds, t.tokens) for t in r] for n, r in runs.items()}


def queries_for(count: int) -> list[str]:
    return (QUERIES * (count // len(QUERIES) + 1))[:count]


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


def run_reference(config: SwitchConfig, backends: list[Backend], switcher: Backend, queries: list[str]) -> Timing:
    """The authors' loop (switch_generation.py) over all `queries` at once, as their script runs it: in lockstep rounds.

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


def interleaved(
    variants: dict[str, Callable[[int], Timing]], reps: int, progress: Callable[[str], None], seconds: float | None = None
) -> dict[str, list[Timing]]:
    """Warm every variant up once, then run them round-robin (order rotating) `reps` times, or fewer
    when `seconds` have passed since the start (at least one round: every variant has a figure)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for fn in variants.values():
        fn(-1)
    runs: dict[str, list[Timing]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            runs[name].append(variants[name](rep))
        progress(f"rep {rep + 1}/{reps}")
        if deadline is not None and time.monotonic() > deadline and rep + 1 < reps:
            progress(f"time budget of {seconds:.0f} s spent: {rep + 1} of {reps} reps")
            break
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
