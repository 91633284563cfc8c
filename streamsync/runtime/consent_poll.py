"""The export poller: Iterable subscribe/unsubscribe events read from the export API since a
stored cursor, for deployments that cannot take inbound HTTP and as the safety net of the
webhook (a lost delivery is found here; one seen both ways is stored once by its key).

Each poll reads, per data type (emailUnSubscribe, emailSubscribe), the window from the stored
cursor minus `lookback_s` (Iterable's export is eventually consistent: an event can show up
after later ones) to now, whole seconds, and commits its events together with the new cursor,
so the cursor never passes an event that is not stored. Polls are `interval_s` apart (two
requests each, within the export's 4 per minute); a failed poll moves nothing and the next one
reads the same window again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.iterable_export import export_lines
from streamsync.adapters.store import ConsentEventRow, StoreAPI
from streamsync.config import ConsentPollConfig
from streamsync.core.consent_inbound import CONSENT_EVENTS, export_time, parse_export_line
from streamsync.errors import MalformedConsentEvent, RetriableError, describe_error
from streamsync.logs import get_logger
from streamsync.retry import retry_after_of
from streamsync.runtime.consent_rows import to_row

log = get_logger(__name__)


@dataclass
class PollResult:
    """One poll: lines read, events new to the store, lines that could not be read."""

    lines: int = 0
    added: int = 0
    malformed: int = 0


class ExportPoller:
    """Reads the export windows; `on_stored` is called when a poll stored new events."""

    def __init__(self, conf: ConsentPollConfig, store: StoreAPI, iterable: IterableClient, *,
                 clock: Callable[[], float], on_stored: Callable[[], None] = lambda: None
                 ) -> None:
        self.fence: tuple[str, int] | None = None  # (lease, token) the cursor writes need
        self.conf = conf
        self.store = store
        self.iterable = iterable
        self.clock = clock
        self.on_stored = on_stored
        self.polls = 0

    async def poll_once(self) -> PollResult:
        """Read and commit one window per data type."""
        result = PollResult()
        for data_type in CONSENT_EVENTS:
            end_ms = int(self.clock()) * 1000
            cursor = await self.store.consent_cursor(data_type)
            start_ms = (end_ms if cursor is None else cursor) - int(self.conf.lookback_s * 1000)
            if start_ms >= end_ms:
                continue
            lines = await export_lines(self.iterable, data_type, export_time(start_ms),
                                       export_time(end_ms))
            rows = self._rows(lines, data_type, result)
            result.added += await self.store.add_exported_events(rows, data_type, end_ms,
                                                                 self.clock(), fence=self.fence)
        self.polls += 1
        if result.added:
            log.info("consent.export_events", added=result.added, lines=result.lines)
            self.on_stored()
        return result

    def _rows(self, lines: list[object], data_type: str, result: PollResult
              ) -> list[ConsentEventRow]:
        rows: list[ConsentEventRow] = []
        for line in lines:
            result.lines += 1
            try:
                rows.append(to_row(parse_export_line(line, data_type), "export"))
            except MalformedConsentEvent as exc:
                result.malformed += 1
                log.warning("consent.export_line_malformed", data_type=data_type,
                            reason=exc.detail)
        return rows

    async def run(self, stop: asyncio.Event) -> None:
        """Poll now and then every `interval_s` until `stop`; Iterable's faults are waited
        out (a 429's Retry-After at least), never fatal."""
        while not stop.is_set():
            wait_s = self.conf.interval_s
            try:
                await self.poll_once()
            except RetriableError as exc:
                log.warning("consent.export_failed", **describe_error(exc))
                wait_s = max(wait_s, retry_after_of(exc) or 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
