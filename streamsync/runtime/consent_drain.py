"""The drain: stored Iterable consent events become Salesforce writes (docs/design.md §7).

Each pass takes the due events of the inbox (oldest first), and per consent object: keeps per
user the latest event that concerns the object's groups (core/consent_inbound.py `decide`),
finds the user's records (runtime/consent_match.py), asks `inbound_step` what each record
needs, writes the records that need it through sObject Collections (200 per call, allOrNone
false, our `Sforce-Call-Options` client name, retried in place by a `retry.Policy`), and stores
each written record's new consent state (only where it prevails) so the CDC echo of the write is
not sent back to Iterable. Every event is then settled with what became of it. A Salesforce
that cannot be reached leaves the pass's events pending for a later pass; a record Salesforce
refuses fails that event, visibly (`status`), without holding back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.salesforce import MAX_COLLECTION, SalesforceClient, SaveResult
from streamsync.adapters.store import ConsentRow, StoreAPI
from streamsync.core.consent import ITERABLE, SALESFORCE, ConsentState, opted_out, stamp_ms
from streamsync.core.consent_inbound import (
    ALREADY,
    WRITE,
    Decision,
    InboundEvent,
    decide,
    inbound_step,
)
from streamsync.errors import RetriableError, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.consent_match import Matches, Target, find_records
from streamsync.runtime.consent_rows import from_row

log = get_logger(__name__)

BATCH_EVENTS = 500  # a pass takes about a second with Salesforce's latency: fresh webhook
# events (taken first) never wait behind more than one pass of a backlog the poller found
RETRY_S = 5.0
RECHECK_S = 1.0  # events another worker's receiver stored, or a retry coming due
PRUNE_EVERY_S = 3600.0
SALESFORCE_CALLS = Policy(attempts=4, timeout_s=30.0, wait_initial_s=0.5, wait_max_s=5.0,
                          name="consent_to_salesforce")


@dataclass
class _Write:
    target: Target
    record_id: str
    decision: Decision


@dataclass
class PassResult:
    """One pass: events taken, records written, events settled as failed."""

    events: int = 0
    written: int = 0
    failed: int = 0
    notes: dict[str, list[str]] = field(default_factory=dict)  # event key -> what happened

    def note(self, key: str, text: str) -> None:
        self.notes.setdefault(key, []).append(text)


def _stored(row: ConsentRow | None) -> ConsentState | None:
    if row is None:
        return None
    return ConsentState(row.opted_out, row.changed_at_ms,
                        SALESFORCE if row.origin == SALESFORCE else ITERABLE)


def _state_row(target: Target, record_id: str, decision: Decision) -> ConsentRow:
    return ConsentRow(target.object_name, record_id, decision.opted_out,
                      decision.event.created_ms, ITERABLE)


class ConsentDrain:
    """Applies the inbox to Salesforce; `wake()` after events are stored."""

    def __init__(self, *, targets: Sequence[Target], store: StoreAPI, salesforce: SalesforceClient,
                 clock: Callable[[], float] = time.time, apply_subscribes: bool = True,
                 retain_s: float = 7 * 86_400.0, policy: Policy = SALESFORCE_CALLS) -> None:
        self.targets = list(targets)
        self.store = store
        self.salesforce = salesforce
        self.clock = clock
        self.apply_subscribes = apply_subscribes
        self.retain_s = retain_s
        self.policy = policy
        self.writes = 0
        self._wake = asyncio.Event()
        self._last_prune = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> PassResult:
        """One pass over the due events (at most BATCH_EVENTS)."""
        rows = await self.store.due_consent_events(self.clock(), BATCH_EVENTS)
        result = PassResult(events=len(rows))
        if not rows:
            return result
        events = [from_row(r) for r in rows]
        try:
            writes = await self._plan(events, result)
            await self._write(writes, result)
        except RetriableError as exc:
            log.warning("consent.to_salesforce_deferred", events=len(rows), **describe_error(exc))
            await self.store.retry_consent_events([e.key for e in events], str(exc),
                                                  self.clock(), RETRY_S)
            return PassResult(events=len(rows))
        await self._settle(events, result)
        return result

    async def _plan(self, events: list[InboundEvent], result: PassResult) -> list[_Write]:
        writes: list[_Write] = []
        for target in self.targets:
            decisions = {k: d for k, d in decide(events, target.groups).items()
                         if self.apply_subscribes or d.opted_out}
            if not decisions:
                continue
            matches = await self.policy.call(self._finder(target, decisions))
            ids = [i for found in matches.by_user.values() for i in found]
            stored = await self.store.consent_states(target.object_name, ids)
            agreed: list[ConsentRow] = []
            for user, decision in decisions.items():
                found = matches.by_user.get(user, {})
                if not found:
                    result.note(decision.event.key, f"no {target.object_name} holds this user")
                for sf_id, record in found.items():
                    step = inbound_step(decision, opted_out(record, target.fields),
                                        stamp_ms(record.get("SystemModstamp")),
                                        _stored(stored.get(sf_id)))
                    if step == WRITE:
                        writes.append(_Write(target, sf_id, decision))
                        continue
                    result.note(decision.event.key, f"{target.object_name} {sf_id}: {step}")
                    if step == ALREADY:
                        agreed.append(_state_row(target, sf_id, decision))
            # Both sides already agree: remembered (where later), so an older event of this
            # person still pending (a retry) cannot undo it.
            await self.store.note_consent_states(agreed, self.clock())
        return writes

    async def _write(self, writes: list[_Write], result: PassResult) -> None:
        for start in range(0, len(writes), MAX_COLLECTION):
            chunk = writes[start:start + MAX_COLLECTION]
            records: list[dict[str, Any]] = [
                {"attributes": {"type": w.target.object_name}, "id": w.record_id,
                 **dict.fromkeys(w.target.fields, w.decision.opted_out)} for w in chunk]
            saved = await self.policy.call(self._updater(records))
            states: list[ConsentRow] = []
            for w, res in zip(chunk, saved, strict=True):
                key, what = w.decision.event.key, f"{w.target.object_name} {w.record_id}"
                if res.success:
                    self.writes += 1
                    result.written += 1
                    result.note(key, f"{what}: opted {'out' if w.decision.opted_out else 'in'}")
                    states.append(_state_row(w.target, w.record_id, w.decision))
                else:
                    result.note(key, f"{what}: refused: {res.describe()}")
                    result.notes.setdefault("failed", []).append(key)
            await self.store.note_consent_states(states, self.clock())

    def _finder(self, target: Target, decisions: dict[str, Decision]
                ) -> Callable[[], Awaitable[Matches]]:
        async def find() -> Matches:
            return await find_records(self.salesforce, self.store, target, decisions)
        return find

    def _updater(self, records: list[dict[str, Any]]
                 ) -> Callable[[], Awaitable[list[SaveResult]]]:
        async def update() -> list[SaveResult]:
            return await self.salesforce.update_records(records)
        return update

    async def _settle(self, events: list[InboundEvent], result: PassResult) -> None:
        failed = set(result.notes.pop("failed", []))
        result.failed = len(failed)
        outcomes: dict[str, tuple[str, str]] = {}
        for event in events:
            notes = result.notes.get(event.key)
            text = "; ".join(notes) if notes else "superseded, or no configured group"
            outcomes[event.key] = ("failed" if event.key in failed else "done", text)
        await self.store.settle_consent_events(outcomes, self.clock())
        if result.written or failed:
            log.info("consent.to_salesforce", events=len(events), written=result.written,
                     failed=len(failed))
            for key in failed:
                await self.store.note_error("consent", f"Iterable event {key[:12]}: "
                                            f"{outcomes[key][1]}", self.clock())

    async def run(self, stop: asyncio.Event) -> None:
        """Drain until `stop`: at once when woken, else when the next event comes due."""
        while not stop.is_set():
            self._wake.clear()
            try:
                result = await self.drain_once()
                await self._prune()
                due = await self.store.next_consent_due()
            except RetriableError as exc:  # the store is unreachable (a database restart)
                log.warning("consent.store_unreachable", **describe_error(exc))
                result, due = PassResult(), self.clock() + RETRY_S
            if result.events >= BATCH_EVENTS:
                continue
            wait_s = RECHECK_S if due is None else min(RECHECK_S, max(0.0, due - self.clock()))
            if due is not None and wait_s == 0.0 and result.events:
                continue
            waiters = [asyncio.ensure_future(self._wake.wait()),
                       asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=max(wait_s, 0.05),
                               return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    async def _prune(self) -> None:
        now = self.clock()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            await self.store.prune_consent_events(now - self.retain_s)
