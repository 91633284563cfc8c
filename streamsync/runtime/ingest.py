"""CDC ingest: each message's record ids and replay id in one transaction; gaps reconciled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamsync.adapters.cometd import CometdSubscriber, ReplayId
from streamsync.adapters.store import PendingReconcile, StoreAPI
from streamsync.config import Config
from streamsync.core.event_rules import rule_triggers
from streamsync.core.events import channel_for, is_echo, parse_event
from streamsync.errors import MalformedEvent, Stopped, UnexpectedEntity, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.consent_echo import consent_of_event
from streamsync.runtime.consent_fast import ConsentFastPath
from streamsync.runtime.fence import Fence
from streamsync.runtime.generations import RecordGate
from streamsync.runtime.ingest_batch import MAX_GROUP, EventBatch
from streamsync.runtime.ingest_parts import (
    ChangeRelevance,
    EventCandidates,
    IngestStats,
    conversion_of,
    objects_to_reconcile,
    records_to_queue,
)
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler
from streamsync.runtime.reconcile_scheduler import ReconcileScheduler
from streamsync.runtime.replay_anchors import ReplayAnchors
from streamsync.runtime.wakeup import QueueSignal

log = get_logger(__name__)

Message = dict[str, Any]


def ingest_channels(config: Config) -> list[str]:
    """The CDC channels of the configured objects, then of the objects only event rules
    listen to, each once, in configuration order."""
    queued = config.cdc_objects()
    names = [config.channel(name) for name in queued]
    names += [channel_for(name) for name in config.event_objects() if name not in queued]
    return list(dict.fromkeys(names))


class ReplayCallbacks:
    """The two callbacks a CometdSubscriber needs, usable before the Ingest exists.

    Build the subscriber with `replay_from=cb.replay_from, on_replay_invalid=cb.on_replay_invalid`,
    then pass `callbacks=cb` to `Ingest`, which binds itself.
    """

    def __init__(self, store: StoreAPI) -> None:
        self._store = store
        self.ingest: Ingest | None = None

    async def replay_from(self, channel: str) -> ReplayId | None:
        """The stored replay id of `channel` (None: nothing stored); see `Ingest.replay_from`."""
        if self.ingest is not None:
            return await self.ingest.replay_from(channel)
        state = await self._store.get_replay(channel)
        return None if state is None else state.replay_id

    async def on_replay_invalid(self, channel: str, replay_id: ReplayId) -> None:
        if self.ingest is None:
            raise RuntimeError("ReplayCallbacks used before an Ingest was bound to them")
        await self.ingest.on_replay_invalid(channel, replay_id)


class Ingest:
    """Turns CDC messages into durable queue rows and replay ids (docs/design.md invariants 1, 6).

    Every message is stored before the next one is pulled: its record ids and the channel's
    replay id in one SQLite transaction. A malformed message still advances the replay id (when
    it can be read) so it never blocks the stream. `GAP_OVERFLOW`, wildcard ids and an expired
    replay id need a reconciliation; it is owed durably first (`ReconcileScheduler.owe`) and
    only then is the replay id moved past the event; the scheduler runs it in the background,
    at most `max_concurrent_reconciles` at once. What a crash left owed is resumed by `run`.

    Wiring: the subscriber is built first with a `ReplayCallbacks`'s `replay_from` and
    `on_replay_invalid`, which the Ingest binds to itself (see `Service` in runtime/app.py).
    """

    def __init__(
        self,
        *,
        config: Config,
        store: StoreAPI,
        subscriber: CometdSubscriber,
        reconciler: Reconciler,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        callbacks: ReplayCallbacks | None = None,
        max_concurrent_reconciles: int = 2,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        signal: QueueSignal | None = None,
        channels: list[str] | None = None,
        fence: Fence | None = None,
        consent_fast: ConsentFastPath | None = None,
        relevance: ChangeRelevance | None = None,
        gate: RecordGate | None = None,
    ) -> None:
        self._config = config
        self._gate = gate  # the pipeline's (runtime/generations.py): a conversion holds its Lead
        self._relevance = relevance  # None: every update is queued (runtime/ingest_parts.py)
        self._fast = consent_fast  # told of committed opt-outs (runtime/consent_fast.py)
        self._fence = fence
        self._store = store
        self._subscriber = subscriber
        self._metrics = metrics
        self._clock = clock
        self._queued = config.cdc_objects()  # fixed for the process (a reload cannot change it)
        self._objects = tuple(dict.fromkeys([*self._queued, *config.event_objects()]))
        suppress = config.salesforce.suppress_echoes
        self._echo_client = config.salesforce.client_name if suppress else None
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._stop = asyncio.Event()
        self._signal = signal or QueueSignal()  # told of each commit (wakes the flusher)
        self._batch = EventBatch(store, fence, self._signal)
        contact = config.objects.get("Contact")
        self._hands_over_converted = (
            "Lead" in config.objects and contact is not None and contact.writes_users
            and config.converted_precedence() == "contact")
        self.stats = IngestStats()
        self.reconciles = ReconcileScheduler(
            config=config, store=store, reconciler=reconciler, clock=clock,
            max_concurrent=max_concurrent_reconciles, retry_base_s=retry_base_s,
            retry_max_s=retry_max_s, stats=self.stats, channels=channels)
        self.anchors = ReplayAnchors(store=store, scheduler=self.reconciles, clock=clock,
                                     fence=fence)
        self._rules = EventCandidates(rule_triggers(config.events), self.anchors)
        if callbacks is not None:
            callbacks.ingest = self

    # ---- public API ------------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        """True while the CometD session has its channels confirmed (for /readyz)."""
        return self._subscriber.client_id is not None and bool(
            self._subscriber.subscribed_channels
        )

    async def replay_from(self, channel: str) -> ReplayId | None:
        """The subscriber's `replay_from` (see `ReplayAnchors.replay_from`)."""
        return await self.anchors.replay_from(channel)

    async def on_replay_invalid(self, channel: str, replay_id: ReplayId) -> None:
        """The subscriber's `on_replay_invalid` (see `ReplayAnchors.on_replay_invalid`)."""
        self.stats.replay_invalid += 1
        await self.anchors.on_replay_invalid(channel, replay_id)

    async def handle_message(self, message: Message) -> None:
        """One message: see `handle_messages`."""
        await self.handle_messages([message])

    async def handle_messages(self, messages: Sequence[Message]) -> None:
        """Parse each, schedule any reconciliation durably, then store the ids and the replay
        ids (runtime/ingest_batch.py: one transaction per run of a channel's messages).
        Store errors propagate (what was not committed is handled again)."""
        self._batch = EventBatch(self._store, self._fence, self._signal)
        for message in messages:
            await self._handle(message)
        await self._batch.commit(self._clock())

    async def _handle(self, message: Message) -> None:
        now = self._clock()
        channel = message.get("channel") if isinstance(message, dict) else None
        if isinstance(channel, str):
            self._metrics.events_received.labels(channel).inc()
        self.stats.events += 1
        try:
            event = parse_event(message, self._objects)
        except UnexpectedEntity as exc:
            self.stats.unexpected_entity += 1
            log.info("ingest.unexpected_entity", channel=str(exc.channel), entity=exc.entity,
                     replay_id=str(exc.replay_id))
            await self._skip(exc.channel, exc.replay_id, now)
            return
        except MalformedEvent as exc:
            await self._malformed(str(exc), exc.channel, exc.replay_id, now)
            return
        except Exception as exc:  # a parser bug must not block the stream either
            await self._malformed(f"{type(exc).__name__}: {exc}",
                                  channel if isinstance(channel, str) else None,
                                  _readable_replay_id(message), now)
            return
        self._metrics.last_event_ts.labels(event.channel).set(event.commit_timestamp_ms / 1000)
        await consent_of_event(self._config, self._store, self._fast, self._batch, event,
                               message, now)  # runtime/consent_echo.py
        if self._echo_client and is_echo(event, self._echo_client):
            self.stats.echoes += 1
            log.debug("ingest.echo_suppressed", channel=event.channel,
                      replay_id=event.replay_id, ids=len(event.record_ids))
            await self._batch.add(event.channel, event.replay_id, (), event.commit_timestamp_ms,
                                  now)
            return
        conversion = conversion_of(event, message) if self._hands_over_converted else None
        if conversion is not None:
            # Before the Contact's first sync can write it under another email: the pipeline
            # hands over too, but only when it reaches the Lead, which CDC sends after the
            # Contact's CREATE.
            # Holding the Lead: a call that read it before the conversion (a re-sync page, a
            # flush) writes before the Contact can, or finds its identity gone and skips it.
            hold = self._gate.hold("Lead", [conversion.source_id]) if self._gate is not None \
                else contextlib.nullcontext()
            async with hold:
                if await self._store.hand_over_identities([conversion], now):
                    log.info("ingest.converted_identity_handed_over",
                             lead_id=conversion.source_id, contact_id=conversion.target_id)
        items = records_to_queue(event, self._queued, self._relevance, self.stats,
                                 self._metrics)
        candidates = self._rules.of(event, message)
        to_reconcile = objects_to_reconcile(event, self._queued, self.stats)
        trigger = "gap_overflow" if event.is_overflow else "wildcard"
        for name in to_reconcile:
            await self.reconciles.owe(name, event.commit_timestamp_ms, trigger)
        await self._batch.add(event.channel, event.replay_id, items, event.commit_timestamp_ms,
                              now, candidates)  # wakes the flusher and the event worker
        self.stats.ids_queued += len(items)
        log.debug("ingest.event", channel=event.channel, replay_id=event.replay_id,
                  change=event.change_type, ids=len(items))
        for name in to_reconcile:
            self._batch.after(functools.partial(self.reconciles.start, name))

    async def pending_reconciles(self) -> dict[str, PendingReconcile]:
        """Reconciliations owed per object, as stored."""
        return await self.reconciles.pending()

    async def resume_pending(self) -> int:
        """Start the reconciliations a previous run left owed; returns how many."""
        return await self.reconciles.resume_pending()

    async def drain_reconciles(self) -> None:
        """Wait until every running reconciliation worker has finished."""
        await self.reconciles.drain()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume the subscriber until `stop` is set; resumes owed reconciliations first. On
        stop, the message in hand is stored, reconciliations are cancelled (their markers stay
        for the next start) and the subscriber is closed."""
        self._stop = stop
        await self.resume_pending()
        consumer = asyncio.create_task(self._consume(), name="ingest.consume")
        stopper = asyncio.create_task(stop.wait(), name="ingest.stop")
        try:
            done, _ = await asyncio.wait({consumer, stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                consumer.result()  # a FatalError ends the service
                log.info("ingest.subscriber_ended")
        finally:
            stopper.cancel()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel reconciliation workers (what they owe stays) and close the subscriber."""
        await self.reconciles.aclose()
        if self._fast is not None:
            await self._fast.aclose()
        await self._subscriber.close()

    # ---- message handling ------------------------------------------------------------------

    async def _skip(self, channel: str | None, replay_id: int | None, now: float) -> None:
        """Move the replay id past a message that carries nothing to queue."""
        if channel is not None and replay_id is not None:
            await self._batch.add(channel, replay_id, (), None, now)

    async def _malformed(self, detail: str, channel: str | None, replay_id: int | None,
                         now: float) -> None:
        self.stats.malformed += 1
        log.warning("ingest.malformed_event", channel=str(channel), replay_id=str(replay_id),
                    error=detail, advanced=replay_id is not None and channel is not None)
        await self._store.note_error(
            "ingest", f"malformed CDC message on {channel} (replay id {replay_id}): {detail}", now
        )
        await self._skip(channel, replay_id, now)

    async def _consume(self) -> None:
        messages = self._subscriber.messages()
        try:
            async for message in messages:
                group = [message, *self._subscriber.take_buffered(MAX_GROUP - 1)]
                handling = asyncio.ensure_future(self._store_until_done(group))
                try:
                    stored = await asyncio.shield(handling)
                except asyncio.CancelledError:
                    # Stopping: let the message in hand reach the store first.
                    await handling
                    raise
                if not stored:
                    return  # stopping with this message unstored: nothing after it may be
        finally:
            await messages.aclose()

    async def _store_until_done(self, group: list[Message]) -> bool:
        """handle_messages, retried with backoff while the store reports a transient fault;
        the same messages are retried so nothing after them is stored before them. False when
        stopping left them unstored (replayed from the stored id on the next start)."""
        policy = Policy(name="ingest_store", attempts=None, timeout_s=None,
                        wait_initial_s=self._retry_base_s, wait_max_s=self._retry_max_s,
                        on_retry=self._store_retry)
        try:
            await policy.call(lambda: self.handle_messages(group), self._stop)
        except Stopped:
            return False
        return True

    def _store_retry(self, error: Exception) -> None:
        self.stats.store_retries += 1
        log.warning("ingest.store_retry", attempt=self.stats.store_retries, **describe_error(error))


def _readable_replay_id(message: object) -> int | None:
    """The replay id of a message the parser could not handle, if it is plainly there."""
    if not isinstance(message, dict):
        return None
    data = message.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    value = event.get("replayId") if isinstance(event, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
