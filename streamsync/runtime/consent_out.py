"""Salesforce → Iterable consent: after a record's profile is written, its opt-out state.

The pipeline (`runtime/pipeline.py`) hands over the records it just read and the users it
wrote; each record's opt-out state is compared with the stored consent state
(`core/consent.py` `decide_from_salesforce`), the Iterable writes go through
`runtime/consent_writer.py`, and the new state is stored only after Iterable confirmed, before
the queue row is acknowledged (docs/design.md §7). A user whose consent write failed leaves the
synced records for the retry or dead-letter ones, so the change is not lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import ConsentRow, StoreAPI
from streamsync.config import Config
from streamsync.core.consent import (
    ITERABLE,
    SALESFORCE,
    Action,
    ConsentState,
    decide_from_salesforce,
    opted_out,
    stamp_ms,
)
from streamsync.logs import get_logger
from streamsync.models import MappedUser
from streamsync.runtime.consent_writer import ConsentWriter
from streamsync.runtime.writer import IterableWriter, WriteOutcome

if TYPE_CHECKING:
    from streamsync.runtime.pipeline import SyncOutcome

log = get_logger(__name__)


def _state(record: Mapping[str, Any], fields: Sequence[str], now_ms: int) -> ConsentState:
    """The record's opt-out state, dated by its SystemModstamp (LastModifiedDate, else now)."""
    at = stamp_ms(record.get("SystemModstamp")) or stamp_ms(record.get("LastModifiedDate"))
    return ConsentState(opted_out(record, fields), at or now_ms, SALESFORCE)


def _row(object_name: str, record_id: str, state: ConsentState) -> ConsentRow:
    return ConsentRow(object_name, record_id, state.opted_out, state.changed_at_ms, state.origin)


class ConsentSync:
    """Applies the Salesforce side of consent for one object's records after their write."""

    def __init__(self, *, config: Config, store: StoreAPI, iterable: IterableClient,
                 writer: IterableWriter, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.writer = ConsentWriter(config=config, iterable=iterable, writer=writer)

    async def apply(self, object_name: str, records: Mapping[str, Mapping[str, Any]],
                    users: Sequence[MappedUser], out: SyncOutcome) -> None:
        """Decide and write consent for `users` whose profile write did not fail (`records`
        by Salesforce id); settle their ids in `out` by the consent write's fate."""
        consent = self.config.objects[object_name].consent
        if consent is None:
            return
        live = [u for u in users if u.sf_id not in out.dead and u.sf_id not in out.retry
                and u.sf_id in records]
        if not live:
            return
        now_ms = int(self.clock() * 1000)
        stored = await self.store.consent_states(object_name, [u.sf_id for u in live])
        by_action: dict[Action, list[MappedUser]] = {Action.UNSUBSCRIBE: [],
                                                     Action.RESUBSCRIBE: []}
        states: dict[str, ConsentState] = {}
        for user in live:
            row = stored.get(user.sf_id)
            last = (None if row is None else
                    ConsentState(row.opted_out, row.changed_at_ms,
                                 SALESFORCE if row.origin == SALESFORCE else ITERABLE))
            decision = decide_from_salesforce(
                _state(records[user.sf_id], consent.opt_out_fields, now_ms), last,
                resubscribe=consent.resubscribe)
            if decision.record is not None:
                states[user.sf_id] = decision.record
            if decision.action is not Action.NONE:
                by_action[decision.action].append(user)
        written = WriteOutcome()
        for action, group in by_action.items():
            if group:
                written.extend(await self.writer.apply(
                    object_name, group, subscribe=action is Action.RESUBSCRIBE))
        failed = {u.sf_id for u, _ in written.retry} | {u.sf_id for u, _, _ in written.dead}
        rows = [_row(object_name, sf_id, state) for sf_id, state in states.items()
                if sf_id not in failed]
        await self.store.note_consent_states(rows, self.clock())
        if written.synced or failed:
            log.info("consent.to_iterable", object=object_name,
                     unsubscribed=len(by_action[Action.UNSUBSCRIBE]),
                     resubscribed=len(by_action[Action.RESUBSCRIBE]), failed=len(failed))
        _settle(out, written)


def _settle(out: SyncOutcome, written: WriteOutcome) -> None:
    """Users whose consent write failed leave the synced/skipped ids for retry or dead."""
    moved = {u.sf_id for u, _ in written.retry} | {u.sf_id for u, _, _ in written.dead}
    if not moved:
        out.requests += written.requests
        out.rate_limited += written.rate_limited
        return
    out.synced[:] = [i for i in out.synced if i not in moved]
    out.skipped[:] = [i for i in out.skipped if i not in moved]
    out.absorb(WriteOutcome(dead=written.dead, retry=written.retry,
                            requests=written.requests, rate_limited=written.rate_limited))
