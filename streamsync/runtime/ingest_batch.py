"""Group commit for the ingest (docs/design.md §1.1): the messages a CometD connect already
delivered are stored together, so a burst of single-record events (a bulk insert sends one
CREATE event per record) costs one store transaction per run of a channel's messages instead
of one per message. The store still receives each channel's ids with the replay id of the last
message that carried them, in one transaction (invariant 1), and the flusher is woken and the
owed reconciliations started only after that commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamsync.adapters.store import QueueInput, StoreAPI
from streamsync.models import EventCandidate
from streamsync.runtime.fence import Fence, record_event
from streamsync.runtime.wakeup import QueueSignal

MAX_GROUP = 500
"""Messages stored in one transaction at most (all of them are in memory already)."""


@dataclass
class _Run:
    channel: str
    replay_id: str | int | None
    commit_ts_ms: int | None
    items: list[QueueInput] = field(default_factory=list)
    events: list[EventCandidate] = field(default_factory=list)


class EventBatch:
    """Collects `add`ed events; consecutive ones of a channel become one `record_event`
    (the last replay id, all their ids, the earliest commit time: a reconciliation from it
    overlaps, never misses); `commit` stores what is left and runs the `after` callbacks."""

    def __init__(self, store: StoreAPI, fence: Fence | None, signal: QueueSignal) -> None:
        self._store = store
        self._fence = fence
        self._signal = signal
        self._run: _Run | None = None
        self._after: list[Callable[[], None]] = []

    async def add(self, channel: str, replay_id: str | int | None, items: Sequence[QueueInput],
                  commit_ts_ms: int | None, now: float,
                  events: Sequence[EventCandidate] = ()) -> None:
        run = self._run
        if run is not None and run.channel != channel:
            self._signal.notify(await self._write(now))
            run = None
        if run is None:
            self._run = run = _Run(channel, replay_id, commit_ts_ms)
        run.replay_id = replay_id
        if commit_ts_ms is not None:
            run.commit_ts_ms = (commit_ts_ms if run.commit_ts_ms is None
                                else min(run.commit_ts_ms, commit_ts_ms))
        run.items.extend(items)
        run.events.extend(events)

    def after(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything added so far is committed."""
        self._after.append(callback)

    async def commit(self, now: float) -> None:
        written = await self._write(now)
        callbacks, self._after = self._after, []
        for callback in callbacks:  # before the flusher wakes: the consent fast path's
            callback()              # first reads go ahead of its leases (runtime/consent_fast.py)
        self._signal.notify(written)  # the flusher, the event worker (0 wakes nobody)

    async def _write(self, now: float) -> int:
        """Store the current run; how many rows it queued (0: there was none)."""
        run, self._run = self._run, None
        if run is None:
            return 0
        await record_event(self._store, self._fence, run.channel, run.replay_id, run.items,
                           run.commit_ts_ms, now, run.events)
        return len(run.items) + len(run.events)
