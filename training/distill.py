"""`switchgen distill`: fold switching back into one model (the paper's Fig. 3).

The aligned model is fine-tuned (LoRA via peft, TRL's SFTTrainer, merged afterwards) on switch
generation's answers to the task's TRAIN split, each example rendered exactly as the aligned
candidate sees the query at inference (its view: chat template or plain) with the answer as the
completion (loss on the answer only; EOS appended where the answer ended on EOS). Prompt and answer
are tokenised separately and joined, as the engine prefills the prompt and then writes the answer,
so the trained tokens are the ones generation produces (TRL's own split can differ at the seam).

With --rounds N > 1, each further round regenerates the train-split answers with switch generation
whose aligned candidate is the previous round's model, and fine-tunes that model on them (the
authors' repeated rounds). Then the result is evaluated on the test split as the method `single:D`
(a configuration whose one candidate, D, is the distilled model), beside `single:<aligned>` and
`switch` under the same seed, and the report gives the fraction of switching's gain recovered,
(distilled − aligned) / (switch − aligned), and the inference cost of each (tokens, seconds per answer).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from switchgen.analysis.stats import method_cost
from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.errors import ConfigError, InputError
from switchgen.core.files import atomic_write_text
from switchgen.core.records import EvalRecord, read_eval_records
from switchgen.training.settings import DistillSettings

DISTILLED = "D"  # the distilled model's candidate name in its evaluation


def train_records(outputs: Path, task, method: str) -> list[EvalRecord]:
    """The answers to distil: OUTPUTS/<task>/<method>.jsonl, checked to be the task's train split."""
    path = outputs / task.name / f"{method}.jsonl"
    if not path.is_file():
        raise InputError(
            f"{path}: no such file; make it with `switchgen eval --split train --task {task.name} --methods {method} --out {outputs}`"
        )
    records = [r for r in read_eval_records(path) if r.output]
    train_ids = {r["id"] for r in task.records("train")}
    if not records or not {r.id for r in records} <= train_ids:
        raise InputError(f"{path}: not answers to the train split of {task.name} (run switchgen eval with --split train)")
    return records


