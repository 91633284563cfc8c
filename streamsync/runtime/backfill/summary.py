"""What a backfill did, as data: the run's running totals and its typed result."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

SummaryStatus = Literal["finished", "already_finished", "dry_run"]


@dataclass(slots=True)
class Totals:
    """Counters the readers and the write engine add to while a run goes on."""

    read: int = 0
    written: int = 0
    skipped: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    retry_queued: int = 0
    pages: int = 0
    requests: int = 0
    rate_limited: int = 0


@dataclass
class BackfillSummary:
    """What a backfill did; `to_dict()` is the JSON form (streamsync/cli/progress.py renders
    the text one)."""

    run_id: str | None
    status: SummaryStatus
    objects: tuple[str, ...] = ()
    records_read: int = 0
    records_written: int = 0
    records_skipped: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    retry_queued: int = 0
    catchup_queued: int = 0
    pages: int = 0
    windows: int = 0
    windows_resumed: int = 0
    sf_api_calls: int = 0
    iterable_requests: int = 0
    iterable_429s: int = 0
    duration_s: float = 0.0
    dry_run_file: str | None = None
    participants: int = 1
    """Processes that worked on the run (this one included, and earlier stopped attempts)."""
    run_totals: dict[str, Any] | None = None
    """The whole run's counts, every participant's added up (runtime/backfill/joint.py)."""

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "status": self.status, "objects": list(self.objects),
            "records_read": self.records_read, "records_written": self.records_written,
            "records_skipped": self.records_skipped, "dead_lettered": self.dead_lettered,
            "dead_by_reason": dict(self.dead_by_reason), "retry_queued": self.retry_queued,
            "catchup_queued": self.catchup_queued, "pages": self.pages, "windows": self.windows,
            "windows_resumed": self.windows_resumed, "sf_api_calls": self.sf_api_calls,
            "iterable_requests": self.iterable_requests, "iterable_429s": self.iterable_429s,
            "duration_s": round(self.duration_s, 3), "dry_run_file": self.dry_run_file,
            "participants": self.participants, "run": self.run_totals,
        }
