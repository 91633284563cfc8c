"""Salesforce → Iterable consent: after a record's profile is written, its opt-out state.

The pipeline (`runtime/pipeline.py`) hands over the records it just read and the users it
wrote; each record's opt-out state is compared with the stored consent state
(`core/consent.py` `decide_from_salesforce`), the Iterable writes go through
`runtime/consent_writer.py`, and the new state is stored only after Iterable confirmed, before
the queue row is acknowledged (docs/design.md §7). A user whose consent write failed leaves the
synced records for the retry or dead-letter ones, so the change is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import ConsentRow, Identity, StoreAPI
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


def stored_state(row: ConsentRow | None) -> ConsentState | None:
    """A stored consent row as the state `decide_from_salesforce` compares with."""
    if row is None:
        return None
    return ConsentState(row.opted_out, row.changed_at_ms,
                        SALESFORCE if row.origin == SALESFORCE else ITERABLE)


def consent_row(object_name: str, record_id: str, state: ConsentState) -> ConsentRow:
    return ConsentRow(object_name, record_id, state.opted_out, state.changed_at_ms, state.origin)


class ConsentSync:
    """Applies the Salesforce side of consent for one object's records after their write."""

    def __init__(self, *, config: Config, store: StoreAPI, iterable: IterableClient,
                 writer: IterableWriter, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.writer = ConsentWriter(config=config, iterable=iterable, writer=writer)

    def start_early(self, object_name: str, records: Mapping[str, Mapping[str, Any]],
                    users: Sequence[MappedUser], known: Mapping[str, Identity]
                    ) -> EarlyConsent | None:
        """Start the consent writes of the users Iterable already knows by exactly the email and
        userId they map to now (`known`: their stored identities) as a task, so they run while
        the same batch's profile write does. A new user, or one whose email or userId changes
        in this batch, waits for its profile write (the subscription call must reach the
        profile the write creates or moves). The profile write never touches subscription
        fields (`core/mapping.py` MANAGED_FIELDS), so the two calls cannot undo each other."""
        consent = self.config.objects[object_name].consent
        if consent is None:
            return None
        ready = [u for u in users if u.sf_id in records and _known_as(u, known.get(u.sf_id))]
        if not ready:
            return None
        task = asyncio.create_task(self._decide_and_write(object_name, records, ready))
        return EarlyConsent(task, {u.sf_id for u in ready})

    async def apply(self, object_name: str, records: Mapping[str, Mapping[str, Any]],
                    users: Sequence[MappedUser], out: SyncOutcome,
                    early: EarlyConsent | None = None) -> None:
        """Decide and write consent for `users` whose profile write did not fail (`records`
        by Salesforce id), the ones `early` already started aside; store each state Iterable
        confirmed, then settle the ids in `out` by the consent write's fate."""
        consent = self.config.objects[object_name].consent
        if consent is None:
            return
        started = early.users if early is not None else set()
        live = [u for u in users if u.sf_id not in out.dead and u.sf_id not in out.retry
                and u.sf_id in records and u.sf_id not in started]
        late = (await self._decide_and_write(object_name, records, live) if live
                else _Written())
        done = await early.result() if early is not None else _Written()
        # An early user whose profile write failed goes back by that failure; its consent
        # state is still stored when Iterable confirmed it (a retry then finds nothing to do).
        profile_failed = set(out.dead) | set(out.retry)
        done.outcome.retry[:] = [(u, e) for u, e in done.outcome.retry
                                 if u.sf_id not in profile_failed]
        done.outcome.dead[:] = [d for d in done.outcome.dead if d[0].sf_id not in profile_failed]
        states = {**late.states, **done.states}
        written = WriteOutcome()
        written.extend(late.outcome)
        written.extend(done.outcome)
        failed = written.failed_ids() | done.failed
        rows = [consent_row(object_name, sf_id, state) for sf_id, state in states.items()
                if sf_id not in failed]
        await self.store.note_consent_states(rows, self.clock())
        unsubscribed = late.unsubscribed + done.unsubscribed
        resubscribed = late.resubscribed + done.resubscribed
        if written.synced or failed:
            log.info("consent.to_iterable", object=object_name, unsubscribed=unsubscribed,
                     resubscribed=resubscribed, failed=len(failed), early=len(started))
        _settle(out, written)

    async def _decide_and_write(self, object_name: str,
                                records: Mapping[str, Mapping[str, Any]],
                                users: Sequence[MappedUser]) -> _Written:
        """Each user's decision against the stored state, and the Iterable writes it takes."""
        consent = self.config.objects[object_name].consent
        assert consent is not None
        now_ms = int(self.clock() * 1000)
        stored = await self.store.consent_states(object_name, [u.sf_id for u in users])
        by_action: dict[Action, list[MappedUser]] = {Action.UNSUBSCRIBE: [],
                                                     Action.RESUBSCRIBE: []}
        done = _Written()
        for user in users:
            decision = decide_from_salesforce(
                _state(records[user.sf_id], consent.opt_out_fields, now_ms),
                stored_state(stored.get(user.sf_id)), resubscribe=consent.resubscribe)
            if decision.record is not None:
                done.states[user.sf_id] = decision.record
            if decision.action is not Action.NONE:
                by_action[decision.action].append(user)
        for action, group in by_action.items():
            if group:
                done.outcome.extend(await self.writer.apply(
                    object_name, group, subscribe=action is Action.RESUBSCRIBE))
        done.failed = done.outcome.failed_ids()
        done.unsubscribed = len(by_action[Action.UNSUBSCRIBE])
        done.resubscribed = len(by_action[Action.RESUBSCRIBE])
        return done


@dataclass
class _Written:
    """One group of users' consent: the states to store, the writes' outcome, counts."""

    states: dict[str, ConsentState] = field(default_factory=dict)
    outcome: WriteOutcome = field(default_factory=WriteOutcome)
    failed: set[str] = field(default_factory=set)
    unsubscribed: int = 0
    resubscribed: int = 0


class EarlyConsent:
    """Consent writes started before their batch's profile write returned
    (`ConsentSync.start_early`); `ConsentSync.apply` collects them, or `cancel` drops them
    when the batch fails (nothing is stored: the record's next sync decides again)."""

    def __init__(self, task: asyncio.Task[_Written], users: set[str]) -> None:
        self.task = task
        self.users = users

    async def result(self) -> _Written:
        return await self.task

    async def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _known_as(user: MappedUser, ident: Identity | None) -> bool:
    """Iterable knows `user` by the identifiers it maps to now (its last confirmed write)."""
    if ident is None or ident.payload_hash is None:
        return False
    email = ident.iterable_email.lower() if ident.iterable_email is not None else None
    return email == user.email and ident.iterable_user_id == user.user_id


def _settle(out: SyncOutcome, written: WriteOutcome) -> None:
    """Users whose consent write failed leave the synced/skipped ids for retry or dead."""
    moved = written.failed_ids()
    if not moved:
        out.requests += written.requests
        out.rate_limited += written.rate_limited
        return
    out.synced[:] = [i for i in out.synced if i not in moved]
    out.skipped[:] = [i for i in out.skipped if i not in moved]
    out.absorb(WriteOutcome(dead=written.dead, retry=written.retry,
                            requests=written.requests, rate_limited=written.rate_limited))
