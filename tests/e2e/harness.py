"""End-to-end harness: the service on both emulators, catch-up waits and the final-state check.

- `FinalStateChecker`: reads Salesforce through the product's `SalesforceClient` (queryAll, so
  deleted rows are seen), Iterable's profiles and the store's dead letters, and runs
  `core/verify.compare`; `assert_consistent` fails with a readable diff unless every profile
  matches, no profile is unexpected, and every dead letter is genuinely bad.
- `wait_drained(store, timeout_s)`: polls the queue until it is empty.
- `wait_caught_up(store, sf, config, timeout_s)`: ingest stored every retained event's replay
  id and the queue is empty.
- `InProcessService`: `Service(config).run(stop)` as a task, startable and stoppable.
- `backfill(config)`: the initial load every scenario starts from (Iterable starts empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.store import Store
from streamsync.adapters.store.types import DeadLetter
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping
from streamsync.core.verify import ObjectPolicy, VerifyReport, compare
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.iterable.validation import normalize_email as iterable_accepts_email
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import RecordError
from streamsync.models import DeadLetterReason
from streamsync.runtime.app import Components, Service, open_components
from streamsync.runtime.backfill import Backfill, BackfillOptions, BackfillSummary

SYNCED_OBJECTS: tuple[str, ...] = ("Lead", "Contact")
POLL_S = 0.05


class E2EError(AssertionError):
    """A final-state or timing expectation of an end-to-end test was not met."""


# ---------------------------------------------------------------- waiting on conditions


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
                   poll_s: float = POLL_S) -> None:
    """Poll `condition` until it is true; E2EError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return
        if time.monotonic() >= deadline:
            raise E2EError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        await asyncio.sleep(poll_s)


async def until(check: object, what: str, timeout_s: float = 45.0) -> float:
    """Poll an async or plain predicate until it is true; the seconds it took (AssertionError
    naming `what` after `timeout_s`)."""
    started = time.monotonic()
    while True:
        assert callable(check)
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def wait_drained(store: Store, timeout_s: float) -> None:
    """Wait until the queue holds no row (due, leased or in backoff)."""

    async def empty() -> bool:
        return (await store.queue_stats(time.time())).depth == 0

    await wait_for(empty, timeout_s, "the queue to drain")


def latest_replay_ids(sf: SalesforceEmulator) -> dict[str, int]:
    """Channel → replay id of the newest retained event published on it."""
    out: dict[str, int] = {}
    for event in sf.bus.events_after(0):
        out[event.channel] = max(out.get(event.channel, 0), event.replay_id)
    return out


async def ingest_caught_up(store: Store, sf: SalesforceEmulator, channels: Iterable[str]) -> bool:
    """True when, for each channel, the store holds a replay id at or past its newest retained
    event, or holds none (ingest then subscribed to new events only and reconciles the blind
    spot by SystemModstamp: the final-state check is what proves that part)."""
    latest = latest_replay_ids(sf)
    for channel in channels:
        want = latest.get(channel)
        if want is None:
            continue
        state = await store.get_replay(channel)
        if state is None or state.replay_id is None:
            continue
        try:
            stored = int(state.replay_id)
        except (TypeError, ValueError):
            return False
        if 0 <= stored < want:
            return False
    return True


def synced_channels(config: Config) -> list[str]:
    """The CDC channels the service subscribes to for this config."""
    return sorted({config.channel(name) for name in config.cdc_objects()})


async def wait_caught_up(store: Store, sf: SalesforceEmulator, config: Config,
                         timeout_s: float) -> None:
    """Wait until ingest stored every retained event and the queue is empty, twice in a row
    (a fan-out or reconciliation may enqueue more work right after the queue looked empty)."""
    channels = synced_channels(config)
    streak = [0]

    async def settled() -> bool:
        ok = (await ingest_caught_up(store, sf, channels)
              and (await store.queue_stats(time.time())).depth == 0)
        streak[0] = streak[0] + 1 if ok else 0
        return streak[0] >= 2

    await wait_for(settled, timeout_s, "ingest to catch up and the queue to drain", poll_s=0.1)


# ---------------------------------------------------------------- the final-state check


@dataclass
class FinalState:
    """One comparison of Iterable with Salesforce, plus the dead letters and their verdicts."""

    report: VerifyReport
    dead_letters: list[DeadLetter]
    records: dict[str, list[dict[str, Any]]]
    rejected_by_iterable: set[str] = field(default_factory=set)  # dead: Iterable refused email
    never_synced_deleted: set[str] = field(default_factory=set)  # deleted, never had a profile
    unjustified_dead: list[DeadLetter] = field(default_factory=list)
    real_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.real_mismatches and not self.report.missing_dead_letters
                and not self.report.unexpected_profiles and not self.unjustified_dead)

    @property
    def records_compared(self) -> int:
        return self.report.compared

    def explain(self, limit: int = 15) -> str:
        """A readable account of everything wrong."""
        lines = [f"summary: {self.report.summary()}"]
        lines += [f"mismatch: {m}" for m in self.real_mismatches[:limit]]
        lines += [f"unexpected profile: {k}" for k in sorted(self.report.unexpected_profiles)[
            :limit]]
        lines += [f"missing dead letter: {r}" for r in sorted(self.report.missing_dead_letters)[
            :limit]]
        lines += [f"unjustified dead letter: {d.object_name} {d.record_id} {d.reason} "
                  f"{d.last_error}" for d in self.unjustified_dead[:limit]]
        return "\n".join(lines)