def sft_examples(tokenizer, config: SwitchConfig, records: list[EvalRecord]) -> list[dict[str, list[int]]]:
    """input_ids + completion_mask per answer: the aligned candidate's prompt, then the answer."""
    from switchgen.core.prompts import candidate_prompt, has_chat_template
    from switchgen.servers.engine.local import encode

    index = config.aligned_index
    aligned = config.candidates[index]
    view = config.candidate_view(index, has_chat_template(tokenizer))
    examples = []
    for r in records:
        prompt = encode(tokenizer, candidate_prompt(tokenizer, view, r.query, [], aligned.plain_template))
        answer = tokenizer(r.output, add_special_tokens=False)["input_ids"]
        ended = bool(r.segments) and (r.segments[-1].model_extra or {}).get("finish_reason") == "eos"
        if ended and tokenizer.eos_token_id is not None:
            answer = [*answer, tokenizer.eos_token_id]
        if answer:
            examples.append({"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)})
    if not examples:
        raise InputError("no non-empty answers to distil")
    return examples


def fine_tune(base: str, examples: list[dict[str, list[int]]], out: Path, settings: DistillSettings,
              progress: bool) -> float:
    """LoRA SFT of `base` on `examples`, merged into a full checkpoint in `out`; returns the train loss."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
    except ImportError as err:
        raise ConfigError(f"switchgen distill needs TRL ({err.name} is missing): pip install 'switchgen[train]'") from None
    import torch

    from switchgen.servers.engine.loading import (
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
        resolve_model,
    )
    from switchgen.training.train import quiet_when_asked

    location = resolve_model(base)
    tokenizer = load_tokenizer(location)
    device = resolve_device("auto")
    on_gpu = device.type == "cuda"
    model = load_model(location, torch.device("cpu"), resolve_dtype("auto", device))
    model.train()
    work = Path(tempfile.mkdtemp(prefix="switchgen-distill-"))
    try:
        args = SFTConfig(
            output_dir=str(work), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr, seed=settings.seed, data_seed=settings.seed, completion_only_loss=True,
            max_length=None, use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(),
            save_strategy="no", report_to="none", logging_steps=10, disable_tqdm=not progress,
        )
        lora = LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=lora)
        quiet_when_asked(trainer, progress)
        loss = float(trainer.train().training_loss)
        merged = trainer.model.merge_and_unload()
        merged.config.use_cache = True  # training switched the KV cache off; the checkpoint is for inference
        partial = out.with_name(out.name + ".partial")  # nothing half-written under `out`
        shutil.rmtree(partial, ignore_errors=True)
        merged.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        del trainer, model, merged
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gc.collect()
    if out.exists():
        shutil.rmtree(out)
    partial.replace(out)
    return loss


def with_aligned_model(config: SwitchConfig, model: str) -> SwitchConfig:
    """`config` with the aligned candidate's checkpoint replaced (the switcher keeps its own model)."""
    data = config.model_dump()
    data["switcher"]["model"] = config.switcher_model
    data["candidates"][config.aligned_index]["model"] = model
    return load_config(data)


def distilled_config(config: SwitchConfig, model: str) -> SwitchConfig:
    """One candidate, D, the distilled model, writing every patch (evaluated as `single:D`)."""
    data = config.model_dump()
    aligned = data["candidates"][config.aligned_index]
    data["candidates"] = [{**aligned, "name": DISTILLED, "model": model}]
    data["switcher"] = {"strategy": "single", "candidate": DISTILLED}
    return load_config(data)


def _compared(folder: Path, task: str, methods: list[str], records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    """results.json's rows of `methods` from an earlier eval of the same test examples, and the
    concurrency it ran at (None from a results.json written before it was recorded)."""
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        rows = results["results"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"--compare {folder}: no results.json of `switchgen eval` there") from None
    ids = [r["id"] for r in records]
    for method in methods:
        if not any(r.get("task") == task and r.get("method") == method for r in rows):
            raise InputError(f"--compare {folder}: no {method} on {task}; run switchgen eval with --methods {','.join(methods)}")
        answered = [r.id for r in read_eval_records(folder / task / f"{method}.jsonl")]
        if answered != ids:
            raise InputError(f"--compare {folder}: {method} answered other test examples than these {len(ids)} (check --limit)")
    return [r for r in rows if r.get("task") == task], results.get("concurrency")


def _concurrency(asked: int | None, compared: int | None, compare: Path | None) -> int | None:
    """The distilled model answers with as many queries in flight as the run it is compared with:
    a record's seconds are its latency, which grows with the queries beside it."""
    if asked is not None and compared is not None and asked != compared:
        raise ConfigError(f"--concurrency {asked}: the --compare run {compare} ran {compared} queries at once, and "
                          f"seconds per answer compare only at the same concurrency; drop --concurrency or pass {compared}")
    return asked if asked is not None else compared


def _row(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    return next(r for r in rows if r["method"] == method)


def distill(
    config: SwitchConfig,
    task_name: str | Path,
    outputs: Path,
    out: Path,
    *,
    base: str | None = None,
    settings: DistillSettings = DistillSettings(),
    adapter: str | None = None,
    compare: Path | None = None,
    progress: bool = True,
    engine=None,
    log=lambda line: None,
) -> dict[str, Any]:
    """Fine-tune, evaluate, and write OUT (the merged model) with OUT/switchgen-distill.json and .md.

    `compare`: a `switchgen eval` folder on the test split that already holds the aligned model and
    the method; their results are taken from it (and the distilled model answers the same examples)
    instead of being generated again."""
    from switchgen.core.jobs import default_concurrency
    from switchgen.evaluation import prepare, run_eval
    from switchgen.evaluation.run import aligned_method
    from switchgen.servers.engine.loading import load_tokenizer, resolve_model
    from switchgen.servers.engine.local import LocalEngine
    from switchgen.tasks import load_task

    if settings.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {settings.rounds}")
    if settings.concurrency is not None and settings.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {settings.concurrency}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another --out")
    task = load_task(task_name)
    records = train_records(outputs, task, settings.method)
    aligned = aligned_method(config)
    test = prepare([task], [aligned, settings.method], config, settings.limit)  # bad input stops before training
    compared, compared_at = (_compared(compare, task.name, [aligned, settings.method], test.records[task.name])
                             if compare else (None, None))
    concurrency = _concurrency(settings.concurrency, compared_at, compare) or default_concurrency(config)
    same_concurrency = compare is None or compared_at is not None  # an older results.json did not record it
    engine = engine or LocalEngine()
    current = base or config.candidates[config.aligned_index].model
    work = out.with_name(out.name + ".rounds")
    shutil.rmtree(work, ignore_errors=True)
    rounds = []
    try:
        for r in range(1, settings.rounds + 1):
            if r > 1:  # switch generation again, the aligned candidate now the previous round's model
                chain = with_aligned_model(config, current)
                regen = work / f"round-{r}-outputs"
                run_eval(chain, prepare([task], [settings.method], chain, None, split="train"), regen, seed=settings.seed,
                         concurrency=concurrency, adapter=adapter, progress=progress, engine=engine)
                records = train_records(regen, task, settings.method)
            examples = sft_examples(load_tokenizer(resolve_model(current)), config, records)
            target = work / f"round-{r}"
            log(f"round {r}: fine-tuning {current} on {len(examples)} answers")
            loss = fine_tune(current, examples, target, settings, progress)
            rounds.append({"round": r, "base": str(current), "examples": len(examples), "train_loss": loss})
            current = str(target.resolve())
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        Path(current).replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    model = str(out.resolve())

    if compared is None:
        log("evaluating on the test split: the aligned model, switching, the distilled model")
        base_rows = run_eval(config, test, out / "eval", seed=settings.seed, concurrency=concurrency, adapter=adapter,
                             progress=progress, engine=engine)
        base_dir = out / "eval"
    else:
        log(f"evaluating the distilled model on the test split (the others from {compare})")
        base_rows, base_dir = compared, compare
    dconfig = distilled_config(config, model)
    d_rows = run_eval(dconfig, prepare([task], [f"single:{DISTILLED}"], dconfig, settings.limit), out / "eval-distilled",
                      seed=settings.seed, concurrency=concurrency, progress=progress, engine=engine)
    distilled_method = f"single:{DISTILLED}"
    methods = {aligned: _row(base_rows, aligned), settings.method: _row(base_rows, settings.method),
               distilled_method: _row(d_rows, distilled_method)}
    folders = {aligned: base_dir, settings.method: base_dir, distilled_method: out / "eval-distilled"}
    answered = {m: read_eval_records(folders[m] / task.name / f"{m}.jsonl") for m in methods}
    costs = {m: method_cost(m, recs) for m, recs in answered.items() if recs}  # none when every answer failed
    a, s, d = (methods[m]["mean"] for m in methods)
    gain = s - a
    report = {
        "task": task.name,
        "model": model,
        "base": base or config.candidates[config.aligned_index].model,
        "outputs": str(outputs),
        "compared_with": str(compare) if compare else str(out / "eval"),
        "rounds": rounds,
        "settings": asdict(settings),
        "concurrency": concurrency if same_concurrency else None,  # None: the --compare run's is unknown
        "methods": {m: {"mean": row["mean"], "ci": row["ci"], "n": row["n"],
                        "tokens_per_answer": costs[m].tokens if m in costs else None,
                        "seconds_per_answer": costs[m].seconds if m in costs else None,
                        "switcher_calls_per_answer": costs[m].switcher_calls if m in costs else None}
                    for m, row in methods.items()},
        "switch_gain": gain,
        "recovered": (d - a) / gain if gain else None,  # undefined when switching gained nothing
    }
    sw, dm = report["methods"][settings.method], report["methods"][distilled_method]
    report["cost_vs_switch"] = {
        key: dm[f"{key}_per_answer"] / sw[f"{key}_per_answer"]
        if dm[f"{key}_per_answer"] is not None and sw[f"{key}_per_answer"] else None
        for key in ("tokens", "seconds")
    }
    atomic_write_text(out / "switchgen-distill.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "switchgen-distill.md", summary(report))
    return report


def summary(report: dict[str, Any]) -> str:
    def f(x: float | None, fmt: str = "{:.3f}") -> str:
        return "–" if x is None else fmt.format(x)

    lines = [f"Distillation of {report['base']} on {report['task']} ({len(report['rounds'])} round(s)) -> {report['model']}",
             "", "| method | mean | 95% CI | n | tokens / answer | switcher calls / answer | seconds / answer |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for m, v in report["methods"].items():
        ci = f"[{f(v['ci'][0])}, {f(v['ci'][1])}]" if v["ci"] else "–"
        lines.append(f"| {m} | {f(v['mean'])} | {ci} | {v['n']} | {f(v['tokens_per_answer'], '{:.1f}')} | "
                     f"{f(v.get('switcher_calls_per_answer'), '{:.1f}')} | {f(v['seconds_per_answer'], '{:.3f}')} |")
    cost = report["cost_vs_switch"]
    rec = report["recovered"]
    at = report.get("concurrency")
    lines += ["", "Recovered fraction of switching's gain over the aligned model: "
              + ("undefined (switching gained nothing over the aligned model)" if rec is None else f"{rec:.1%}")
              + f"; inference cost against switching: {f(cost['tokens'], '{:.2f}')}x tokens, "
              f"{f(cost['seconds'], '{:.2f}')}x seconds per answer"
              + (f" ({at} queries in flight in both)." if at else "."), ""]
    return "\n".join(lines)
