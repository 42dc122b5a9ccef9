"""The README's fidelity tables on the skills kit, regenerated in one command, over several rollout seeds.

    python benchmarks/fidelity_tables.py [--out runs/fidelity] [--seeds 0,1,2] [--instances 240] [--k 4]

Per seed s (rollouts, training and the evaluation's sampling all take s):
1. `switchgen rollouts` on each of the four skills tasks (240 train queries, budget 12, k 4);
2. `switchgen train` one switcher on all four files (switch-global: several --data) and one per task
   (switch-<task>), the documented hyper-parameters (--lr 5e-3 --epochs 30 --batch-size 16 --lora-r 8);
3. `switchgen eval` on the four test splits (80 each): every single model, random, untuned with and
   without calibration, and each trained switcher (`switch` with its --adapter).
Then it prints, as markdown: the label counts per seed (they add up to the instances), the mean score of
every method on every task over the seeds with its spread (min-max), and switch-global's paired
difference to the best single model and to every single model, the pairs pooled over seeds (the same
test question under each seed's switcher) with a 95% bootstrap interval. Resumable: a step whose
output is complete is skipped (rollouts and eval resume mid-file).

The budget is 12 tokens, not the preset's 32: see benchmarks/skills_fidelity.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

from switchgen.cli import main as switchgen
from switchgen.evaluation.stats import paired_difference

TASKS = ["skills-recall", "skills-colour", "skills-abstain", "skills-switch"]
SINGLES = ["single:P", "single:F", "single:A"]
TRAIN = ["--lr", "5e-3", "--epochs", "30", "--batch-size", "16", "--lora-r", "8", "--no-progress"]
UNCALIBRATED = "untuned (calibration: none)"


def run(step: str, args: list[str]) -> None:
    print(f"$ switchgen {' '.join(args)}", flush=True)
    if switchgen(args) != 0:
        sys.exit(f"{step} failed")


def skills_config(out: Path, calibration: str | None) -> Path:
    """The skills preset with `switcher.calibration` set (None: the preset itself)."""
    from switchgen.core.config import PRESET_DIR

    data = yaml.safe_load((PRESET_DIR / "skills.yaml").read_text())
    if calibration is not None:
        data["switcher"]["calibration"] = calibration
    path = out / f"skills-{calibration or 'preset'}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def seed_run(out: Path, seed: int, opts: argparse.Namespace) -> dict[str, str]:
    """Rollouts, switchers and evaluations of one seed; returns method name -> eval folder."""
    root = out / f"seed{seed}"
    budget = ["--max-new-tokens", str(opts.max_new_tokens), "--seed", str(seed)]
    rollouts = {t: root / "rollouts" / f"{t}.jsonl" for t in TASKS}
    for task, path in rollouts.items():
        run("rollouts", ["rollouts", "--task", task, "--preset", "skills", "--out", str(path), "--instances",
                         str(opts.instances), "--k", str(opts.k), "--concurrency", "4", "--no-progress", *budget])
    switchers = {"switch-global": list(rollouts.values()), **{f"switch-{t[7:]}": [p] for t, p in rollouts.items()}}
    for name, data in switchers.items():
        adapter = root / "switchers" / name
        if not (adapter / "switchgen-training.json").is_file():
            run("train", ["train", *[a for p in data for a in ("--data", str(p))], "--out", str(adapter), "--seed",
                          str(seed), *TRAIN])
    tasks = [a for t in TASKS for a in ("--task", t)]
    folders: dict[str, str] = {}
    evals = {
        "baselines": (["--config", str(skills_config(out, None))], [*SINGLES, "random", "untuned"]),
        "uncalibrated": (["--config", str(skills_config(out, "none"))], ["untuned"]),
    }
    for name, (config, methods) in evals.items():
        run("eval", ["eval", *config, *tasks, "--methods", ",".join(methods), "--out", str(root / "eval" / name),
                     "--concurrency", "8", *budget])
        for m in methods:
            folders[UNCALIBRATED if name == "uncalibrated" else m] = f"{name}/{m}"
    for name in switchers:
        run("eval", ["eval", "--preset", "skills", *tasks, "--methods", "switch", "--adapter", str(root / "switchers" / name),
                     "--out", str(root / "eval" / name), "--concurrency", "8", *budget])
        folders[name] = f"{name}/switch"
    return folders


def scores(out: Path, seed: int, folder: str, task: str) -> list[float]:
    name, method = folder.split("/")
    lines = (out / f"seed{seed}" / "eval" / name / task / f"{method}.jsonl").read_text().splitlines()
    return [json.loads(line)["score"] for line in lines]


def label_table(out: Path, seeds: list[int]) -> None:
    print("\n| seed | switcher | rollouts | uninformative | informative | P | F | A |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        for adapter in sorted((out / f"seed{seed}" / "switchers").iterdir()):
            r = json.loads((adapter / "switchgen-training.json").read_text())
            counts = {int(k): v for k, v in r["label_counts"].items()}
            assert r["records"] == r["uninformative"] + r["examples"] == r["uninformative"] + sum(counts.values())
            print(f"| {seed} | {adapter.name} | {r['records']} | {r['uninformative']} | {r['examples']} | "
                  + " | ".join(str(counts.get(i, 0)) for i in range(3)) + " |")


def score_table(out: Path, seeds: list[int], folders: dict[str, str]) -> None:
    print(f"\nMean score over seeds {', '.join(map(str, seeds))} [min, max over seeds]; n = 80 test questions per task and seed:\n")
    print("| method | " + " | ".join(TASKS) + " |")
    print("|---|" + "---:|" * len(TASKS))
    for method, folder in folders.items():
        cells = []
        for task in TASKS:
            means = [statistics.fmean(scores(out, s, folder, task)) for s in seeds]
            cells.append(f"{statistics.fmean(means):.3f} [{min(means):.3f}, {max(means):.3f}]")
        bold = "**" if method == "switch-global" else ""
        print(f"| {bold}{method}{bold} | " + " | ".join(cells) + " |")


def paired_table(out: Path, seeds: list[int], folders: dict[str, str]) -> None:
    print("\nswitch-global − method, pairs pooled over the seeds (n = 80 x seeds), 95% paired bootstrap interval:\n")
    print("| method | " + " | ".join(TASKS) + " |")
    print("|---|" + "---:|" * len(TASKS))
    pooled = {m: {t: [x for s in seeds for x in scores(out, s, f, t)] for t in TASKS} for m, f in folders.items()}
    best = {t: max(SINGLES, key=lambda m: statistics.fmean(pooled[m][t])) for t in TASKS}
    rows = [("best single model (" + ", ".join(best[t][7:] for t in TASKS) + ")", {t: best[t] for t in TASKS})]
    rows += [(m, {t: m for t in TASKS}) for m in folders if m != "switch-global"]
    for label, per_task in rows:
        cells = []
        for task in TASKS:
            delta, (lo, hi) = paired_difference(pooled["switch-global"][task], pooled[per_task[task]][task])
            cells.append(f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    parser.add_argument("--seeds", default="0,1,2", help="rollout seeds (comma-separated; at least 3 for the README)")
    parser.add_argument("--instances", type=int, default=240, help="rollout instances per task (one pass over train)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    opts = parser.parse_args()
    seeds = [int(s) for s in opts.seeds.split(",")]
    opts.out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, str] = {}
    for seed in seeds:
        folders = seed_run(opts.out, seed, opts)
    label_table(opts.out, seeds)
    score_table(opts.out, seeds, folders)
    paired_table(opts.out, seeds, folders)


if __name__ == "__main__":
    main()