def object_policies(config: Config, mappings: dict[str, CompiledMapping],
                    objects: Iterable[str] = SYNCED_OBJECTS) -> dict[str, ObjectPolicy]:
    """The verifier's view of each synced object's configuration."""
    out: dict[str, ObjectPolicy] = {}
    for name in objects:
        obj = config.objects[name]
        out[name] = ObjectPolicy(
            mappings[name], obj.delete_policy, obj.delete_flag_field,
            defers_when_converted=name == "Lead" and config.converted_precedence() == "contact",
        )
    return out


def _email_of(mapping: CompiledMapping, record: dict[str, Any]) -> str | None:
    """The record's mapped email (raw text) when the mapper accepts it, else None."""
    try:
        user = mapping.map(record)
    except RecordError:
        return None
    email = user.payload.get("email")
    return email if isinstance(email, str) else None


def judge(report: VerifyReport, dead: list[DeadLetter], records: dict[str, list[dict[str, Any]]],
          policies: dict[str, ObjectPolicy], never_synced: set[str] | None = None
          ) -> FinalState:
    """Sort dead letters into justified and not, and keep only the mismatches they don't explain.

    A dead letter is genuinely bad when Salesforce's current record cannot be mapped (the
    verifier expects it dead), or when its mapped email is one Iterable refuses (the mapper
    accepts it, Iterable's per-user failure list names it) — then its missing profile is no
    mismatch either. A deleted record with such an address expects no flagged profile: Iterable
    never held one (its dead letter may be gone: the delete was acknowledged as a no-op)."""
    by_id = {str(r.get("Id")): (name, r) for name, rows in records.items() for r in rows}
    state = FinalState(report, dead, records)
    for letter in dead:
        if letter.record_id in report.expected_dead_letters:
            continue
        found = by_id.get(letter.record_id)
        if found is not None and letter.reason == DeadLetterReason.INVALID_EMAIL:
            name, record = found
            email = _email_of(policies[name].mapping, record)
            if email is not None and iterable_accepts_email(email) is None:
                state.rejected_by_iterable.add(letter.record_id)
                continue
        if found is not None and found[1].get("IsDeleted"):
            # A deleted record that was bad when last seen has nothing left to sync.
            name, record = found
            try:
                policies[name].mapping.map(record)
            except RecordError:
                continue
        state.unjustified_dead.append(letter)
    for m in report.mismatches:
        if m.problem == "missing in Iterable" and m.record_id in state.rejected_by_iterable:
            continue
        found = by_id.get(m.record_id)
        deleted = bool(found and found[1].get("IsDeleted"))
        if m.problem == "missing in Iterable" and deleted and (
                iterable_accepts_email(m.key) is None or m.record_id in (never_synced or ())):
            # Deleted before any profile existed (Iterable refuses its address, or the service
            # never wrote it: no identity): there is no profile to flag.
            state.never_synced_deleted.add(m.record_id)
            continue
        state.real_mismatches.append(f"{m.object_name} {m.record_id} {m.key}: {m.problem} "
                                     f"{m.fields}{' (deleted in Salesforce)' if deleted else ''}")
    return state


