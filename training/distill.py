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

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from switchgen.analysis.stats import method_cost
from switchgen.core.config import SwitchConfig, load_config
from switchgen.core.errors import ConfigError, InputError
from switchgen.core.files import atomic_write_text
from switchgen.core.fingerprint import check_fingerprint, config_fingerprint, location, write_fingerprint
from switchgen.core.records import EvalRecord, read_eval_records, read_results
from switchgen.training.settings import DistillSettings
from switchgen.training.sft import SFTJob, check_out, fine_tune, require_trl

DISTILLED = "D"  # the distilled model's candidate name in its evaluation
DISTILL_FINGERPRINT = "switchgen-distill.fingerprint.json"  # in OUT, with the model: what made it
ROUNDS_FILE = "switchgen-distill-rounds.json"  # in OUT, with the model: each round's base, examples and loss


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
    path = folder / "results.json"
    if not path.is_file():
        raise InputError(f"--compare {folder}: no results.json of `switchgen eval` there")
    results = read_results(path)
    rows = results.rows()
    ids = [r["id"] for r in records]
    for method in methods:
        if not any(r.get("task") == task and r.get("method") == method for r in rows):
            raise InputError(f"--compare {folder}: no {method} on {task}; run switchgen eval with --methods {','.join(methods)}")
        answered = [r.id for r in read_eval_records(folder / task / f"{method}.jsonl")]
        if answered != ids:
            raise InputError(f"--compare {folder}: {method} answered other test examples than these {len(ids)} (check --limit)")
    return [r for r in rows if r.get("task") == task], results.concurrency


def _concurrency(asked: int | None, compared: int | None, compare: Path | None) -> int | None:
    """The distilled model answers with as many queries in flight as the run it is compared with:
    a record's seconds are its latency, which grows with the queries beside it."""
    if asked is not None and compared is not None and asked != compared:
        raise ConfigError(f"--concurrency {asked}: the --compare run {compare} ran {compared} queries at once, and "
                          f"seconds per answer compare only at the same concurrency; drop --concurrency or pass {compared}")
    return asked if asked is not None else compared


