"""What a backfill reports as it goes (streamsync/cli/progress.py shows it on a console)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from streamsync.runtime.backfill import BackfillSummary


class Progress(Protocol):
    """What the backfill reports as it goes; implementations decide how to show it."""

    def start(self, total: int | None, done: int = 0) -> None:
        """The run begins: `total` records expected (None when unknown), `done` already."""

    def advance(self, records: int) -> None:
        """`records` more records were written (or dry-run mapped)."""

    def resuming(self, run_id: str, windows_done: int, windows: int, records_done: int) -> None:
        """An unfinished run continues: `windows_done` of `windows` done, `records_done` written."""

    def caught_up(self, during: int, before: int, margin_s: float) -> None:
        """The catch-up queued `during` records modified while the backfill ran and `before`
        modified in the `margin_s` seconds before it started."""

    def finish(self, summary: BackfillSummary) -> None:
        """The run ended (or had nothing to do: status `already_finished`)."""


class NullProgress:
    """Shows nothing (library use, tests that do not look at progress)."""

    def start(self, total: int | None, done: int = 0) -> None:
        return None

    def advance(self, records: int) -> None:
        return None

    def resuming(self, run_id: str, windows_done: int, windows: int, records_done: int) -> None:
        return None

    def caught_up(self, during: int, before: int, margin_s: float) -> None:
        return None

    def finish(self, summary: BackfillSummary) -> None:
        return None
