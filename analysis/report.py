"""`switchgen analyze DIR`: the report (report.md + PNGs + analysis.json) over an eval output folder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from switchgen.analysis.plots import (
    method_costs,
    patch_size_ablation,
    position_heatmaps,
    sequence_scatter,
    token_shares,
)
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
from switchgen.core.errors import InputError, OutputError
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


@dataclass
class Page:
    """One task's part of the report, built section by section: markdown lines, figures, and the numbers behind them."""

    run: EvalRun
    task: TaskRun
    out: Path
    methods: list[str]
    candidates: list[str]
    switching: list[str]  # methods that switch authors (patch-size variants get their own section)
    focus: str | None  # the method whose author sequences are analysed
    md: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def authors(self) -> list[str]:
        """The candidates the switching methods wrote with (not a baseline's own author, e.g. merge, soup)."""
        seen = {a for m in self.switching for a in candidates_of(self.task.methods[m])}
        return [c for c in self.candidates if c in seen]

    def figure(self, kind: str) -> tuple[str, Path]:
        name = f"{kind}_{_slug(self.task.task)}.png"
        return name, self.out / name


DEFAULT_METHOD = "switch"


def focus_of(task: TaskRun, switching: list[str], method: str | None) -> tuple[str | None, str]:
    """The method whose author sequences (and single-vs-switching table) are analysed, and why that one:
    `method` (--method, which must be in the run), else switch, else the first switching method."""
    if method is not None:
        return method, "--method"
    if DEFAULT_METHOD in task.methods:
        return DEFAULT_METHOD, "the default"
    if switching:
        return switching[0], f"no {DEFAULT_METHOD} in this run: the first switching method; --method picks another"
    return None, "no switching method in this run"


def analyze_task(run: EvalRun, task: TaskRun, out: Path, method: str | None, threshold: float | None) -> tuple[str, dict]:
    """The markdown section and the figures of one task; returns (markdown, numbers)."""
    methods = _order(run, task)
    switching = [m for m in methods if m != "oracle" and "@" not in m and is_switching(task.methods[m])]
    focus, why = focus_of(task, switching, method)
    if focus is not None and any(r.segments for r in task.methods[focus]):  # its heat map first, even with one author
        switching = [focus] + [m for m in switching if m != focus]
    named = f"Analysed method: `{focus}` ({why})." if focus else f"Analysed method: none ({why})."
    page = Page(run, task, out, methods, _candidates(task), switching, focus, md=[f"## {task.task}", "", named, ""])
    page.numbers.update(methods=methods, candidates=page.candidates, switching=switching, focus=focus, focus_why=why)
    for section in (_results, _positions, _sequences, lambda p: _singles(p, threshold), _tokens, _patch_sizes, _costs):
        section(page)
    return "\n".join(page.md), page.numbers