def _row(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    return next(r for r in rows if r["method"] == method)


@dataclass
class Plan:
    """A distillation checked before anything trains: the task, the answers, the evaluation to run."""

    config: SwitchConfig
    task: Any
    records: list[EvalRecord]
    aligned: str  # the aligned model's method (single:<name>)
    test: Any  # the prepared test-split evaluation
    compared: list[dict[str, Any]] | None  # results.json rows from --compare, else None
    concurrency: int
    same_concurrency: bool  # False: an older --compare results.json did not record its concurrency
    fingerprint: dict[str, Any]  # what shapes the distilled model and its evaluation (core/fingerprint.py)
    trained: bool  # OUT already holds this run's model: a rerun resumes with the evaluation


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune, evaluate, and write OUT (the merged model) with OUT/switchgen-distill.json and .md.

    `compare`: a `switchgen eval` folder on the test split that already holds the aligned model and
    the method; their results are taken from it (and the distilled model answers the same examples)
    instead of being generated again. A rerun into an OUT that holds this run's model (the same
    fingerprint) resumes with the evaluation; one that holds anything else is refused, naming the
    difference, unless `overwrite` (which replaces it once the new model is trained)."""
    from switchgen.servers.engine.local import LocalEngine

    plan = _plan(config, task_name, outputs, out, settings, compare, base=base, adapter=adapter, overwrite=overwrite)
    engine = engine or LocalEngine()
    start = base or config.candidates[config.aligned_index].model
    if plan.trained:
        log(f"{out} holds this run's distilled model: resuming with its evaluation")
        rounds = json.loads((out / ROUNDS_FILE).read_text(encoding="utf-8")) if (out / ROUNDS_FILE).is_file() else []
    else:
        rounds = _train_rounds(plan, start, out, settings, adapter=adapter, progress=progress, engine=engine, log=log)
    methods, answered = _evaluate(plan, str(out.resolve()), out, settings, adapter=adapter, compare=compare,
                                  progress=progress, engine=engine, log=log)
    report = _report(plan, methods, answered, settings, model=str(out.resolve()), base=start, outputs=outputs,
                     compared_with=str(compare) if compare else str(out / "eval"), rounds=rounds)
    atomic_write_text(out / "switchgen-distill.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "switchgen-distill.md", summary(report))
    return report


def fingerprint(config: SwitchConfig, task, outputs: Path, *, base: str | None, settings: DistillSettings,
                adapter: str | None, compare: Path | None) -> dict[str, Any]:
    """What shapes a distilled model and its evaluation (core/fingerprint.py): the configuration,
    the models' revisions, the task, the train answers' bytes, the base, adapter and settings (not the
    concurrency: it changes seconds, not answers), and the run compared with."""
    from switchgen.servers.engine.loading import model_revisions

    answers = outputs / task.name / f"{settings.method}.jsonl"
    return {"command": "distill", "config": config_fingerprint(config), "revisions": model_revisions(config, (base, adapter)),
            "task": task.fingerprint(), "answers": hashlib.sha256(answers.read_bytes()).hexdigest(), "base": location(base),
            "adapter": location(adapter), "settings": {k: v for k, v in asdict(settings).items() if k != "concurrency"},
            "compare": str(compare.resolve()) if compare else None}


def trained_already(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> bool:
    """Whether OUT holds this very run's distilled model (its fingerprint is moved in with it). An OUT
    that holds anything else is refused (OutputError naming the difference), unless `overwrite`."""
    if overwrite and out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if overwrite or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not out.is_dir():
        check_out(out)
    check_fingerprint(out / DISTILL_FINGERPRINT, fingerprint, output=out, flag="--out")
    return True


def _plan(config: SwitchConfig, task_name: str | Path, outputs: Path, out: Path, settings: DistillSettings,
          compare: Path | None, *, base: str | None, adapter: str | None, overwrite: bool) -> Plan:
    """Everything checked that can be checked before training: bad input stops here."""
    from switchgen.core.jobs import default_concurrency
    from switchgen.evaluation import prepare
    from switchgen.evaluation.run import aligned_method
    from switchgen.tasks import load_task

    require_trl("distill")
    task = load_task(task_name)
    records = train_records(outputs, task, settings.method)
    aligned = aligned_method(config)
    test = prepare([task], [aligned, settings.method], config, settings.limit)
    compared, compared_at = (_compared(compare, task.name, [aligned, settings.method], test.records[task.name])
                             if compare else (None, None))
    concurrency = _concurrency(settings.concurrency, compared_at, compare) or default_concurrency(config)
    prints = fingerprint(config, task, outputs, base=base, settings=settings, adapter=adapter, compare=compare)
    trained = trained_already(out, prints, overwrite)
    return Plan(config, task, records, aligned, test, compared, concurrency, compare is None or compared_at is not None,
                prints, trained)


def _train_rounds(plan: Plan, current: str, out: Path, settings: DistillSettings, *, adapter, progress, engine,
                  log) -> list[dict[str, Any]]:
    """Each round fine-tunes the current model; the last round's model is moved into `out`."""
    from switchgen.evaluation import prepare, run_eval
    from switchgen.servers.engine.loading import load_tokenizer, resolve_model

    work = out.with_name(out.name + ".rounds")
    shutil.rmtree(work, ignore_errors=True)
    rounds, records = [], plan.records
    try:
        for r in range(1, settings.rounds + 1):
            if r > 1:  # switch generation again, the aligned candidate now the previous round's model
                chain = with_aligned_model(plan.config, current)
                regen = work / f"round-{r}-outputs"
                run_eval(chain, prepare([plan.task], [settings.method], chain, None, split="train"), regen,
                         seed=settings.seed, concurrency=plan.concurrency, adapter=adapter, progress=progress,
                         engine=engine)
                records = train_records(regen, plan.task, settings.method)
            examples = sft_examples(load_tokenizer(resolve_model(current)), plan.config, records)
            target = work / f"round-{r}"
            log(f"round {r}: fine-tuning {current} on {len(examples)} answers")
            job = SFTJob(current, settings.epochs, settings.batch_size, settings.lr, settings.lora_r, settings.seed,
                         progress, merge=True)
            rounds.append({"round": r, "base": str(current), "examples": len(examples),
                           "train_loss": fine_tune(job, examples, target)})
            current = str(target.resolve())
        write_fingerprint(Path(current) / DISTILL_FINGERPRINT, plan.fingerprint)  # moved into OUT with the model
        atomic_write_text(Path(current) / ROUNDS_FILE, json.dumps(rounds, indent=1) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            shutil.rmtree(out)  # empty, or --overwrite
        Path(current).replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rounds


def _evaluate(plan: Plan, model: str, out: Path, settings: DistillSettings, *, adapter, compare, progress, engine,
              log) -> tuple[dict[str, dict], dict[str, list[EvalRecord]]]:
    """results.json rows and records of the aligned model, the method and the distilled model on the test split."""
    from switchgen.evaluation import prepare, run_eval

    if plan.compared is None:
        log("evaluating on the test split: the aligned model, switching, the distilled model")
        base_rows = run_eval(plan.config, plan.test, out / "eval", seed=settings.seed, concurrency=plan.concurrency,
                             adapter=adapter, progress=progress, engine=engine)
        base_dir = out / "eval"
    else:
        log(f"evaluating the distilled model on the test split (the others from {compare})")
        base_rows, base_dir = plan.compared, compare
    dconfig = distilled_config(plan.config, model)
    distilled = f"single:{DISTILLED}"
    d_rows = run_eval(dconfig, prepare([plan.task], [distilled], dconfig, settings.limit), out / "eval-distilled",
                      seed=settings.seed, concurrency=plan.concurrency, progress=progress, engine=engine)
    methods = {plan.aligned: _row(base_rows, plan.aligned), settings.method: _row(base_rows, settings.method),
               distilled: _row(d_rows, distilled)}
    folders = {plan.aligned: base_dir, settings.method: base_dir, distilled: out / "eval-distilled"}
    answered = {m: read_eval_records(folders[m] / plan.task.name / f"{m}.jsonl") for m in methods}
    return methods, answered


def _report(plan: Plan, methods: dict[str, dict], answered: dict[str, list[EvalRecord]], settings: DistillSettings,
            **where: Any) -> dict[str, Any]:
    """The recovered fraction of switching's gain, and each method's score and inference cost."""
    costs = {m: method_cost(m, recs) for m, recs in answered.items() if recs}  # none when every answer failed
    a, s, d = (methods[m]["mean"] for m in methods)
    gain = s - a
    report = {
        "task": plan.task.name, "model": where["model"], "base": where["base"], "outputs": str(where["outputs"]),
        "compared_with": where["compared_with"], "rounds": where["rounds"], "settings": asdict(settings),
        "concurrency": plan.concurrency if plan.same_concurrency else None,  # None: the --compare run's is unknown
        "methods": {m: {"mean": row["mean"], "ci": row["ci"], "n": row["n"],
                        "tokens_per_answer": costs[m].tokens if m in costs else None,
                        "seconds_per_answer": costs[m].seconds if m in costs else None,
                        "switcher_calls_per_answer": costs[m].switcher_calls if m in costs else None}
                    for m, row in methods.items()},
        "switch_gain": gain,
        "recovered": (d - a) / gain if gain else None,  # undefined when switching gained nothing
    }
    sw, dm = report["methods"][settings.method], report["methods"][f"single:{DISTILLED}"]
    report["cost_vs_switch"] = {
        key: dm[f"{key}_per_answer"] / sw[f"{key}_per_answer"]
        if dm[f"{key}_per_answer"] is not None and sw[f"{key}_per_answer"] else None
        for key in ("tokens", "seconds")
    }
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
