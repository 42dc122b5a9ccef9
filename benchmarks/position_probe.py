"""The position probe: does the switcher's choice follow the candidate, or its place in the YAML file?

    python benchmarks/position_probe.py --preset skills --task skills-switch [--probes 40] [--seed 0]
    python benchmarks/position_probe.py --config DIR/real.yaml --task DIR/task/task.yaml

Probes are states the switcher is asked about: a test query and a random-switching trace of it
(the graph with `strategy: random`), cut after a random number of its segments. For each probe and
each calibration (nodes/calibration.py) the switcher's distribution over the candidates is read
twice: with the candidates in the configuration's order, and in the reverse order (what a YAML file
listing them the other way round shows the switcher: every "<model i begins>" tag and the digit read
back renumbered). A probe flips when the two orders' most likely candidates differ and one of the
orders prefers its candidate over the other's by at least TIE (0.01); when they differ only by less
(a switcher with no preference: near-uniform), the probe counts as a tie, not a flip. The total
variation distance between the two distributions says by how much they differ. Also printed:
the mean digit mass, the mean probability of the most likely candidate (1/n: no preference at all),
and the switcher passes per decision. The switcher is the configuration's
model without an adapter (the untuned switcher the `untuned` baseline uses), or with `--adapter`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from switchgen.core.config import load_config
from switchgen.core.prompts import switcher_prompt, user_turn
from switchgen.evaluation.methods import variant
from switchgen.graph import build_graph
from switchgen.graph.backends import connect
from switchgen.nodes.calibration import CONCRETE, distribution, passes
from switchgen.servers.engine.local import LocalEngine
from switchgen.tasks.task import load_task

TIE = 0.01


def flipped(a: list[float], b: list[float]) -> bool | None:
    """True: the orders choose different candidates; None: they differ only within TIE (a tie); False: same."""
    ca, cb = max(range(len(a)), key=a.__getitem__), max(range(len(b)), key=b.__getitem__)
    if ca == cb:
        return False
    return True if max(a[ca] - a[cb], b[cb] - b[ca]) >= TIE else None


def probes(config, engine, task: str, count: int, seed: int) -> list[tuple[str, list[str], list[int]]]:
    """`count` states (query, segment texts, author indices) from random-switching traces of test queries."""
    graph = build_graph(variant(config, strategy="random"), engine=engine)
    rng = random.Random(seed)
    states = []
    for i, record in enumerate(load_task(task).records("test", limit=count)):
        result = graph.invoke({"query": record["query"]}, context={"seed": seed + i})
        segments = result["segments"]
        cut = rng.randint(1, max(1, len(segments) - 1))  # at least one segment: the first is the anchor's
        states.append((record["query"], [s["text"] for s in segments[:cut]], [s["index"] for s in segments[:cut]]))
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--preset")
    group.add_argument("--config")
    parser.add_argument("--task", required=True, help="a task name or YAML: its test queries make the probes")
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", help="a trained switcher (LoRA) on the switcher's model; default: untuned")
    opts = parser.parse_args()
    config = load_config(opts.preset or opts.config)
    config = variant(config, strategy="learned", adapter=opts.adapter)
    engine = LocalEngine()
    _, switcher = connect(config, engine)
    assert switcher is not None
    n = len(config.names)
    digits = [str(i) for i in range(n)]
    reverse = [n - 1 - c for c in range(n)]  # candidate c's position in the reversed file

    def ask(query, texts, tags):
        return switcher.choice_distribution(user_turn(switcher.tokenizer, switcher_prompt(query, texts, tags, n)), digits)

    start = time.perf_counter()
    states = probes(config, engine, opts.task, opts.probes, opts.seed)
    print(f"{len(states)} probes from {opts.task} built in {time.perf_counter() - start:.1f} s; candidates {config.names}, "
          f"switcher {config.switcher_model}\n")
    print("| calibration | passes | flips | ties | mean TV distance | max TV distance | mean digit mass | mean top p | p(first candidate) | s/probe |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for calibration in CONCRETE:
        if calibration == "permutations" and n == 2:
            continue  # with two candidates the shifts are all the permutations
        flips, ties, tvs, masses, firsts, tops = 0, 0, [], [], [], []
        start = time.perf_counter()
        for query, texts, authors in states:
            a = distribution(ask, query, texts, authors, n, calibration)
            b = distribution(ask, query, texts, [reverse[x] for x in authors], n, calibration)
            if a.probs is None or b.probs is None:
                flips += 1
                continue
            back = [b.probs[reverse[c]] for c in range(n)]  # the reversed file's answer, per candidate
            flip = flipped(a.probs, back)
            flips, ties = flips + (flip is True), ties + (flip is None)
            tvs.append(sum(abs(x - y) for x, y in zip(a.probs, back, strict=True)) / 2)
            masses.append((a.mass + b.mass) / 2)
            firsts.append(a.probs[0])
            tops.append(max(a.probs))
        seconds = (time.perf_counter() - start) / (2 * len(states))
        print(f"| {calibration} | {passes(calibration, n)} | {flips}/{len(states)} | {ties} | {statistics.fmean(tvs):.3f} | "
              f"{max(tvs):.3f} | {statistics.fmean(masses):.3f} | {statistics.fmean(tops):.3f} | {statistics.fmean(firsts):.3f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
