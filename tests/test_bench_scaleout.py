"""scripts/bench_scaleout.py: its arguments and the receipt summary logged after each burst."""

from __future__ import annotations

from tests.script_loader import load_script

bench = load_script("bench_scaleout.py")


def test_bursts_run_with_1_then_3_workers_unless_told_otherwise() -> None:
    assert bench.parse_args([]).workers == [1, 3]
    assert bench.parse_args(["--workers", "3,3"]).workers == [3, 3]


def test_receipts_are_grouped_by_instant_with_the_gaps_between() -> None:
    summary = bench.receipt_summary([0.5, 0.5, 0.7, 0.7, 0.7, 1.3])
    assert summary["sizes"] == [2, 3, 1]
    assert summary["times"] == [0.5, 0.7, 1.3]
    assert summary["under_1000"] == 3
    assert summary["gaps_over_0_3_s"] == [0.6]
