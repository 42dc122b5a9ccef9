"""The README's fidelity tables on the skills kit, regenerated in one command, over several rollout seeds.

    python benchmarks/fidelity_tables.py [--out runs/fidelity] [--seeds 0,1,2] [--instances 240] [--k 4]

Per seed s (rollouts, training and the evaluation's sampling all take s):
1. `switchgen rollouts` on each of the four skills tasks (budget 12, k 4): the 240 train queries once,
   and twice (480 instances) on skills-switch, where few cut points fall on a decision that matters
   (the README's recipe);
2. `switchgen train` one switcher on all four files (switch-global: several --data) and one per task
   (switch-<task>), the documented hyper-parameters (--lr 5e-3 --epochs 30 --batch-size 16 --lora-r 8);
3. `switchgen eval` on the four test splits (80 each): random, untuned with and without calibration
   (and both again with the candidates listed in reverse in the YAML file: does the score follow the order?),
   each trained switcher (`switch` with its --adapter), and switch-global read through `calibration:
   shifts` (which `auto` does not do for a trained switcher: this row shows why); the single models once (in OUT/singles:
   greedy, they write the same answers under every seed).
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
LABELS = {"uncalibrated": UNCALIBRATED, "reversed": "untuned, candidates listed A, F, P",
          "reversed-uncalibrated": "untuned (calibration: none), candidates listed A, F, P"}
SHIFTED = "switch-global (calibration: shifts)"


def run(step: str, args: list[str]) -> None:
    print(f"$ switchgen {' '.join(args)}", flush=True)
    if switchgen(args) != 0:
        sys.exit(f"{step} failed")


def skills_config(out: Path, calibration: str | None, reverse: bool = False) -> Path:
    """The skills preset with `switcher.calibration` set (None: the preset's), the candidates listed in reverse."""
    from switchgen.core.config import PRESET_DIR

    data = yaml.safe_load((PRESET_DIR / "skills.yaml").read_text())
    if calibration is not None:
        data["switcher"]["calibration"] = calibration
    if reverse:
        data["candidates"] = data["candidates"][::-1]
    path = out / f"skills-{calibration or 'preset'}{'-reversed' if reverse else ''}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def seed_run(out: Path, seed: int, opts: argparse.Namespace) -> dict[str, str]:
    """Rollouts, switchers and evaluations of one seed; returns method name -> eval folder."""
    root = out / f"seed{seed}"
    budget = ["--max-new-tokens", str(opts.max_new_tokens), "--seed", str(seed)]
    rollouts = {t: root / "rollouts" / f"{t}.jsonl" for t in TASKS}
    for task, path in rollouts.items():
        instances = 2 * opts.instances if task == "skills-switch" else opts.instances
        if path.is_file() and len(path.read_text().splitlines()) >= instances:
            continue
        run("rollouts", ["rollouts", "--task", task, "--preset", "skills", "--out", str(path), "--instances",
                         str(instances), "--k", str(opts.k), "--concurrency", "4", "--no-progress", *budget])
    switchers = {"switch-global": list(rollouts.values()), **{f"switch-{t[7:]}": [p] for t, p in rollouts.items()}}
    for name, data in switchers.items():
        adapter = root / "switchers" / name
        if not (adapter / "switchgen-training.json").is_file():
            run("train", ["train", *[a for p in data for a in ("--data", str(p))], "--out", str(adapter), "--seed",
                          str(seed), *TRAIN])
    tasks = [a for t in TASKS for a in ("--task", t)]
    folders: dict[str, str] = {m: f"../../singles/{m}" for m in SINGLES}  # out/singles: run once (greedy)
    if seed == opts.first:
        run("eval", ["eval", "--preset", "skills", *tasks, "--methods", ",".join(SINGLES), "--out", str(out / "singles"),
                     "--concurrency", "8", *budget])
    evals = {
        "baselines": (["--config", str(skills_config(out, None))], ["random", "untuned"]),
        "uncalibrated": (["--config", str(skills_config(out, "none"))], ["untuned"]),
        "reversed": (["--config", str(skills_config(out, None, reverse=True))], ["untuned"]),  # A, F, P
        "reversed-uncalibrated": (["--config", str(skills_config(out, "none", reverse=True))], ["untuned"]),
    }
    for name, (config, methods) in evals.items():
        run("eval", ["eval", *config, *tasks, "--methods", ",".join(methods), "--out", str(root / "eval" / name),
                     "--concurrency", "8", *budget])
        for m in methods:
            folders[LABELS.get(name, m)] = f"{name}/{m}"
    for name in switchers:
        run("eval", ["eval", "--preset", "skills", *tasks, "--methods", "switch", "--adapter", str(root / "switchers" / name),
                     "--out", str(root / "eval" / name), "--concurrency", "8", *budget])
        folders[name] = f"{name}/switch"
    # A trained switcher read through shifts (relabelled prompts it never saw): why `auto` leaves trained ones alone.
    run("eval", ["eval", "--config", str(skills_config(out, "shifts")), *tasks, "--methods", "switch", "--adapter",
                 str(root / "switchers" / "switch-global"), "--out", str(root / "eval" / "global-shifts"), "--concurrency", "8",
                 *budget])
    folders[SHIFTED] = "global-shifts/switch"
    return folders


def scores(out: Path, seed: int, folder: str, task: str) -> list[float]:
    name, method = folder.rsplit("/", 1)
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


def recipe_table(out: Path, seeds: list[int], folders: dict[str, str]) -> None:
    """skills-switch: the switcher trained on its own rollouts (the README's recipe) against every baseline."""
    task, trained = "skills-switch", "switch-switch"
    print(f"\n{task}: {trained} − method, pairs pooled over the seeds, 95% paired bootstrap interval:\n")
    print("| method | score, mean [min, max] over seeds | switch-switch − method [95% CI] |")
    print("|---|---:|---:|")
    mine = [x for s in seeds for x in scores(out, s, folders[trained], task)]
    for method in [*SINGLES, "random", "untuned", UNCALIBRATED, trained]:
        means = [statistics.fmean(scores(out, s, folders[method], task)) for s in seeds]
        cell = ""
        if method != trained:
            delta, (lo, hi) = paired_difference(mine, [x for s in seeds for x in scores(out, s, folders[method], task)])
            cell = f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        print(f"| {method} | {statistics.fmean(means):.3f} [{min(means):.3f}, {max(means):.3f}] | {cell} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    parser.add_argument("--seeds", default="0,1,2", help="rollout seeds (comma-separated; at least 3 for the README)")
    parser.add_argument("--instances", type=int, default=240, help="rollout instances per task (one pass over train; "
                        "twice that on skills-switch)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    opts = parser.parse_args()
    seeds = [int(s) for s in opts.seeds.split(",")]
    opts.first = seeds[0]
    opts.out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, str] = {}
    for seed in seeds:
        folders = seed_run(opts.out, seed, opts)
    label_table(opts.out, seeds)
    recipe_table(opts.out, seeds, folders)
    score_table(opts.out, seeds, folders)
    paired_table(opts.out, seeds, folders)


if __name__ == "__main__":
    main()
