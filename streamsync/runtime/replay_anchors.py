"""Where each CDC channel's (re)subscription replays from, and the reconciliation owed when
it cannot replay what it missed (docs/design.md invariant 6)."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamsync.adapters.cometd import ALL_RETAINED_EVENTS, NEW_EVENTS, ReplayId
from streamsync.adapters.store import ChannelAnchor, StoreAPI
from streamsync.logs import get_logger
from streamsync.runtime.fence import Fence, forget_replay, set_channel_anchor
from streamsync.runtime.reconcile_scheduler import ReconcileScheduler

log = get_logger(__name__)


class ReplayAnchors:
    """The subscriber's `replay_from` and `on_replay_invalid`: reads and keeps each channel's
    `channel_anchor` and owes reconciliations through the `ReconcileScheduler`."""

    def __init__(self, *, store: StoreAPI, scheduler: ReconcileScheduler,
                 clock: Callable[[], float] = time.time,
                 fence: Fence | None = None) -> None:
        self._store = store
        self._fence = fence  # under leadership: the channel's token (runtime/leadership.py)
        self._scheduler = scheduler
        self._clock = clock
        self._anchored: set[str] = set()  # channels whose anchor is known to be `anchored`
        # Channels only event rules listen to, replayed from the oldest retained event: changes
        # committed before this time (ms) are older than their first subscription.
        self.event_floor_ms: dict[str, int] = {}

    async def replay_from(self, channel: str) -> ReplayId | None:
        """The stored replay id of `channel` (the subscriber's `replay_from`, called on every
        (re)subscribe).

        With no id stored the subscription starts at -1 (new events only), and nothing can
        replay what a later resubscribe missed (an unknown client, a silent subscription, a
        dropped session before the first event was stored). So the time of such a subscribe is
        kept in the store, and a resubscribe that still finds no id stored owes a
        reconciliation of the channel's objects from that time.

        The channel's very first subscription (nothing ever stored for it: a first run, or a
        store that was lost) must not skip what changed while nothing was running:
        - objects a backfill loaded owe a reconciliation from that backfill's start (not -2:
          replaying every retained event after a mass load would burn the daily event
          delivery allocation);
        - otherwise the subscription starts from the oldest retained event (-2, up to 72 h
          back) with a loud warning, kept for `status`; until an event of the channel is
          stored, resubscribes start there again. `streamsync replay --from new` before the
          first run opts out (only changes from then on)."""
        now = self._clock()
        state = await self._store.get_replay(channel)
        stored = None if state is None else state.replay_id
        if stored is not None and not _is_new_events(stored):
            if channel not in self._anchored:
                anchor = await self._store.channel_anchor(channel)
                if anchor is not None and anchor.state != "anchored":
                    await set_channel_anchor(self._store, self._fence, channel,
                                             ChannelAnchor("anchored"), now)
                self._anchored.add(channel)
            return stored
        anchor = await self._store.channel_anchor(channel)
        if anchor is not None and anchor.state == "earliest" and stored is None:
            return ALL_RETAINED_EVENTS  # no event stored yet since the first subscription
        if anchor is None and stored is None:
            if await self._first_subscription(channel, now):
                await set_channel_anchor(self._store, self._fence, channel,
                                         ChannelAnchor("earliest"), now)
                return ALL_RETAINED_EVENTS
        elif anchor is not None and anchor.state == "unanchored" and stored is None \
                and not self._scheduler.objects_for_channel(channel):
            # Only event rules listen: no reconciliation can bring back a change, so replay
            # what is retained and fire only what was committed since the first subscription.
            self.event_floor_ms[channel] = anchor.since_ms or 0
            log.info("ingest.events_resubscribe_from_earliest", channel=channel,
                     since_ms=str(anchor.since_ms))
            return ALL_RETAINED_EVENTS
        elif anchor is not None and anchor.state != "anchored":
            since_ms = anchor.since_ms if anchor.state == "unanchored" else None
            # Routine for a channel that had no events yet: the reconciliation covers it.
            log.info("ingest.resubscribe_without_replay_id", channel=channel,
                     since_ms=str(since_ms))
            await self._scheduler.owe_and_start(
                self._scheduler.objects_for_channel(channel), since_ms, "resubscribe")
        await self._unanchored(channel, now)
        return stored  # None or an explicit -1 (`replay --from new`): new events only

    async def _unanchored(self, channel: str, now: float) -> None:
        """The channel is subscribed from new events with no replay id to come back to."""
        await set_channel_anchor(self._store, self._fence, channel,
                                 ChannelAnchor("unanchored", int(now * 1000)), now)
        self._anchored.discard(channel)

    async def _first_subscription(self, channel: str, now: float) -> bool:
        """Objects a backfill loaded owe a reconciliation from its start; True when an object
        no backfill loaded needs the retained events replayed instead."""
        unloaded = await self._scheduler.owe_after_backfill(channel)
        if not unloaded:
            return False
        detail = (f"nothing is stored for {channel} (a first run, or a lost store) and no "
                  f"backfill has loaded {', '.join(unloaded)}: replaying every change event "
                  "Salesforce still retains (up to 72 h) so that no change made while "
                  "streamsync was not running is skipped. Older changes and records that "
                  "exist already need `streamsync backfill`; to start with new changes only, "
                  f"stop and run `streamsync replay --channel {channel} --from new`")
        log.warning("ingest.first_subscription_from_earliest", channel=channel,
                    objects=",".join(unloaded), detail=detail)
        await self._store.note_error("ingest", detail, now)
        return True

    async def on_replay_invalid(self, channel: str, replay_id: ReplayId) -> None:
        """The stored replay id fell out of retention: owe a reconciliation of the channel's
        objects from the last commit time stored for it (everything when none is known), then
        clear the stored id so the subscriber resumes with new events (-1)."""
        now = self._clock()
        state = await self._store.get_replay(channel)
        since_ms = None if state is None else state.last_commit_ts_ms
        objects = self._scheduler.objects_for_channel(channel)
        if since_ms is None:
            log.error("ingest.replay_invalid_full_reconcile", channel=channel,
                      replay_id=str(replay_id), objects=",".join(objects),
                      detail="no commit time stored for this channel: reconciling every record")
        else:
            log.warning("ingest.replay_invalid", channel=channel, replay_id=str(replay_id),
                        since_ms=since_ms, objects=",".join(objects))
        for name in objects:
            await self._scheduler.owe(name, since_ms, "replay_invalid")
        # The subscriber now resubscribes with -1: anchor a later resubscribe's catch-up here.
        await self._unanchored(channel, now)
        await forget_replay(self._store, self._fence, channel, now)
        await self._store.note_error(
            "ingest", f"replay id {replay_id} of {channel} is no longer retained; "
            f"reconciling {', '.join(objects)} from "
            f"{'the beginning' if since_ms is None else f'commit time {since_ms} ms'}", now)
        for name in objects:
            self._scheduler.start(name)


def _is_new_events(replay_id: ReplayId) -> bool:
    """True for a stored -1 (start with new events): no position to replay from."""
    if isinstance(replay_id, str):
        return replay_id.strip() == str(NEW_EVENTS)
    return replay_id == NEW_EVENTS
