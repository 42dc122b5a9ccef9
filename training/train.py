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

import gc
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from switchgen.core.errors import ConfigError
from switchgen.core.files import atomic_write_text
from switchgen.servers.choices import choice_token_ids
from switchgen.servers.engine.loading import load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_model
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


def _trainer(base: type) -> type:
    class SwitcherTrainer(base):  # type: ignore[misc, valid-type]
        """The loss from the model's own forward: TRL's fused LM-head loss reads the head's base
        weight, which would leave out the trained digit rows (peft's trainable tokens)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return SwitcherTrainer


def quiet_when_asked(trainer, progress: bool) -> None:
    """With progress off (`--no-progress`, a notebook) the trainer prints nothing per step: transformers
    swaps its bar for a printer of every log dict. The final loss is in the command's summary."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another --out")


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
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
    except ImportError as err:
        raise ConfigError(f"switchgen train needs TRL ({err.name} is missing): pip install 'switchgen[train]'") from None

    _check_out(out)
    records = read_rollouts(data)
    base = base or recorded_base(records)
    location = resolve_model(base)
    tokenizer = load_tokenizer(location)
    kept = select(records, settings.min_margin, settings.keep_uninformative)
    if len(kept) < 2:
        raise ConfigError(
            f"{len(kept)} of {len(records)} records are informative (utilities differ) with margin >= "
            f"{settings.min_margin}: too few to train"
        )
    examples = [make_example(tokenizer, r) for r in kept]
    train, held = split(examples, settings.eval_fraction, settings.seed)

    # Under `accelerate launch` every process trains; the first one alone measures and writes.
    first = int(os.environ.get("RANK", "0")) == 0
    engine = LocalEngine()
    before = switcher_scores(engine, base, None, held) if first else {}

    device = resolve_device("auto")
    on_gpu = device.type == "cuda"
    model = load_model(location, torch.device("cpu"), resolve_dtype("auto", device))  # the trainer places it
    model.train()
    work = Path(tempfile.mkdtemp(prefix="switchgen-train-"))
    try:
        args = SFTConfig(
            output_dir=str(work),
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr,
            seed=settings.seed,
            data_seed=settings.seed,
            completion_only_loss=True,  # the loss is on the digit token alone
            max_length=None,  # never truncate: the digit is the last token
            use_cpu=not on_gpu,
            bf16=on_gpu and torch.cuda.is_bf16_supported(),
            activation_checkpointing=on_gpu,
            save_strategy="no",
            report_to="none",
            logging_steps=10,
            disable_tqdm=not progress,
        )
        # The digits' own embedding rows train too: a checkpoint that never wrote a digit there (a
        # tiny kit's model) cannot put mass on them through LoRA alone.
        digits = sorted({t for i in range(len(records[0]["candidates"])) for t in choice_token_ids(tokenizer, [str(i)])[0]})
        lora = LoraConfig(
            r=settings.lora_r, lora_alpha=2 * settings.lora_r, lora_dropout=0.0, target_modules="all-linear",
            trainable_token_indices=digits, task_type="CAUSAL_LM",
        )
        dataset = Dataset.from_dict(
            {"input_ids": [e.input_ids for e in train], "completion_mask": [e.completion_mask for e in train]}
        )
        trainer = _trainer(SFTTrainer)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
        quiet_when_asked(trainer, progress)
        result = trainer.train()
        if not trainer.is_world_process_zero():
            return {}
        partial = out.with_name(out.name + ".partial")  # nothing half-written under `out`
        shutil.rmtree(partial, ignore_errors=True)
        trainer.model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        train_loss = float(result.training_loss)
        del trainer, model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    if out.exists():
        out.rmdir()
    partial.replace(out)

    after = switcher_scores(engine, base, str(out.resolve()), held)
    majority = Counter(e.label for e in train).most_common(1)[0][0]
    report = {
        "base": base,
        "adapter": str(out.resolve()),
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
        "before": before,
        "after": after,
        "train_loss": train_loss,
        "settings": asdict(settings),
    }
    if merge:
        from switchgen.servers.serve.merge import merge_adapter

        report["merged"] = str(merge_adapter(base, str(out.resolve()), out / "merged").resolve())
    atomic_write_text(out / "switchgen-training.json", json.dumps(report, indent=2))
    return report


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
