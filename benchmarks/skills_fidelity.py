"""Train a switcher on the skills kit and compare it with every baseline (the README's table).

    python benchmarks/skills_fidelity.py [--out runs/skills] [--instances 480] [--k 4] [--max-new-tokens 12] [--seed 0]

Runs `switchgen rollouts` -> `switchgen train` -> `switchgen eval` on skills-switch (the task built
to need switching) and prints each method's mean with its 95% bootstrap interval and the paired
difference switch - method with its interval (same test examples). Resumable: each step skips
what its output already holds. One seed of the recipe; the README's tables are means over three
seeds, with switch-global on every skills task: benchmarks/fidelity_tables.py.

The budget is 12 tokens (the answer is 5 and EOS), not the preset's 32: rollouts cut their traces
uniformly over 10-90% of the budget, and this kit's decisions that matter are the first three
patches. At 32 tokens about 1% of the instances land on the state after "Answer:", so 480 instances
hold a handful of records whose best next author is P, and whether the switcher learns to hand
over depends on the draw (one draw: 4 such records, a switcher that always picks A, 0.00).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from switchgen.cli import main as switchgen
from switchgen.evaluation.stats import mean_interval, paired_difference

BASELINES = ["single:P", "single:F", "single:A", "random", "untuned", "route"]


def run(step: str, args: list[str]) -> float:
    start = time.perf_counter()
    if switchgen(args) != 0:
        sys.exit(f"{step} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/skills"))
    parser.add_argument("--instances", type=int, default=480, help="two passes over the 240 train queries")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12, help="the token budget (see the docstring)")
    parser.add_argument("--seed", type=int, default=0, help="rollouts, training and the evaluation's sampling")
    opts = parser.parse_args()
    budget = ["--max-new-tokens", str(opts.max_new_tokens)]
    out = opts.out
    rollouts, adapter, evals = out / "rollouts.jsonl", out / "switcher", out / "eval"
    seconds = {
        "rollouts": run("rollouts", ["rollouts", "--task", "skills-switch", "--preset", "skills", "--out", str(rollouts),
                                     "--instances", str(opts.instances), "--k", str(opts.k), "--seed", str(opts.seed),
                                     "--concurrency", "4", *budget]),
    }
    if not (adapter / "switchgen-training.json").is_file():
        seconds["train"] = run("train", ["train", "--data", str(rollouts), "--out", str(adapter), "--lr", "5e-3",
                                         "--epochs", "30", "--batch-size", "16", "--lora-r", "8", "--seed", str(opts.seed)])
    seconds["eval"] = run("eval", ["eval", "--task", "skills-switch", "--preset", "skills", "--methods",
                                   ",".join([*BASELINES, "switch"]), "--adapter", str(adapter), "--out", str(evals),
                                   "--seed", str(opts.seed), *budget])
    report = json.loads((adapter / "switchgen-training.json").read_text())

    def scores(method: str) -> list[float]:
        lines = (evals / "skills-switch" / f"{method}.jsonl").read_text().splitlines()
        return [json.loads(line)["score"] for line in lines]

    switch = scores("switch")
    print(f"\nskills-switch test split, n={len(switch)}; switcher held-out label accuracy "
          f"{report['before']['accuracy']:.1%} -> {report['after']['accuracy']:.1%}, digit mass "
          f"{report['before']['digit_mass']:.1%} -> {report['after']['digit_mass']:.1%}; seconds {seconds}\n")
    print("| method | exact match | 95% CI (Wilson) | switch − method | 95% CI (paired bootstrap) |")
    print("|---|---:|---:|---:|---:|")
    for method in [*BASELINES, "switch"]:
        values = scores(method)
        (lo, hi), _ = mean_interval(values)  # Wilson's interval: the scores are 0/1
        mean = sum(values) / len(values)
        if method == "switch":
            print(f"| **switch (trained)** | **{mean:.3f}** | [{lo:.3f}, {hi:.3f}] | | |")
            continue
        delta, (dlo, dhi) = paired_difference(switch, values)
        print(f"| {method} | {mean:.3f} | [{lo:.3f}, {hi:.3f}] | {delta:+.3f} | [{dlo:+.3f}, {dhi:+.3f}] |")


if __name__ == "__main__":
    main()
