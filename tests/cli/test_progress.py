"""Backfill presentation in streamsync/cli/progress.py: the runtime reports typed facts
(runtime/progress.py), the console turns them into lines."""

from __future__ import annotations

import io

import pytest

from streamsync.backfill import main as module_main
from streamsync.cli import main
from streamsync.cli.progress import ConsoleProgress, summary_lines
from streamsync.runtime.backfill import BackfillSummary


def test_resuming_and_catch_up_lines_clear_the_bar_first() -> None:
    out = io.StringIO()
    progress = ConsoleProgress(out, tty=True, clock=lambda: 0.0)
    progress.start(10)
    progress.resuming("run-7", 3, 8, 12_000)
    progress.caught_up(1_204, 0, 2.0)
    progress.caught_up(5, 2, 2.5)
    text = out.getvalue()
    assert ("\r\x1b[Kbackfill: resuming run-7: 3 of 8 windows done, 12,000 records already "
            "written\n") in text
    assert ("backfill: catch-up: 1,204 records modified during the backfill queued for the "
            "real-time service\n") in text
    assert ("backfill: catch-up: 5 records modified during the backfill and 2 modified in the "
            "2.5 s before it (not read by it) queued for the real-time service\n") in text


def test_an_already_finished_run_is_one_line() -> None:
    out = io.StringIO()
    ConsoleProgress(out, tty=False).finish(BackfillSummary("run-3", "already_finished",
                                                           ("Lead",)))
    assert out.getvalue() == ("backfill: backfill run-3 already finished; nothing to do (use "
                              "--restart to run it again)\n")


def test_dry_run_summary() -> None:
    lines = summary_lines(BackfillSummary(
        None, "dry_run", ("Lead", "Contact"), records_read=7_200, duration_s=3_725.0,
        dead_by_reason={"invalid_email": 3, "no_email": 1}, sf_api_calls=9, windows=4,
        dry_run_file="payloads.jsonl"))
    assert lines == [
        "dry run in 1h 02m (Lead, Contact)",
        "  records read          7,200 (2/s)",
        "  payloads written to   payloads.jsonl",
        "  would be dead-lettered 4 (invalid_email 3, no_email 1)",
        "  Salesforce API calls  9",
        "  windows               4 (0 resumed)",
    ]


def test_a_joint_run_summary_adds_the_whole_run() -> None:
    run = {"records_read": 1_900, "records_written": 1_700, "records_skipped": 150,
           "dead_lettered": 50, "catchup_queued": 3, "iterable_requests": 62,
           "iterable_429s": 0, "participants": 2}
    lines = summary_lines(BackfillSummary(
        "bf-1", "finished", ("Lead",), records_read=1_000, duration_s=10.0, windows=4,
        participants=2, run_totals=run))
    assert lines[-7:] == [
        "the whole run, 2 processes (this one above):",
        "  records read          1,900",
        "  written to Iterable   1,700",
        "  skipped (unchanged)   150",
        "  dead-lettered         50",
        "  catch-up queued       3",
        "  Iterable requests     62 (0 rate-limited)",
    ]
    alone = summary_lines(BackfillSummary("bf-2", "finished", ("Lead",), run_totals=run))
    assert not any("whole run" in line for line in alone)


def test_python_m_streamsync_backfill_is_the_same_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill", "--help"]) == 0
    mounted = capsys.readouterr().out
    assert module_main(["--help"]) == 0
    assert capsys.readouterr().out == mounted and "usage: streamsync backfill" in mounted
