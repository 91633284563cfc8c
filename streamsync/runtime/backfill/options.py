"""What one backfill invocation asks for, how its calls are retried, the errors that stop it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from streamsync.core import soql
from streamsync.errors import (
    AuthError,
    BackfillError,
    RetriableError,
    SoqlError,
    WritesFailed,
)
from streamsync.retry import Policy

Api = Literal["rest", "bulk"]
READS = Policy(name="backfill_reads", attempts=8, timeout_s=300.0, wait_initial_s=0.5,
               wait_max_s=30.0)
"""Every Salesforce read of a backfill: a query page, a Bulk job, a count, a describe."""
WRITES = Policy(name="backfill_writes", attempts=6, timeout_s=300.0, wait_initial_s=0.5,
                wait_max_s=30.0)
"""A pipeline call of a backfill, while Iterable takes none (or not all) of its records."""


def key_refused(exc: AuthError) -> WritesFailed:
    """The run cannot write: Iterable refused the API key."""
    return WritesFailed(
        f"Iterable refused the API key: {exc}",
        "set STREAMSYNC_ITERABLE_API_KEY to a server-side API key of the project, then run "
        "again (with --resume if the backfill had started)")


def unreachable(exc: RetriableError, base_url: str, what: str) -> WritesFailed:
    """The run cannot write: Iterable does not answer (or only with errors)."""
    return WritesFailed(
        f"{what}: {exc}",
        f"check that Iterable answers at {base_url} (iterable.base_url), then run again (with "
        "--resume if the backfill had started: it sends the pages after the last checkpoint)")


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    """One backfill invocation. `objects` empty means every configured object; an Account that
    only fans out is backfilled as its fan-out children (see `Planner.plan`)."""

    objects: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    where: str | None = None
    resume: bool = False
    restart: bool = False
    join: bool = False
    dry_run: Path | None = None
    parallel: int | None = None
    api: Api | None = None
    page_size: int | None = None
    prefetch_pages: int = 1
    write_depth: int = 1
    catch_up: bool = True

    def __post_init__(self) -> None:
        if self.resume and self.restart:
            raise BackfillError("--resume and --restart exclude each other")
        if self.join and self.restart:
            raise BackfillError("--join and --restart exclude each other")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise BackfillError(f"--{name} needs a timezone (e.g. 2024-01-01T00:00:00Z)")
        if self.since and self.until and self.since >= self.until:
            raise BackfillError("--since must be before --until")
        if self.parallel is not None and not 1 <= self.parallel <= 25:
            raise BackfillError("--parallel must be within 1..25 (Salesforce allows 25 "
                                "long-running requests at once)")
        if self.page_size is not None and not 200 <= self.page_size <= soql.PAGE_LIMIT:
            raise BackfillError(f"page size must be within 200..{soql.PAGE_LIMIT}")
        if not 1 <= self.prefetch_pages <= 4:
            raise BackfillError("prefetch_pages must be within 1..4")
        if not 1 <= self.write_depth <= 4:
            raise BackfillError("write_depth must be within 1..4")
        if self.where is not None:
            try:
                soql.parse_filter(self.where)
            except SoqlError as exc:
                raise BackfillError(f"--where: {exc}") from None
