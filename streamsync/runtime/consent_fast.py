"""The consent fast path: a Salesforce opt-out unsubscribes in Iterable from its CDC event
alone, without waiting for the record's Salesforce read (docs/design.md §7).

Ingest (`runtime/ingest.py`) hands over an `OptOutHint` once the event's queue rows are
committed, before the flusher hears of them. The rows stay: the pipeline syncs the records as
always, so a crash, a refused call or a skipped hint loses nothing (the pipeline decides from
its read and the stored state). A pipeline call of a record the fast path has in hand waits
until it is done (`settled`) before it holds the record in the pipeline's `RecordGate`
(`runtime/generations.py`); the fast path holds records there without waiting and leaves one a
pipeline call holds already to that call. Whichever of the two holds a record first writes and
stores the state; the other finds it stored and writes nothing.

A record goes fast only when all of this holds (else the pipeline alone decides):
- the event is an UPDATE that set an opt-out field to true and changed nothing but opt-out and
  audit fields (`core/consent.py` `settles_opt_out`), not our own echo, of an object with no
  filter, and not a Contact under `converted_precedence = "lead"` (a Lead governs it);
- its queue row holds this change and no other (version 1, dated no later than the event) and
  it has no dead letter, and no reconciliation is owed for the object: every earlier change of
  the record has been synced, so its identity names the Iterable user it maps to now (after
  an email change half done it would name the old address: docs/design.md §7 says why that
  must not be unsubscribed);
- its identity is confirmed (Iterable accepted a write to it: a payload hash).
The store must not be shared: on PostgreSQL another worker's pipeline could sync the record
meanwhile, so there the pipeline alone writes consent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamsync.adapters.store import Identity, StoreAPI, UnsyncedChange
from streamsync.config import Config
from streamsync.core.consent import (
    SALESFORCE,
    Action,
    ConsentState,
    decide_from_salesforce,
    settles_opt_out,
    stamp_ms,
)
from streamsync.core.events import is_echo, payload_of
from streamsync.errors import describe_error
from streamsync.logs import get_logger
from streamsync.models import ChangeEvent, MappedUser
from streamsync.runtime.consent_out import ConsentSync, consent_row, stored_state
from streamsync.runtime.generations import RecordGate

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OptOutHint:
    """Records one committed CDC event opted out, and when (its LastModifiedDate, else its
    commit time, in epoch ms)."""

    object_name: str
    record_ids: tuple[str, ...]
    changed_at_ms: int
    commit_ts_ms: int


@dataclass
class FastPathStats:
    """Counters of one fast path (for tests and logs), in records."""

    hinted: int = 0
    unsubscribed: int = 0
    skipped: int = 0
    failed: int = 0


def opt_out_hint(config: Config, event: ChangeEvent, message: Mapping[str, Any]
                 ) -> OptOutHint | None:
    """The opt-out an event settles by itself, or None (see the module docstring)."""
    obj = config.objects.get(event.entity)
    if (obj is None or obj.consent is None or event.change_type != "UPDATE"
            or not event.record_ids or event.needs_reconcile or obj.safe_filter is not None):
        return None
    if event.entity == "Contact" and "Lead" in config.objects \
            and config.converted_precedence() == "lead":
        return None
    if is_echo(event, config.salesforce.client_name):
        return None  # our own write's echo (runtime/consent_echo.py)
    payload = payload_of(message)
    if payload is None or not settles_opt_out(
            payload, event.changed_fields, obj.consent.opt_out_fields):
        return None
    at = stamp_ms(payload.get("LastModifiedDate")) or event.commit_timestamp_ms
    return OptOutHint(event.entity, event.record_ids, at, event.commit_timestamp_ms)


class ConsentFastPath:
    """Sends the unsubscribes of submitted hints: everything pending at once, cut into calls
    of `consent.batch_max_users` through the pipeline's `ConsentWriter` (its rate limiter and
    retries), a few calls ahead of the limiter; hints that arrive meanwhile go next."""

    def __init__(self, consent: ConsentSync, gate: RecordGate,
                 config: Callable[[], Config] | None = None,
                 store: StoreAPI | None = None) -> None:
        """`consent`: the pipeline's (its store, clock and writer); `gate`: the pipeline's;
        `config`: the running config (the pipeline's, which a reload replaces: a `filter` may
        change, runtime/reload.py); `store`: another store than the pipeline's (tests)."""
        self._config = config or (lambda: consent.config)
        self.store = store or consent.store
        self.consent = consent
        self.gate = gate
        self.clock = consent.clock
        self.enabled = not self.store.shared
        self.stats = FastPathStats()
        self._pending: dict[str, dict[str, OptOutHint]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sending: dict[tuple[str, str], asyncio.Future[None]] = {}  # until handled

    @property
    def config(self) -> Config:
        return self._config()

    def hint(self, event: ChangeEvent, message: Mapping[str, Any]) -> OptOutHint | None:
        """The event's hint when the fast path is on and the event settles an opt-out."""
        return opt_out_hint(self.config, event, message) if self.enabled else None

    def submit(self, hint: OptOutHint) -> None:
        """Take a hint whose queue rows are committed (before the flusher hears of them, so
        its pipeline calls wait for the fast path: `settled`); starts the sender when idle."""
        self.stats.hinted += len(hint.record_ids)
        self._pending.setdefault(hint.object_name, {}).update(
            dict.fromkeys(hint.record_ids, hint))
        loop = asyncio.get_running_loop()
        for sf_id in hint.record_ids:
            self._sending.setdefault((hint.object_name, sf_id), loop.create_future())
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="consent-fast-path")

    async def settled(self, object_name: str, ids: list[str]) -> list[str]:
        """Until the fast path is done with these records; returns `ids`. A pipeline call
        waits so before it holds them, so the two never wait for each other."""
        waits = [f for i in ids if (f := self._sending.get((object_name, i))) is not None]
        if waits:
            await asyncio.wait(waits)
        return ids

    async def idle(self) -> None:
        """Until every submitted hint has been handled."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def aclose(self) -> None:
        """Drop what is pending and cancel what is under way (the queue rows carry it)."""
        self._pending = {}
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._sending):
            self._done(*key)

    def _done(self, object_name: str, *ids: str) -> None:
        for sf_id in ids:
            waiting = self._sending.pop((object_name, sf_id), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)

    async def _drain(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, {}
            size = self.config.consent.batch_max_users
            ahead = asyncio.Semaphore(self.config.consent.max_in_flight + 1)
            chunks = [(name, ids[i:i + size]) for name, hints in pending.items()
                      for ids in [list(hints)] for i in range(0, len(ids), size)]
            await asyncio.gather(*(self._send(name, {i: pending[name][i] for i in ids}, ahead)
                                   for name, ids in chunks))

    async def _send(self, object_name: str, hints: dict[str, OptOutHint],
                    ahead: asyncio.Semaphore) -> None:
        try:
            # The records first (a flush that reads them meanwhile waits), then a turn. A
            # record a pipeline call holds now is that call's: it read the record after this
            # change was queued, or leaves the change queued for its next read.
            async with self.gate.hold_free(object_name, hints) as free, ahead:
                self.stats.skipped += len(hints) - len(free)
                await self._send_held(object_name, {i: hints[i] for i in free})
        except Exception as exc:  # noqa: BLE001 - the pipeline's path still carries them
            self.stats.failed += len(hints)
            log.warning("consent.fast_path_failed", object=object_name, records=len(hints),
                        **describe_error(exc))
        finally:
            self._done(object_name, *hints)

    async def _send_held(self, object_name: str, hints: dict[str, OptOutHint]) -> None:
        users, states = await self._decide(object_name, hints)
        self.stats.skipped += len(hints) - len(users)
        if not users:
            return
        out = await self.consent.writer.apply(object_name, users, subscribe=False)
        synced = [u.sf_id for u in out.synced]
        await self.store.note_consent_states(
            [consent_row(object_name, i, states[i]) for i in synced], self.clock())
        self.stats.unsubscribed += len(synced)
        self.stats.failed += len(users) - len(synced)
        log.info("consent.fast_path", object=object_name, unsubscribed=len(synced),
                 failed=len(users) - len(synced), skipped=len(hints) - len(users))

    async def _decide(self, object_name: str, hints: Mapping[str, OptOutHint]
                      ) -> tuple[list[MappedUser], dict[str, ConsentState]]:
        """The users to unsubscribe now and the states to store once Iterable confirmed."""
        ids = list(hints)
        # Together: the store serves one statement at a time, and a burst keeps it busy.
        owed, changes, known, stored = await asyncio.gather(
            self.store.reconcile_pending(object_name),
            self.store.unsynced_changes(object_name, ids),
            self.store.identities(object_name, ids), self.store.consent_states(object_name, ids))
        if owed is not None:
            return [], {}
        fresh = [i for i, hint in hints.items() if _alone(changes.get(i), hint)]
        users: list[MappedUser] = []
        states: dict[str, ConsentState] = {}
        for sf_id in fresh:
            user = self._known_user(object_name, sf_id, known.get(sf_id))
            state = ConsentState(True, hints[sf_id].changed_at_ms, SALESFORCE)
            decision = decide_from_salesforce(state, stored_state(stored.get(sf_id)),
                                              resubscribe=False)
            if user is not None and decision.action is Action.UNSUBSCRIBE:
                users.append(user)
                states[sf_id] = state
        return users, states

    def _known_user(self, object_name: str, sf_id: str, ident: Identity | None
                    ) -> MappedUser | None:
        """The Iterable user a confirmed identity names, by the key the writer sends."""
        if ident is None or ident.payload_hash is None:
            return None
        email = ident.iterable_email.lower() if ident.iterable_email else None
        by_user_id = self.config.iterable.project_type == "userId" or email is None
        if (ident.iterable_user_id if by_user_id else email) is None:
            return None
        return MappedUser(object_name, sf_id, email, ident.iterable_user_id, {},
                          ident.payload_hash)


def _alone(change: UnsyncedChange | None, hint: OptOutHint) -> bool:
    """The record's queue row holds the hinted change and no other, and it is not
    dead-lettered (no row at all: the pipeline already synced it from a newer read)."""
    return (change is not None and not change.dead_lettered and change.version == 1
            and change.commit_ts_ms is not None and change.commit_ts_ms <= hint.commit_ts_ms)
