"""Backfill progress: a redrawn bar on a terminal, plain periodic lines otherwise, a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

BAR_WIDTH = 30


class Progress(Protocol):
    """What the backfill reports as it goes; implementations decide how to show it."""

    def start(self, total: int | None, done: int = 0) -> None:
        """The run begins: `total` records expected (None when unknown), `done` already."""

    def advance(self, records: int) -> None:
        """`records` more records were written (or dry-run mapped)."""

    def message(self, text: str) -> None:
        """A one-off line (resuming, catch-up, already finished...)."""

    def finish(self, summary_lines: Sequence[str]) -> None:
        """The run ended: show the final summary."""


class NullProgress:
    """Shows nothing (library use, tests that do not look at progress)."""

    def start(self, total: int | None, done: int = 0) -> None:
        return None

    def advance(self, records: int) -> None:
        return None

    def message(self, text: str) -> None:
        return None

    def finish(self, summary_lines: Sequence[str]) -> None:
        return None


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h04m`."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


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
        eta_text = format_duration(eta) if eta is not None else "?"
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

    def message(self, text: str) -> None:
        self._clear_bar()
        self.stream.write(f"backfill: {text}\n")
        self.stream.flush()

    def finish(self, summary_lines: Sequence[str]) -> None:
        if self.tty and self._bar_drawn:
            self._draw()
            self.stream.write("\n")
            self._bar_drawn = False
        for line in summary_lines:
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
