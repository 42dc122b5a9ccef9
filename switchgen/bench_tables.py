"""`switchgen bench`'s tables, one per section (shown as each is measured), and the goals its ratios are held to."""

from __future__ import annotations

# name prefix -> (target on CPU, target on CUDA, text): issue #13's goals and, on CUDA, issue #22's.
_TARGETS = {
    "per_token_": (1.3, 1.3, "<= {}"),
    "throughput_": (3.0, 10.0, ">= {}"),
    "reference_batched_vs_switch": (2.0, 2.0, ">= {}"),
    "switch_vs_single": (1.10, 1.10, "<= {}"),
    "spread_under_load_vs_single": (2.0, 2.0, "<= {}"),
}


def goal(name: str, value: float, device: str = "cpu") -> tuple[str, bool | None]:
    """The target of a ratio and whether `value` meets it (on CUDA the throughput goal is 10x, not 3x); None: no goal."""
    if name == "reference_vs_switch":
        return "(one query at a time; no goal)", None
    for prefix, (cpu, cuda, text) in _TARGETS.items():
        if name.startswith(prefix):
            target = cuda if device.startswith("cuda") else cpu
            ok = value >= target if text.startswith(">") else value <= target
            return text.format(target), ok
    return "", None


def header(report: dict) -> str:
    return (f"device: {report['device']} ({report['torch_threads']} torch threads); budget {report['budget']}, "
            f"patch {report['patch_size']}, median of up to {report['reps']} interleaved reps after a warm-up")


def variants_table(report: dict) -> str:
    lines = [header(report), "", "| variant | median s | tokens | ms/token |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {t['median_s']:.3f} | {t['tokens']} | {1000 * t['s_per_token']:.2f} |"
              for n, t in report["variants"].items()]
    if sw := report.get("switcher"):  # the switcher's cost in forward passes (switcher.calibration multiplies them)
        lines.append(f"switcher: calibration {sw['calibration']}, {sw['passes_per_answer']:g} switcher passes per answer (median)")
    return "\n".join(lines)


def budget_table(report: dict) -> str:
    lines = ["| budget | switch: median s (repeated to ~equal tokens) | tokens | ms/token | aligned alone: ms/token |",
             "|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {b} | {t['median_s']:.3f} | {t['tokens']} | {1000 * t['s_per_token']:.2f} | {1000 * t['single_s_per_token']:.2f} |"
        for b, t in report["budget_sweep"].items()
    ]
    return "\n".join(lines)


def concurrency_table(report: dict) -> str:
    single = report["concurrency_sweep_single"]
    lines = ["| concurrency | switch: median s | tokens | tokens/s | aligned alone: median s | tokens | tokens/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {c} | {t['median_s']:.3f} | {t['tokens']} | {t['tokens_per_s']:.0f} "
        f"| {single[c]['median_s']:.3f} | {single[c]['tokens']} | {single[c]['tokens_per_s']:.0f} |"
        for c, t in report["concurrency_sweep"].items()
    ]
    ref = report["reference_batched"]
    lines += [f"| reference batched, {ref['queries']} queries | {ref['median_s']:.3f} | {ref['tokens']} "
              f"| {ref['tokens'] / ref['median_s']:.0f} | | | |"]
    return "\n".join(lines)


def load_table(report: dict) -> str:
    load = report["load"]
    lines = [f"| under load ({load['processes']} busy processes, {load['reps']} reps) | median s | min s | max s "
             "| spread (max/min) |", "|---|---:|---:|---:|---:|"]
    for name, raw in load["raw"].items():
        secs = [t for t, _ in raw]
        lines.append(f"| {name} | {load['median_s'][name]:.3f} | {min(secs):.3f} | {max(secs):.3f} "
                     f"| {load['spread'][name]:.2f} |")
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    lines = [f"note: {note}" for note in report.get("notes", [])]
    lines += ["| goal | ratio | target | met |", "|---|---:|---:|:---:|"]
    for name, value in report["ratios"].items():
        target, ok = goal(name, value, report["device"])
        lines.append(f"| {name} | {value:.2f} | {target} | {'' if ok is None else 'yes' if ok else 'no'} |")
    if "single_throughput_ratio" in report:
        lines.append(f"| (aligned alone: throughput high vs low concurrency) | {report['single_throughput_ratio']:.2f} | | |")
    w, e = report["weights"], report["engine"]
    lines.append(f"| weights in memory | {w['checkpoints_in_memory']} checkpoints for {w['roles']} roles "
                 f"({w['weight_bytes'] / 2**20:.1f} MiB) | shared once | "
                 f"{'yes' if w['checkpoints_in_memory'] <= w['roles'] else 'no'} |")
    lines += ["", f"engine: largest decode batch {e['max_batch']}, largest prefill pass {e['max_prefill_rows']} requests, "
              f"CUDA graphs captured {e['graph_captures']} / replayed {e['graph_replays']}"
              + (f", peak CUDA memory {e['cuda_max_allocated'] / 2**30:.1f} GiB" if e["cuda_max_allocated"] else "")
              + f"; the bench took {report['wall_s']:.0f} s"]
    return "\n".join(lines)


def rollouts_markdown(report: dict) -> str:
    lines = [
        f"device: {report['device']} ({report['torch_threads']} torch threads); {report['instances']} instances, "
        f"k={report['k']}, budget {report['budget']}, patch {report['patch_size']}, median of {report['reps']} "
        "interleaved reps after a warm-up",
        "",
        "| concurrency | rollouts | median s | continuations | rollouts/s | tokens written | tokens/s "
        "| prompt tokens prefilled |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"shared": "shared prefix (KV caches reused)", "independent": "independent (no prefix reuse)"}
    for c, row in report["rollouts"].items():
        lines += [
            f"| {c} | {labels[n]} | {t['median_s']:.3f} | {t['rollouts']} | {t['rollouts_per_s']:.2f} | {t['tokens']} "
            f"| {t['tokens_per_s']:.0f} | {t['prefilled_tokens']} |"
            for n, t in row.items() if n != "speedup"
        ]
    lines += [""] + [f"shared-prefix speedup at concurrency {c}: {row['speedup']:.2f}x"
                     for c, row in report["rollouts"].items()]
    return "\n".join(lines)
