"""Custom events from CDC (docs/events.md §4): a decide loop and a send loop over the store's
event rows; rows a crash left leased become due again when their lease ends."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.shared_ratelimit import SharedRateLimiter
from streamsync.adapters.store import StoreAPI
from streamsync.adapters.store.events import PendingEvent
from streamsync.config import Config
from streamsync.errors import RetriableError, describe_error
from streamsync.logs import get_logger
from streamsync.runtime.clients import budget_key
from streamsync.runtime.components import Components
from streamsync.runtime.event_decide import EventDecider, Prepared
from streamsync.runtime.event_handoff import Handoff, HandPlan
from streamsync.runtime.event_rules import CompiledRule
from streamsync.runtime.event_send import EventSender, send_and_settle
from streamsync.runtime.wakeup import QueueSignal

log = get_logger(__name__)

IDLE_RECHECK_S = 1.0
SENT_KEPT_S = 4 * 86_400.0  # past CDC's 72-hour retention: no replay brings a sent one back
PRUNE_EVERY_S = 3600.0


@dataclass
class EventStats:
    decided: int = 0
    fired: int = 0
    sent: int = 0
    dead: int = 0
    calls: int = 0


class EventWorker:
    """Runs the event rules of a service: decide new candidates, send ready events."""

    def __init__(self, *, config: Config, rules: Sequence[CompiledRule], store: StoreAPI,
                 salesforce: SalesforceClient, iterable: IterableClient,
                 signal: QueueSignal | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        conf = config.event_delivery
        self._conf = conf
        self._store = store
        self._clock = clock
        self.signal = signal or QueueSignal()
        self._sent_signal = QueueSignal()
        retry_s = config.queue.backoff_base_s
        # trackBulk's budget is shared by every process on the store (docs/design.md §10.1)
        self.limiter = SharedRateLimiter(conf.rate_limit_per_s, booker=store,
                                         budget_key=budget_key(config, "trackBulk"),
                                         kind="service", max_in_flight=conf.max_in_flight)
        self.decider = EventDecider(rules=rules, store=store, salesforce=salesforce,
                                    max_attempts=conf.max_attempts, retry_s=retry_s)
        self.sender = EventSender(iterable=iterable, limiter=self.limiter,
                                  max_events=conf.batch_max_events,
                                  max_bytes=config.iterable.batch_max_bytes,
                                  max_attempts=conf.max_attempts, retry_s=retry_s)
        self._retry_s = retry_s
        self._lease_s = config.queue.lease_s  # what a crash leaves leased is due after it
        self._ahead: collections.deque[tuple[list[PendingEvent], asyncio.Task[Prepared]]] = \
            collections.deque()  # leases taken, their reads in flight, oldest first
        self._deciding = asyncio.Lock()
        # Batches the decide step hands to the send loops, at most one per loop in memory.
        self._handoff = Handoff(conf.batch_max_events, conf.max_in_flight + 1)
        self._stored_ready = True  # ready rows may wait in the store: hand nothing past them
        self.stats = EventStats()

    async def decide_once(self) -> int:
        """Decide one lease of new candidates; how many rows it took.

        Up to `decide_ahead` further leases are prepared meanwhile (their Salesforce reads in
        flight), so the read of the next lease overlaps the decisions and settling of this one;
        leases are settled in the order they were taken."""
        async with self._deciding:  # one step at a time: the leases ahead are shared
            return await self._decide_step()

    async def _decide_step(self) -> int:
        await self._lease_ahead()
        if not self._ahead:
            return 0
        leased, preparing = self._ahead[0]
        began = time.monotonic()
        try:
            out = self.decider.finish(await self._prepared(preparing, len(leased)))
        except BaseException:
            await self.release_prepared()
            raise
        self._ahead.popleft()
        plan = HandPlan() if self._stored_ready else self._handoff.plan(leased, out.ready)
        held = plan.held()
        now = self._clock()
        try:
            await self._store.settle_decisions(
                leased[0].token, ready=out.ready, skipped=out.skipped, dead=out.dead,
                later=out.later, states=out.states, now=now, held=held,
                held_until=now + self._lease_s)
        except BaseException:
            self._handoff.undo(plan)
            raise
        self._handoff.hand(plan)
        self._stored_ready = self._stored_ready or len(held) < len(out.ready)
        self.stats.decided += len(leased)
        self.stats.fired += len(out.ready)
        self.stats.dead += len(out.dead)
        if out.ready:
            self._sent_signal.notify(len(out.ready))
        log.info("events.decided", candidates=len(leased), fired=len(out.ready),
                 dead=len(out.dead), waited_s=round(time.monotonic() - began, 3))
        return len(leased)

    async def _lease_ahead(self) -> None:
        """Lease new candidates and start their reads until `decide_ahead` leases wait
        behind the one being decided."""
        while len(self._ahead) <= self._conf.decide_ahead:
            leased = await self._store.lease_events("new", self._conf.batch_ids, self._lease_s,
                                                    self._clock())
            if not leased:
                return
            self._ahead.append((leased, asyncio.create_task(self.decider.prepare(leased))))

    async def _prepared(self, preparing: asyncio.Task[Prepared], size: int) -> Prepared:
        """The oldest lease's read. When it holds a trackBulk batch's worth or more (`size`
        candidates: a burst), candidates stored while it is in flight are leased and their
        reads started meanwhile: a burst's first lease holds only what ingest had stored when
        it began, and the second waited for its read. A trickle's small leases are not split
        further (a lease of one candidate ahead would hold back the next ones a cycle)."""
        while (size >= self._conf.batch_max_events and not preparing.done()
               and len(self._ahead) <= self._conf.decide_ahead):
            woken = asyncio.create_task(self.signal.wait(self.signal.generation, None))
            try:
                await asyncio.wait({preparing, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if not preparing.done():
                await self._lease_ahead()
        return await preparing

    async def release_prepared(self) -> None:
        """Give back every lease taken ahead and not settled (a failed read, shutdown), and
        the batches handed to the send loops and not taken yet."""
        while (batch := self._handoff.take()) is not None:
            await self._store.release_events(batch[0].token, self._clock())
        while self._ahead:
            leased, preparing = self._ahead.popleft()
            preparing.cancel()
            await asyncio.gather(preparing, return_exceptions=True)
            await self._store.release_events(leased[0].token, self._clock())

    async def send_once(self, limit: int | None = None) -> int:
        """Send one lease of ready events (at most `limit`, by default about a second of
        sends); how many rows it took."""
        handed = self._handoff.take()  # held for it already by the decide step
        if handed is not None:
            leased = handed
        else:
            # The limiter spaces the batches of one lease; max_in_flight overlap.
            limit = limit or self._conf.batch_max_events * max(1, int(self._conf.rate_limit_per_s))
            leased = await self._store.lease_events("ready", limit, self._lease_s,
                                                    self._clock())
            if len(leased) < limit:
                self._stored_ready = False  # none due left behind
            if not leased:
                return 0
        out = await send_and_settle(self._store, self.sender, leased, self._clock)
        self.stats.sent += len(out.sent)
        self.stats.dead += len(out.dead)
        self.stats.calls += out.calls
        if out.sent:
            log.info("events.sent", events=len(out.sent), calls=out.calls)
        return len(leased)

    async def _send_batch(self) -> int:
        """One trackBulk batch's worth: the run loop's send step (several run at once)."""
        return await self.send_once(self._conf.batch_max_events)

    async def drain(self, rounds: int = 100) -> None:
        """Decide and send until nothing is due (tests, the demo)."""
        for _ in range(rounds):
            if not (await self.decide_once() + await self.send_once()):
                return

    async def run(self, stop: asyncio.Event) -> None:
        """Both loops until `stop`; a transient Salesforce or store fault is waited out."""
        # One send loop per in-flight place and one more: each leases one batch as soon as
        # events are ready, so a batch waits for its send slot already cut, never for a
        # whole lease of sends to settle (docs/events.md §4).
        senders = [asyncio.create_task(self._loop(self._send_batch, self._sent_signal, stop,
                                                  "ready"), name=f"events.send{i}")
                   for i in range(self._conf.max_in_flight + 1)]
        loops = [asyncio.create_task(self._loop(self.decide_once, self.signal, stop, "new"),
                                     name="events.decide"), *senders,
                 asyncio.create_task(self._prune(stop), name="events.prune")]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.release_prepared()

    async def _loop(self, step: Callable[[], object], signal: QueueSignal,
                    stop: asyncio.Event, state: str) -> None:
        """Run `step` while it takes rows; else wait for `signal` or until the next row in
        `state`, the rows this loop takes, is due (rows of the other loop's state do not wake
        it: a decide loop that woke for due ready rows leased nothing, again and again)."""
        failures = 0
        while not stop.is_set():
            seen = signal.generation
            try:
                took = await step()  # type: ignore[misc]
                failures = 0
            except RetriableError as exc:
                failures += 1
                log.warning("events.step_retry", **describe_error(exc))
                await _sleep(stop, min(30.0, self._retry_s * 2 ** min(failures, 8)))
                continue
            if took:
                continue
            due = await self._store.next_event_due(state)
            wait = IDLE_RECHECK_S if due is None else max(0.0, min(IDLE_RECHECK_S,
                                                                    due - self._clock()))
            if wait > 0:
                await signal.wait(seen, wait)

    async def _prune(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(RetriableError):
                await self._store.prune_sent_events(self._clock() - SENT_KEPT_S)
            await _sleep(stop, PRUNE_EVERY_S)


class _HoldsEvents(Protocol):
    events: EventWorker | None


def event_tasks(holder: _HoldsEvents, parts: Components, signal: QueueSignal,
                stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """The service's event worker as a task (none without `[[events]]` rules); the worker is
    kept on `holder.events`."""
    if not parts.rules:
        return []
    holder.events = EventWorker(config=parts.config, rules=parts.rules, store=parts.store,
                                salesforce=parts.salesforce, iterable=parts.iterable,
                                signal=signal, clock=parts.clock)
    return [asyncio.create_task(holder.events.run(stop), name="events")]


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
