"""`switchgen bench` runs every variant and sweep and reports the goal ratios (no timing asserted)."""

from __future__ import annotations

import json

from switchgen.bench import QUERIES
from switchgen.cli import main


def test_bench_reports_every_variant_sweep_and_ratio(toy_kit, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--preset", "toy", "--budget", "40", "--reps", "1",
        "--budgets", "20,40", "--concurrency", "1,2", "--load-reps", "2", "--json", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"switch", "single", "reference"}
    # Every variant writes the same number of tokens, so the ratios compare like with like.
    assert {v["tokens"] for v in report["variants"].values()} == {40}
    assert set(report["budget_sweep"]) == {"20", "40"}
    # Short budgets are repeated so every budget is timed over about as many tokens.
    assert [report["budget_sweep"][b]["tokens"] for b in ("20", "40")] == [40, 40]
    assert all(report["budget_sweep"][b]["single_s_per_token"] > 0 for b in ("20", "40"))
    assert set(report["concurrency_sweep"]) == set(report["concurrency_sweep_single"]) == {"1", "2"}
    assert {v["tokens"] for v in report["concurrency_sweep_single"].values()} == {len(QUERIES[:2]) * 40}
    assert set(report["ratios"]) == {
        "switch_vs_single", "reference_vs_switch", "reference_batched_vs_switch_c2", "switch_vs_single_c2",
        "per_token_40_vs_20", "throughput_c2_vs_c1", "spread_under_load_vs_single",
    }
    # The batched reference wrote every query's budget, in lockstep rounds.
    assert report["reference_batched"]["tokens"] == 2 * 40
    # The spread under load ran its repetitions with the busy processes, and they are gone.
    assert report["load"]["processes"] == 2
    assert [len(report["load"]["raw"][v]) for v in ("switch", "single")] == [2, 2]
    assert all(value > 0 for value in report["ratios"].values())
    # Budgets of at most two patches are both anchored: the report says the switcher never ran (issue 11).
    assert [n.split(":")[0] for n in report["notes"]] == ["budget 40", "budget 20"]
    assert all("switcher is never called" in n for n in report["notes"])
    # The switcher's cost in forward passes (switcher.calibration multiplies them): none called here.
    assert report["switcher"] == {"calibration": "none", "passes_per_answer": 0}
    table = capsys.readouterr().out
    assert "note: budget 40: at most two patches" in table
    assert "switcher: calibration none, 0 switcher passes per answer" in table
    for name in ("switch_vs_single", "reference_batched_vs_switch_c2", "spread_under_load_vs_single", "weights in memory"):
        assert name in table


def test_quick_bench_shows_each_table_as_it_is_measured(toy_kit, tmp_path, capsys):
    """--quick: no budget sweep, no load spread, two reps; its other settings give way to flags given."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--budget", "30", "--concurrency", "1,2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["budget"] == 30 and report["reps"] == 2
    assert "budget_sweep" not in report and "load" not in report
    assert len(report["raw"]["switch"]) == 2
    assert report["engine"]["max_prefill_rows"] >= 1 and report["engine"]["graph_captures"] == 0  # CPU: no graphs
    text = capsys.readouterr().out
    order = [text.index(mark) for mark in ("| variant |", "| concurrency |", "| goal |", "raw figures")]
    assert order == sorted(order)


def test_bench_rejects_a_malformed_sweep(toy_kit, capsys):
    assert main(["bench", "--budgets", "128,lots"]) == 2
    assert "comma-separated whole numbers" in capsys.readouterr().err


def test_busy_processes_end_with_the_block():
    from switchgen.bench import busy_machine

    with busy_machine(processes=2, seconds=30) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)  # running
    assert all(p.returncode is not None for p in procs)  # stopped and reaped


def test_a_ratio_without_a_goal_is_not_marked_met():
    from switchgen.bench_tables import goal, summary_table

    assert goal("reference_vs_switch", 0.5) == ("(one query at a time; no goal)", None)
    assert goal("switch_vs_single", 1.05) == ("<= 1.1", True) and goal("switch_vs_single", 1.2)[1] is False
    report = {"ratios": {"reference_vs_switch": 0.93}, "device": "cpu", "wall_s": 1.0,
              "weights": {"checkpoints_in_memory": 3, "roles": 4, "weight_bytes": 2**20},
              "engine": {"max_batch": 1, "max_prefill_rows": 1, "graph_captures": 0, "graph_replays": 0,
                         "cuda_max_allocated": 0}}
    assert "| reference_vs_switch | 0.93 | (one query at a time; no goal) |  |" in summary_table(report)
