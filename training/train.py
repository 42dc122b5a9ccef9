"""`switchgen train`: a LoRA switcher by supervised fine-tuning on rollouts (TRL's SFTTrainer, peft).

One --data file gives a switch-task switcher, several mixed give switch-global (the paper's two).
Each example is the switcher prompt as inference renders it with the label digit as a one-token
completion (training/examples.py). Held-out label accuracy and the mean probability mass the
digits hold are measured before and after training through the engine's `choice_distribution`,
the very call the graph's switcher makes, on the saved adapter.

The paper's defaults (5 epochs, batch 32, lr 1e-5) are for 8B models; tiny models (the toy and
skills kits) need a far larger learning rate (1e-3 to 5e-3). On GPUs run it under
`accelerate launch -m switchgen.cli train ...` for several devices (docs/training.md).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from switchgen.core.errors import ConfigError
from switchgen.core.files import atomic_write_text
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.loading import load_tokenizer, resolve_model
from switchgen.servers.engine.local import LocalEngine
from switchgen.training.examples import (
    Example,
    informative,
    make_example,
    read_rollouts,
    recorded_base,
    select,
    split,
)
from switchgen.training.settings import TrainSettings
from switchgen.training.sft import SFTJob, check_out, fine_tune, is_first_process, require_trl


def switcher_scores(engine: LocalEngine, base: str, adapter: str | None, examples: list[Example]) -> dict[str, Any]:
    """Label accuracy and mean digit mass of a switcher on `examples`, as the graph's switcher scores."""
    if not examples:
        return {"accuracy": None, "digit_mass": None, "n": 0}
    backend = engine.backend(base, adapter=adapter)
    hits = mass = 0.0
    for ex in examples:
        scores = backend.choice_distribution(ex.prompt, [str(i) for i in range(ex.n_candidates)])
        mass += scores.mass
        if scores.probs is not None:
            hits += max(range(ex.n_candidates), key=lambda i: scores.probs[i]) == ex.label
    return {"accuracy": hits / len(examples), "digit_mass": mass / len(examples), "n": len(examples)}


def train_switcher(
    data: list[Path],
    out: Path,
    *,
    base: str | None = None,
    settings: TrainSettings = TrainSettings(),
    merge: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, save the adapter in `out` (and a merged model in `out`/merged), and return the report."""
    require_trl("train")
    check_out(out)
    records = read_rollouts(data)
    base = base or recorded_base(records)
    tokenizer = load_tokenizer(resolve_model(base))
    kept = select(records, settings.min_margin, settings.keep_uninformative)
    if len(kept) < 2:
        raise ConfigError(
            f"{len(kept)} of {len(records)} records are informative (utilities differ) with margin >= "
            f"{settings.min_margin}: too few to train"
        )
    examples = [make_example(tokenizer, r) for r in kept]
    train, held = split(examples, settings.eval_fraction, settings.seed)
    engine = LocalEngine()
    before = switcher_scores(engine, base, None, held) if is_first_process() else {}
    # The digits' own embedding rows train too: a checkpoint that never wrote a digit there (a
    # tiny kit's model) cannot put mass on them through LoRA alone.
    digits = sorted({t for i in range(len(records[0]["candidates"])) for t in choice_token_ids(tokenizer, [str(i)])[0]})
    job = SFTJob(base, settings.epochs, settings.batch_size, settings.lr, settings.lora_r, settings.seed, progress,
                 trainable_tokens=tuple(digits))
    loss = fine_tune(job, [{"input_ids": e.input_ids, "completion_mask": e.completion_mask} for e in train], out)
    if loss is None:
        return {}
    adapter = str(out.resolve())
    report = _report(data, records, examples, train, held, settings, base=base, adapter=adapter, before=before,
                     after=switcher_scores(engine, base, adapter, held), train_loss=loss)
    if merge:
        from switchgen.servers.serve.merge import merge_adapter

        report["merged"] = str(merge_adapter(base, adapter, out / "merged").resolve())
    atomic_write_text(out / "switchgen-training.json", json.dumps(report, indent=2))
    return report


def _report(data: list[Path], records: list[dict], examples: list[Example], train: list[Example], held: list[Example],
            settings: TrainSettings, **measured: Any) -> dict[str, Any]:
    """What was trained on and how the switcher scores the held-out labels before and after."""
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    return {
        "base": measured["base"],
        "adapter": measured["adapter"],
        "data": [str(p) for p in data],
        "tasks": sorted({r.get("task", "") for r in records}),
        "candidates": records[0]["candidates"],
        "records": len(records),
        "uninformative": 0 if settings.keep_uninformative else sum(not informative(r) for r in records),
        "examples": len(examples),
        "train_examples": len(train),
        "eval_examples": len(held),
        "label_counts": dict(sorted(Counter(e.label for e in examples).items())),
        "majority_accuracy": (sum(e.label == majority for e in held) / len(held)) if held else None,
        "before": measured["before"],
        "after": measured["after"],
        "train_loss": measured["train_loss"],
        "settings": asdict(settings),
    }


def snippet(report: dict[str, Any]) -> str:
    """The YAML that uses the trained switcher (and the merged model, when there is one)."""
    text = f"switcher:\n  strategy: learned\n  model: {report['base']}\n  adapter: {report['adapter']}\n"
    if "merged" in report:
        text += f"# or, merged (servers without LoRA):\n# switcher:\n#   strategy: learned\n#   model: {report['merged']}\n"
    return text


def summary(report: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    b, a = report["before"], report["after"]
    return "\n".join([
        f"trained on {report['train_examples']} examples ({report['records']} records, {report['uninformative']} "
        f"uninformative (every candidate's utility equal) left out, tasks {report['tasks']}), "
        f"held out {report['eval_examples']}; train loss {report['train_loss']:.4f}",
        "| held out | label accuracy | mean digit mass |",
        "|---|---:|---:|",
        f"| before (untuned {report['base']}) | {pct(b['accuracy'])} | {pct(b['digit_mass'])} |",
        f"| after (adapter) | {pct(a['accuracy'])} | {pct(a['digit_mass'])} |",
        f"| majority label of the training set | {pct(report['majority_accuracy'])} | |",
        label_line(report),
    ])


def label_line(report: dict[str, Any]) -> str:
    """How the examples' labels split between the candidates, with a warning when one dominates: a
    switcher trained on that mostly learns to always pick it (collect more rollouts, or cut the
    traces where the decisions are; see the README on the skills kit)."""
    names = report.get("candidates") or []
    counts = {int(k): v for k, v in report["label_counts"].items()}
    total = sum(counts.values()) or 1
    parts = ", ".join(f"{names[i] if i < len(names) else i} {n}" for i, n in sorted(counts.items()))
    line = f"labels: {parts}"
    top = max(counts.values(), default=0)
    if top / total > 0.9:
        line += (f" (warning: {top / total:.0%} are one candidate; the switcher may learn to always pick it:"
                 " collect more rollouts (--instances, --k) and check where the traces are cut)")
    return line
