"""`switchgen analyze DIR`: the report (report.md + PNGs + analysis.json) over an eval output folder."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from switchgen.analysis import plots
from switchgen.analysis.stats import (
    ROWS,
    SINGLE_PREFIX,
    authors_by_position,
    candidates_of,
    correct_rule,
    frequency_effect_correlation,
    is_switching,
    method_cost,
    sequence_stats,
    singles_vs_switch,
    tokens_by_candidate,
)
from switchgen.core.errors import OutputError
from switchgen.core.files import atomic_write_text
from switchgen.core.records import EvalRecord, EvalRun, TaskRun, load_eval_run

LENGTHS = (2, 3)
TOP = 8  # sequences listed per length in the report's tables


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "task"


def _order(run: EvalRun, task: TaskRun) -> list[str]:
    """Methods in results.json's order (the eval's), then any others: singles first, by name."""
    listed = [r["method"] for r in run.results if r.get("task") == task.task and r.get("method") in task.methods]
    candidates = _candidates(task)

    def key(m: str) -> tuple:
        name = m.removeprefix(SINGLE_PREFIX)
        return (not m.startswith(SINGLE_PREFIX), candidates.index(name) if name in candidates else len(candidates), m)

    rest = sorted((m for m in task.methods if m not in listed), key=key)
    return list(dict.fromkeys(listed + rest))


def _candidates(task: TaskRun) -> list[str]:
    """Every author seen, in the configuration's order (the segments' `index`), then by name."""
    index: dict[str, int] = {}
    for records in task.methods.values():
        for r in records:
            for s in r.segments:
                if s.index is not None:
                    index[s.candidate] = min(index.get(s.candidate, s.index), s.index)
    names = {c for records in task.methods.values() for c in candidates_of(records)}
    return sorted(names, key=lambda c: (index.get(c, 1 << 30), c))


def analyze_task(run: EvalRun, task: TaskRun, out: Path, method: str, threshold: float | None) -> tuple[str, dict]:
    """The markdown section and the figures of one task; returns (markdown, numbers)."""
    methods = _order(run, task)
    candidates = _candidates(task)
    # Patch-size variants (switch@10, ...) get their own section, not a heat map each.
    switching = [m for m in methods if m != "oracle" and "@" not in m and is_switching(task.methods[m])]
    focus = method if method in task.methods else (switching[0] if switching else None)
    if focus is not None and any(r.segments for r in task.methods[focus]):  # its heat map first, even with one author
        switching = [focus] + [m for m in switching if m != focus]
    slug = _slug(task.task)
    md: list[str] = [f"## {task.task}", ""]
    numbers: dict[str, Any] = {"methods": methods, "candidates": candidates, "switching": switching, "focus": focus}

    rows = [r for r in run.results if r.get("task") == task.task]
    if rows:
        md += ["### Results (results.json)", "", "| method | mean | 95% CI | n | Δ vs aligned | tokens | seconds |",
               "|---|---:|---|---:|---:|---:|---:|"]
        for r in rows:
            ci = r.get("ci") or [None, None]
            delta = r.get("delta_vs_aligned")
            md.append(f"| {r.get('method')} | {_f(r.get('mean'))} | [{_f(ci[0])}, {_f(ci[1])}] | {r.get('n', '')} | "
                      f"{_f(delta, signed=True)} | {_f(r.get('tokens'), 0)} | {_f(r.get('seconds'))} |")
        md.append("")

    if switching:
        shares = {m: authors_by_position(task.methods[m], candidates) for m in switching}
        name = f"positions_{slug}.png"
        plots.position_heatmaps(task.task, shares, out / name)
        md += ["### Who writes where", "",
               "Share of the answers that reach patch *i* whose patch *i* each candidate wrote "
               "(n = answers with a patch *i*).", "", f"![authors by position]({name})", ""]
        numbers["positions"] = {m: asdict(s) for m, s in shares.items()}

    if focus is not None:
        records = task.methods[focus]
        by_length = {n: sequence_stats(records, n) for n in LENGTHS}
        r = {n: frequency_effect_correlation(stats) for n, stats in by_length.items()}
        name = f"sequences_{slug}.png"
        plots.sequence_scatter(task.task, focus, by_length, r, out / name)
        md += [f"### Author sequences ({focus})", "",
               "Frequency: share of answers with the sequence as consecutive patches. Treatment effect: mean "
               "score of those answers minus that of the others. Pearson's r between the two: "
               + ", ".join(f"length {n}: {_f(r[n])}" for n in LENGTHS) + " (– : undefined, fewer than 3 sequences "
               "with a defined effect or a constant variable).", "", f"![author sequences]({name})", ""]
        for n in LENGTHS:
            md += [f"| sequence (length {n}) | answers | frequency | treatment effect |", "|---|---:|---:|---:|"]
            md += [f"| {s.label} | {s.used} | {s.frequency:.2f} | {_f(s.effect, signed=True)} |" for s in by_length[n][:TOP]]
            if len(by_length[n]) > TOP:
                md.append(f"| … {len(by_length[n]) - TOP} more in analysis.json | | | |")
            md.append("")
        numbers["sequences"] = {
            str(n): [{"sequence": list(s.sequence), "used": s.used, "frequency": s.frequency, "effect": s.effect,
                      "mean_with": s.mean_with, "mean_without": s.mean_without} for s in by_length[n]]
            for n in LENGTHS
        }
        numbers["correlation"] = {str(n): r[n] for n in LENGTHS}

    singles = {m: task.methods[m] for m in methods if m.startswith(SINGLE_PREFIX)}
    if focus is not None and singles:
        all_scores = [float(x.score) for recs in task.methods.values() for x in recs]
        rule = correct_rule(all_scores, threshold)
        table = singles_vs_switch(singles, task.methods[focus], rule)
        md += [f"### Single models vs switching ({focus})", "",
               f"Examples by how many of {', '.join(table.singles)} answered correctly, against whether {focus} did "
               f"(correct: {rule.text}; n = {table.n} examples every method answered).", "",
               f"| single models | {focus} correct | {focus} wrong | share {focus} correct |", "|---|---:|---:|---:|"]
        for row in ROWS:
            right, wrong = table.rows[row]
            share = f"{right / (right + wrong):.2f}" if right + wrong else "–"
            md.append(f"| {row} | {right} | {wrong} | {share} |")
        md.append("")
        numbers["singles_vs_switch"] = {"singles": table.singles, "rule": rule.text, "n": table.n,
                                        "rows": {k: {"switch_correct": v[0], "switch_wrong": v[1]} for k, v in table.rows.items()}}

    if switching:
        tokens = {m: dict(tokens_by_candidate(task.methods[m])) for m in switching}
        name = f"tokens_{slug}.png"
        plots.token_shares(task.task, tokens, candidates, out / name)
        md += ["### Tokens written per candidate", "", f"![tokens per candidate]({name})", "",
               "| method | " + " | ".join(candidates) + " |", "|---|" + "---:|" * len(candidates)]
        md += [f"| {m} | " + " | ".join(str(tokens[m].get(c, 0)) for c in candidates) + " |" for m in switching]
        md.append("")
        numbers["tokens_by_candidate"] = tokens

    ablation = _ablation(run, task, methods)
    if ablation:
        name = f"patch_sizes_{slug}.png"
        plots.patch_size_ablation(task.task, ablation, out / name)
        sizes = sorted({p[0] for points in ablation.values() for p in points})
        md += ["### Patch-size ablation", "", "Mean score per patch size (`switchgen eval --patch-sizes`); "
               "the unsuffixed methods ran at the configuration's patch size.", "", f"![patch sizes]({name})", "",
               "| method | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for m, points in ablation.items():
            at = {p[0]: p[1] for p in points}
            md.append(f"| {m} | " + " | ".join(_f(at.get(s)) for s in sizes) + " |")
        md.append("")
        numbers["patch_sizes"] = {m: [{"patch_size": p[0], "mean": p[1], "ci": p[2]} for p in points]
                                  for m, points in ablation.items()}

    costs = [method_cost(m, task.methods[m]) for m in methods]
    name = f"cost_{slug}.png"
    plots.method_costs(task.task, costs, out / name)
    md += ["### Cost per method", "", "Means per answer over the records (tokens written, wall seconds).", "",
           f"![cost per method]({name})", "", "| method | n | mean score | tokens / answer | seconds / answer |",
           "|---|---:|---:|---:|---:|"]
    md += [f"| {c.method} | {c.n} | {c.mean_score:.3f} | {c.tokens:.1f} | {c.seconds:.3f} |" for c in costs]
    md.append("")
    numbers["costs"] = [asdict(c) for c in costs]
    return "\n".join(md), numbers


def _ablation(run: EvalRun, task: TaskRun, methods: list[str]) -> dict[str, list[tuple[int, float, tuple | None]]]:
    """Per base method with `@N` variants: (patch size, mean score, 95% interval) per size, the
    unsuffixed method at the configuration's patch size (results.json's patch_size) included."""
    rows = {r["method"]: r for r in run.results if r.get("task") == task.task}
    lines: dict[str, list[tuple[int, float, tuple | None]]] = {}
    for m in methods:
        base, _, size = m.rpartition("@")
        if base and size.isdigit():
            lines.setdefault(base, [])
    for m in methods:
        base, _, size = m.rpartition("@")
        name, n = (base, int(size)) if base and size.isdigit() else (m, rows.get(m, {}).get("patch_size"))
        if name in lines and n:
            records = task.methods[m]
            ci = rows.get(m, {}).get("ci")
            lines[name].append((int(n), sum(float(r.score) for r in records) / len(records), tuple(ci) if ci else None))
    return {m: points for m, points in lines.items() if points}


def analyze(root: Path, out: Path | None = None, *, method: str = "switch", threshold: float | None = None) -> Path:
    """Write report.md, its PNGs and analysis.json into `out` (default ROOT/report); returns report.md's path."""
    run = load_eval_run(root)
    out = out or root / "report"
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write --out {out} ({err.strerror or err}); choose another --out") from None
    sections, numbers = [], {}
    for task in run.tasks.values():
        text, numbers[task.task] = analyze_task(run, task, out, method, threshold)
        sections.append(text)
    head = [f"# Analysis of `{root}`", "",
            f"{len(run.tasks)} task(s): {', '.join(run.tasks)}. Written by `switchgen analyze`; numbers in analysis.json.", ""]
    atomic_write_text(out / "analysis.json", json.dumps(numbers, indent=1, ensure_ascii=False) + "\n")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(head + sections))
    return report


def _f(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


__all__ = ["EvalRecord", "analyze", "analyze_task"]