class FinalStateChecker:
    """Reads both sides through one set of product clients; reusable across checks."""

    def __init__(self, config: Config, it: IterableEmulator, parts: Components,
                 objects: tuple[str, ...] = SYNCED_OBJECTS) -> None:
        self.config = config
        self.it = it
        self.parts = parts
        self.objects = objects
        self.policies = object_policies(config, parts.mappings, objects)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: Config, it: IterableEmulator,
                   objects: tuple[str, ...] = SYNCED_OBJECTS
                   ) -> AsyncIterator[FinalStateChecker]:
        async with open_components(config) as parts:
            yield cls(config, it, parts, objects)

    def histories(self, state: FinalState, limit: int = 6, entries: int = 8) -> str:
        """Iterable's write history of each problem key, for the failure message."""
        keys = sorted(state.report.unexpected_profiles)[:limit]
        keys += [m.key for m in state.report.mismatches
                 if m.record_id not in state.rejected_by_iterable][:limit]
        lines = [f"dead letter: {d.object_name} {d.record_id} {d.reason} {d.last_error}"
                 for d in state.dead_letters
                 if any(d.record_id == m.record_id for m in state.report.mismatches)]
        for key in keys:
            lines.append(f"history of {key}:")
            for h in self.it.state.history(key)[-entries:]:
                lines.append(f"  {h.get('endpoint')} #{h.get('request_no')} {h.get('outcome')} "
                             f"email={h.get('email')} data={h.get('dataFields')}")
        return "\n".join(lines)

    async def read_salesforce(self) -> dict[str, list[dict[str, Any]]]:
        """Every record of each synced object, deleted ones included (queryAll)."""
        records: dict[str, list[dict[str, Any]]] = {}
        for name in self.objects:
            extra = ("IsDeleted", *(("IsConverted",) if name == "Lead" else ()))
            fields = self.parts.mappings[name].soql_fields(*extra)
            soql = f"SELECT {', '.join(fields)} FROM {name}"
            records[name] = [r async for r in self.parts.salesforce.records(
                soql, include_deleted=True)]
        return records

    async def check(self) -> FinalState:
        """One comparison, now."""
        records = await self.read_salesforce()
        dead = await self.parts.store.dead_letters(limit=1_000_000)
        self.it.flush()
        report = compare(self.policies, records, self.it.state.snapshot(),
                         [d.record_id for d in dead])
        return judge(report, dead, records, self.policies, await self._never_synced(report))

    async def _never_synced(self, report: VerifyReport) -> set[str]:
        """Records missing in Iterable that the store holds no identity for."""
        missing: dict[str, list[str]] = {}
        for m in report.mismatches:
            if m.problem == "missing in Iterable":
                missing.setdefault(m.object_name, []).append(m.record_id)
        out: set[str] = set()
        for name, ids in missing.items():
            known = await self.parts.store.identities(name, ids)
            out.update(i for i in ids if i not in known)
        return out

    async def assert_consistent(self, timeout_s: float = 10.0) -> FinalState:
        """Check until consistent (writes may still be landing); E2EError with the diff if the
        deadline passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.check()
            if state.ok:
                return state
            if time.monotonic() >= deadline:
                raise E2EError("Iterable does not match Salesforce:\n" + state.explain()
                               + "\n" + self.histories(state))
            await asyncio.sleep(0.2)


async def verify_final_state(config: Config, it: IterableEmulator,
                             timeout_s: float = 10.0) -> FinalState:
    """Open product clients, assert the final state, close them."""
    async with FinalStateChecker.open(config, it) as checker:
        return await checker.assert_consistent(timeout_s)


# ---------------------------------------------------------------- running the service


async def backfill(config: Config, objects: tuple[str, ...] = SYNCED_OBJECTS) -> BackfillSummary:
    """The initial load: every Lead and Contact written to Iterable."""
    async with open_components(config) as parts:
        runner = Backfill(config=config, store=parts.store, salesforce=parts.salesforce,
                          pipeline=parts.pipeline, metrics=parts.metrics,
                          mappings=parts.mappings)
        return await runner.run(BackfillOptions(objects=objects))


class InProcessService:
    """`Service(config).run(stop)` as a task of this event loop."""

    def __init__(self, config: Config, *, shutdown_s: float = 10.0) -> None:
        self.config = config
        self.shutdown_s = shutdown_s
        self.service: Service | None = None
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def start(self, ready_timeout_s: float = 15.0) -> None:
        """Start and wait until ingest is subscribed."""
        if self.task is not None and not self.task.done():
            raise E2EError("the service is already running")
        self.stop_event = asyncio.Event()
        self.service = service = Service(self.config, shutdown_s=self.shutdown_s,
                                         metrics_refresh_s=0.5)
        self.task = task = asyncio.create_task(service.run(self.stop_event))

        async def subscribed() -> bool:
            if task.done():
                raise E2EError(f"the service exited early with {task.result()}")
            return service.ingest is not None and service.ingest.subscribed

        await wait_for(subscribed, ready_timeout_s, "the service to subscribe")

    async def stop(self, timeout_s: float = 20.0) -> int:
        """Set stop and return the exit code (E2EError if it outlives `timeout_s`)."""
        if self.task is None:
            raise E2EError("the service was never started")
        self.stop_event.set()
        try:
            return await asyncio.wait_for(self.task, timeout_s)
        except TimeoutError:
            raise E2EError(f"the service did not stop within {timeout_s} s") from None

    def assert_running(self) -> None:
        if self.task is None or self.task.done():
            code = None if self.task is None else self.task.result()
            raise E2EError(f"the service is not running (exit code {code})")

    async def abandon(self) -> None:
        """Teardown after a failure: stop if still running, swallowing its outcome."""
        if self.task is not None and not self.task.done():
            self.stop_event.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, 15.0)
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


def silent_update(sf: SalesforceEmulator, sobject: str, record_id: str,
                  values: dict[str, Any]) -> None:
    """Change a record without publishing its change event (what a GAP event stands for)."""
    bus = sf.state.bus
    sf.state.bus = None
    try:
        sf.state.update(sobject, record_id, values)
    finally:
        sf.state.bus = bus
