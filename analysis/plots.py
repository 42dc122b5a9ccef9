"""The report's figures. One function per figure, each writes one PNG; colours follow the candidate.

matplotlib's object API (`Figure`, rendered by the Agg canvas): no pyplot state, no display, safe
inside a notebook kernel or a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from switchgen.analysis.stats import MethodCost, PositionShares, SequenceStat

DPI = 110


def colours(candidates: Sequence[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {c: cmap(i % 10) for i, c in enumerate(candidates)}


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def support(answers: Sequence[int]) -> list[float]:
    """Each column's opacity in a heat map: the square root of its answers over the largest column's
    (at least 0.15), so a share measured on one answer looks faint, not like strong evidence."""
    most = max(answers, default=0) or 1
    return [max(0.15, (n / most) ** 0.5) for n in answers]


def position_heatmaps(task: str, shares: dict[str, PositionShares], path: Path) -> Figure:
    """One heat map per switching method: candidate (rows) x patch index (columns), share of answers.
    Each cell shows count/n (answers whose patch i the candidate wrote / answers that reach patch i),
    and a column is faded by its n (`support`)."""
    methods = list(shares)
    width = max(6.0, min(16.0, 1.0 + 0.55 * max(len(s.answers) for s in shares.values())))
    fig = _figure(width, 1.0 + 1.7 * len(methods))
    axes = fig.subplots(len(methods), 1, squeeze=False)
    image = None
    for ax, method in zip(axes[:, 0], methods, strict=True):
        s = shares[method]
        alpha = [support(s.answers)] * len(s.candidates)
        image = ax.imshow(s.shares, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, alpha=alpha or None)
        ax.set_yticks(range(len(s.candidates)), s.candidates)
        ax.set_xticks(range(len(s.answers)), [f"{i}\n(n={n})" for i, n in enumerate(s.answers)], fontsize=8)
        ax.set_title(f"{method}: who writes patch i (faded: few answers reach it)", fontsize=10)
        ax.set_ylabel("author")
        if len(s.answers) <= 24:
            for row, values in enumerate(s.shares):
                for col, v in enumerate(values):
                    bright = v > 0.6 or alpha[row][col] < 0.6  # on yellow or on a faded (pale) cell
                    ax.text(col, row, f"{round(v * s.answers[col])}/{s.answers[col]}", ha="center", va="center",
                            fontsize=7, color="black" if bright else "white")
    axes[-1, 0].set_xlabel("patch index (n = answers that reach it)")
    fig.suptitle(f"{task}: share of answers whose patch i each candidate wrote", fontsize=11)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="share of answers", shrink=0.9)
    _save(fig, path)
    return fig


def marker_area(used: int, most: int) -> float:
    """A sequence's marker area in points², in proportion to the answers using it (its n)."""
    return 12.0 + 188.0 * used / max(most, 1)


def sequence_scatter(
    task: str, method: str, by_length: dict[int, list[SequenceStat]], r: dict[int, float | None], path: Path
) -> Figure:
    """Frequency against treatment effect of each author sequence, one marker shape per length, its
    area in proportion to n (the answers using it); named sequences show their n."""
    fig = _figure(7.5, 5.0)
    ax = fig.subplots()
    markers = {2: ("o", "tab:blue"), 3: ("^", "tab:orange")}
    most = max((s.used for stats in by_length.values() for s in stats), default=1)
    for n, stats in by_length.items():
        points = [s for s in stats if s.effect is not None]
        marker, colour = markers.get(n, ("s", "tab:green"))
        rn = r.get(n)
        label = f"length {n} ({len(points)} sequences, r = {rn:.2f})" if rn is not None else f"length {n} ({len(points)} sequences, r undefined)"
        ax.scatter([s.frequency for s in points], [s.effect for s in points], marker=marker, color=colour,
                   s=[marker_area(s.used, most) for s in points], alpha=0.75, label=label, edgecolors="black",
                   linewidths=0.4)
    _name_points(ax, [s for stats in by_length.values() for s in stats if s.effect is not None])
    if not any(s.effect is not None for stats in by_length.values() for s in stats):
        ax.text(0.5, 0.75, "no sequence with a defined effect:\nevery answer uses the same sequences",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="dimgrey")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0.0, 1.05)  # frequencies are shares
    ax.set_xlabel("frequency (share of answers using the sequence)")
    ax.set_ylabel("treatment effect (mean score used − not used)")
    ax.set_title(f"{task} / {method}: author sequences (marker area: n answers using it)", fontsize=11)
    legend = ax.legend(fontsize=8, loc="best")
    for handle in legend.legend_handles:  # the legend's markers at one size: area means n, not length
        handle.set_sizes([40.0])
    ax.grid(alpha=0.3)
    _save(fig, path)
    return fig


