"""Backfill progress on a console: a redrawn bar on a terminal, plain periodic lines otherwise,
and the final summary (runtime/backfill/ reports through runtime/progress.py's Progress)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from streamsync.cli.durations import duration
from streamsync.runtime.backfill import BackfillSummary

BAR_WIDTH = 30


def summary_lines(summary: BackfillSummary) -> list[str]:
    """The human summary of a backfill (`--json` prints `summary.to_dict()` instead)."""
    if summary.status == "already_finished":
        return [f"backfill {summary.run_id} already finished; nothing to do "
                "(use --restart to run it again)"]
    dry = summary.status == "dry_run"
    rate = summary.records_read / summary.duration_s if summary.duration_s > 0 else 0.0
    head = "dry run" if dry else f"backfill {summary.run_id} finished"
    lines = [
        f"{head} in {duration(summary.duration_s)} ({', '.join(summary.objects)})",
        f"  records read          {summary.records_read:,} ({rate:,.0f}/s)",
    ]
    if dry:
        lines.append(f"  payloads written to   {summary.dry_run_file}")
    else:
        lines += [
            f"  written to Iterable   {summary.records_written:,}",
            f"  skipped (unchanged)   {summary.records_skipped:,}",
        ]
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(summary.dead_by_reason.items()))
    label = "would be dead-lettered" if dry else "dead-lettered"
    lines.append(f"  {label:<21} {summary.dead_lettered:,}" + (f" ({reasons})" if reasons else ""))
    if not dry:
        lines += [
            f"  queued for retry      {summary.retry_queued:,}",
            f"  catch-up queued       {summary.catchup_queued:,}",
            f"  Iterable requests     {summary.iterable_requests:,} "
            f"({summary.iterable_429s:,} rate-limited)",
        ]
    lines += [
        f"  Salesforce API calls  {summary.sf_api_calls:,}",
        f"  windows               {summary.windows} ({summary.windows_resumed} resumed)",
    ]
    run = summary.run_totals
    if run is not None and summary.participants > 1:
        lines += [
            f"the whole run, {summary.participants} processes (this one above):",
            f"  records read          {run['records_read']:,}",
            f"  written to Iterable   {run['records_written']:,}",
            f"  skipped (unchanged)   {run['records_skipped']:,}",
            f"  dead-lettered         {run['dead_lettered']:,}",
            f"  catch-up queued       {run['catchup_queued']:,}",
            f"  Iterable requests     {run['iterable_requests']:,} "
            f"({run['iterable_429s']:,} rate-limited)",
        ]
    return lines


class ConsoleProgress:
    """Progress on a text stream (stderr by default).

    On a terminal the bar is redrawn in place at most every `redraw_s`:
    `[######......]  40.0%  120,000/300,000  4,812 rec/s  ETA 37s`. Otherwise (a log file, a
    pipe, systemd) one plain line is written every `line_every_s`. The rate is measured since
    `start`, so records done by an earlier attempt of a resumed run do not inflate it.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        redraw_s: float = 0.2,
        line_every_s: float = 10.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._clock = clock
        self.redraw_s = redraw_s
        self.line_every_s = line_every_s
        self.total: int | None = None
        self.done = 0
        self._base = 0
        self._started = clock()
        self._last_shown = float("-inf")
        self._bar_drawn = False

    # -- numbers

    def rate_per_s(self) -> float:
        elapsed = self._clock() - self._started
        return (self.done - self._base) / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate_per_s()
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def status_text(self) -> str:
        """The numbers of the current state, shared by the bar and the plain lines."""
        rate = self.rate_per_s()
        eta = self.eta_s()
        eta_text = duration(eta) if eta is not None else "?"
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            return (f"{pct:5.1f}%  {self.done:,}/{self.total:,} records  {rate:,.0f} rec/s  "
                    f"ETA {eta_text}")
        return f"{self.done:,} records  {rate:,.0f} rec/s"

    # -- Progress

    def start(self, total: int | None, done: int = 0) -> None:
        self.total = total
        self.done = self._base = done
        self._started = self._clock()
        self._last_shown = float("-inf")
        self._show(force=True)

    def advance(self, records: int) -> None:
        self.done += records
        self._show(force=False)

    def resuming(self, run_id: str, windows_done: int, windows: int, records_done: int) -> None:
        self.message(f"resuming {run_id}: {windows_done} of {windows} windows done, "
                     f"{records_done:,} records already written")

    def caught_up(self, during: int, before: int, margin_s: float) -> None:
        text = f"catch-up: {during:,} records modified during the backfill"
        if before:
            text += f" and {before:,} modified in the {margin_s:g} s before it (not read by it)"
        self.message(text + " queued for the real-time service")

    def message(self, text: str) -> None:
        """One line between the progress updates (the bar is cleared first)."""
        self._clear_bar()
        self.stream.write(f"backfill: {text}\n")
        self.stream.flush()

    def finish(self, summary: BackfillSummary) -> None:
        if summary.status == "already_finished":
            self.message(summary_lines(summary)[0])
            return
        if self.tty and self._bar_drawn:
            self._draw()
            self.stream.write("\n")
            self._bar_drawn = False
        for line in summary_lines(summary):
            self.stream.write(line + "\n")
        self.stream.flush()

    # -- drawing

    def _show(self, *, force: bool) -> None:
        now = self._clock()
        every = self.redraw_s if self.tty else self.line_every_s
        if not force and now - self._last_shown < every:
            return
        self._last_shown = now
        if self.tty:
            self._draw()
        else:
            self.stream.write(f"backfill: {self.status_text()}\n")
        self.stream.flush()

    def _draw(self) -> None:
        filled = 0
        if self.total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.status_text()}\x1b[K")
        self._bar_drawn = True

    def _clear_bar(self) -> None:
        if self.tty and self._bar_drawn:
            self.stream.write("\r\x1b[K")
            self._bar_drawn = False