def _results(page: Page) -> None:
    rows = [r for r in page.run.results if r.get("task") == page.task.task]
    if not rows:
        return
    page.md += ["### Results (results.json)", "", "| method | mean | 95% CI | n | Δ vs aligned | tokens | seconds |",
                "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = r.get("ci") or [None, None]
        delta = r.get("delta_vs_aligned")
        page.md.append(f"| {r.get('method')} | {_f(r.get('mean'))} | [{_f(ci[0])}, {_f(ci[1])}] | {r.get('n', '')} | "
                       f"{_f(delta, signed=True)} | {_f(r.get('tokens'), 0)} | {_f(r.get('seconds'))} |")
    page.md.append("")


def _positions(page: Page) -> None:
    if not page.switching:
        return
    shares = {m: authors_by_position(page.task.methods[m], page.authors()) for m in page.switching}
    name, path = page.figure("positions")
    position_heatmaps(page.task.task, shares, path)
    page.md += ["### Who writes where", "",
                "Share of the answers that reach patch *i* whose patch *i* each candidate wrote; each cell reads "
                "count/n (n = answers with a patch *i*), and a column is faded in proportion to √n, so a share "
                "measured on few answers does not look like strong evidence.", "", f"![authors by position]({name})", ""]
    page.numbers["positions"] = {m: asdict(s) for m, s in shares.items()}


def _sequences(page: Page) -> None:
    focus = page.focus
    if focus is None:
        return
    records = page.task.methods[focus]
    by_length = {n: sequence_stats(records, n) for n in LENGTHS}
    r = {n: frequency_effect_correlation(stats) for n, stats in by_length.items()}
    name, path = page.figure("sequences")
    sequence_scatter(page.task.task, focus, by_length, r, path)
    page.md += [f"### Author sequences ({focus})", "",
                "Frequency: share of answers with the sequence as consecutive patches. Treatment effect: mean "
                "score of those answers minus that of the others. Pearson's r between the two: "
                + ", ".join(f"length {n}: {_f(r[n])}" for n in LENGTHS) + " (– : undefined, fewer than 3 sequences "
                "with a defined effect or a constant variable). A marker's area is in proportion to the answers "
                "using the sequence (n); named sequences show it.", "", f"![author sequences]({name})", ""]
    for n in LENGTHS:
        page.md += [f"| sequence (length {n}) | answers | frequency | treatment effect |", "|---|---:|---:|---:|"]
        page.md += [f"| {s.label} | {s.used} | {s.frequency:.2f} | {_f(s.effect, signed=True)} |" for s in by_length[n][:TOP]]
        if len(by_length[n]) > TOP:
            page.md.append(f"| … {len(by_length[n]) - TOP} more in analysis.json | | | |")
        page.md.append("")
    page.numbers["sequences"] = {
        str(n): [{"sequence": list(s.sequence), "used": s.used, "frequency": s.frequency, "effect": s.effect,
                  "mean_with": s.mean_with, "mean_without": s.mean_without} for s in by_length[n]]
        for n in LENGTHS
    }
    page.numbers["correlation"] = {str(n): r[n] for n in LENGTHS}


def _singles(page: Page, threshold: float | None) -> None:
    focus, methods = page.focus, page.task.methods
    singles = {m: methods[m] for m in page.methods if m.startswith(SINGLE_PREFIX)}
    if focus is None or not singles:
        return
    rule = correct_rule([float(x.score) for recs in methods.values() for x in recs], threshold)
    table = singles_vs_switch(singles, methods[focus], rule)
    page.md += [f"### Single models vs switching ({focus})", "",
                f"Examples by how many of {', '.join(table.singles)} answered correctly, against whether {focus} did "
                f"(correct: {rule.text}; n = {table.n} examples every method answered).", "",
                f"| single models | {focus} correct | {focus} wrong | share {focus} correct |", "|---|---:|---:|---:|"]
    for row in ROWS:
        right, wrong = table.rows[row]
        share = f"{right / (right + wrong):.2f}" if right + wrong else "–"
        page.md.append(f"| {row} | {right} | {wrong} | {share} |")
    page.md.append("")
    page.numbers["singles_vs_switch"] = {
        "singles": table.singles, "rule": rule.text, "n": table.n,
        "rows": {k: {"switch_correct": v[0], "switch_wrong": v[1]} for k, v in table.rows.items()}}


def _tokens(page: Page) -> None:
    if not page.switching:
        return
    candidates = page.authors()
    tokens = {m: dict(tokens_by_candidate(page.task.methods[m])) for m in page.switching}
    name, path = page.figure("tokens")
    token_shares(page.task.task, tokens, candidates, path)
    page.md += ["### Tokens written per candidate", "", f"![tokens per candidate]({name})", "",
                "| method | " + " | ".join(candidates) + " |", "|---|" + "---:|" * len(candidates)]
    page.md += [f"| {m} | " + " | ".join(str(tokens[m].get(c, 0)) for c in candidates) + " |" for m in page.switching]
    page.md.append("")
    page.numbers["tokens_by_candidate"] = tokens


def _patch_sizes(page: Page) -> None:
    ablation = _ablation(page.run, page.task, page.methods)
    if not ablation:
        return
    name, path = page.figure("patch_sizes")
    patch_size_ablation(page.task.task, ablation, path)
    sizes = sorted({p[0] for points in ablation.values() for p in points})
    page.md += ["### Patch-size ablation", "", "Mean score per patch size (`switchgen eval --patch-sizes`); "
                "the unsuffixed methods ran at the configuration's patch size.", "", f"![patch sizes]({name})", "",
                "| method | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m, points in ablation.items():
        at = {p[0]: p[1] for p in points}
        page.md.append(f"| {m} | " + " | ".join(_f(at.get(s)) for s in sizes) + " |")
    page.md.append("")
    page.numbers["patch_sizes"] = {m: [{"patch_size": p[0], "mean": p[1], "ci": p[2]} for p in points]
                                   for m, points in ablation.items()}


def _costs(page: Page) -> None:
    costs = [method_cost(m, page.task.methods[m]) for m in page.methods]
    name, path = page.figure("cost")
    method_costs(page.task.task, costs, path)
    page.md += ["### Cost per method", "", "Means per answer over the records (tokens written, wall seconds).", "",
                f"![cost per method]({name})", "", "| method | n | mean score | tokens / answer | seconds / answer |",
                "|---|---:|---:|---:|---:|"]
    page.md += [f"| {c.method} | {c.n} | {c.mean_score:.3f} | {c.tokens:.1f} | {c.seconds:.3f} |" for c in costs]
    page.md.append("")
    page.numbers["costs"] = [asdict(c) for c in costs]


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


def analyze(root: Path, out: Path | None = None, *, method: str | None = None, threshold: float | None = None,
            log: Callable[[str], None] = lambda line: None) -> Path:
    """Write report.md, its PNGs and analysis.json into `out` (default ROOT/report); returns report.md's path.

    `method`: whose author sequences are analysed (default: switch, else the first switching method);
    one absent from a task of the run is refused (InputError). `log` hears which method each task got."""
    run = load_eval_run(root)
    if method is not None:
        for task in run.tasks.values():
            if method not in task.methods:
                raise InputError(f"--method {method}: not in {root} (task {task.task} has "
                                 f"{', '.join(_order(run, task))}); choose one of those")
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
        log(f"{task.task}: author sequences of {numbers[task.task]['focus']} ({numbers[task.task]['focus_why']})")
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