def _name_points(ax, points: Sequence[SequenceStat], most: int = 8) -> None:
    """Label the sequences a reader looks for (the largest effects either way, then the most used).
    A point close to labelled ones gets its label on another side of it; with no side free it stays
    unlabelled, so labels never pile up."""
    if not points:
        return
    span = (max(s.effect for s in points) - min(s.effect for s in points)) or 1.0
    sides = [((4, 4), "left"), ((4, -10), "left"), ((-4, 4), "right"), ((-4, -10), "right")]
    placed: list[tuple[SequenceStat, int]] = []
    for s in sorted(points, key=lambda s: (-abs(s.effect), -s.frequency)):
        if len(placed) == most:
            break
        near = {side for p, side in placed if abs(s.frequency - p.frequency) < 0.08 and abs(s.effect - p.effect) < 0.06 * span}
        if len(near) >= 2:  # a crowd: leave it unlabelled
            continue
        side = min(set(range(len(sides))) - near)
        (dx, dy), align = sides[side]
        placed.append((s, side))
        ax.annotate(f"{s.label} (n={s.used})", (s.frequency, s.effect), textcoords="offset points", xytext=(dx, dy),
                    ha=align, fontsize=7)


def token_shares(task: str, tokens: dict[str, dict[str, int]], candidates: Sequence[str], path: Path) -> None:
    """Per switching method, the share of tokens each candidate wrote (stacked horizontal bars; the
    legend lists every candidate in the configuration's order, written or not)."""
    methods = list(tokens)
    colour = colours(candidates)
    fig = _figure(7.5, 0.9 + 0.55 * len(methods))
    ax = fig.subplots()
    for y, method in enumerate(methods):
        total = sum(tokens[method].values()) or 1
        left = 0.0
        for c in candidates:
            share = tokens[method].get(c, 0) / total
            if share:
                ax.barh(y, share, left=left, color=colour[c], edgecolor="white")
                if share >= 0.07:
                    ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
                left += share
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of tokens written")
    ax.set_title(f"{task}: tokens written per candidate", fontsize=11)
    ax.legend(handles=[Patch(color=colour[c], label=c) for c in candidates], title="author", fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def method_costs(task: str, costs: Sequence[MethodCost], path: Path) -> None:
    """Mean score, tokens and seconds per answer of each method, side by side."""
    names = [c.method for c in costs]
    fig = _figure(12.0, 1.2 + 0.45 * len(names))
    axes = fig.subplots(1, 3, sharey=True)
    panels = [("mean score", [c.mean_score for c in costs], "{:.2f}"),
              ("tokens per answer", [c.tokens for c in costs], "{:.0f}"),
              ("seconds per answer", [c.seconds for c in costs], "{:.2f}")]
    for ax, (title, values, fmt) in zip(axes, panels, strict=True):
        bars = ax.barh(range(len(names)), values, color="tab:blue", alpha=0.8)
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, (max(values) or 1) * 1.25)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(f"{task}: quality and cost per method", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def patch_size_ablation(task: str, lines: dict[str, list[tuple[int, float, tuple[float, float] | None]]], path: Path) -> None:
    """Mean score against patch size, one line per method (switch, random, untuned), with 95% intervals."""
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    for k, (method, points) in enumerate(lines.items()):
        points = sorted(points)
        dodge = 1.0 + 0.025 * (k - (len(lines) - 1) / 2)  # side by side, so equal values stay visible
        xs, ys = [p[0] * dodge for p in points], [p[1] for p in points]
        lo = [p[1] - p[2][0] if p[2] else 0.0 for p in points]
        hi = [p[2][1] - p[1] if p[2] else 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=method, alpha=0.85)
    ax.set_xscale("log")
    sizes = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("patch size (tokens)")
    ax.set_ylabel("mean score (95% interval)")
    ax.set_title(f"{task}: patch-size ablation", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
