"""The writes a channel's leader fences with its leadership token (docs/design.md §1.8,
invariant 13): with no fence (a single ingest, tests) they are the plain store writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamsync.adapters.store import ChannelAnchor, QueueInput, StoreAPI
from streamsync.errors import LeadershipLost
from streamsync.models import EventCandidate

Fence = Callable[[str], int | None]
"""A channel's leadership token while this worker leads it, else None (runtime/leadership.py)."""


def token_of(fence: Fence, channel: str) -> int:
    """The channel's token; LeadershipLost when this worker no longer leads it."""
    token = fence(channel)
    if token is None:
        raise LeadershipLost(channel, None, None)
    return token


async def record_event(store: StoreAPI, fence: Fence | None, channel: str,
                       replay_id: str | int | None, items: Sequence[QueueInput],
                       commit_ts_ms: int | None, now: float,
                       events: Sequence[EventCandidate] = ()) -> None:
    """`Store.record_event` (with the change's event-rule candidates), fenced by the
    channel's token under leadership."""
    if fence is None:
        await store.record_event(channel, replay_id, items, commit_ts_ms, now, events)
    else:
        await store.fenced_record_event(channel, token_of(fence, channel), replay_id, items,
                                        commit_ts_ms, now, events)


async def set_channel_anchor(store: StoreAPI, fence: Fence | None, channel: str,
                             anchor: ChannelAnchor, now: float) -> None:
    """`Store.set_channel_anchor`, fenced by the channel's token under leadership."""
    if fence is None:
        await store.set_channel_anchor(channel, anchor, now)
    else:
        await store.fenced_set_channel_anchor(channel, token_of(fence, channel), anchor, now)


async def forget_replay(store: StoreAPI, fence: Fence | None, channel: str, now: float) -> None:
    """Clear the channel's stored replay id, fenced by its token under leadership."""
    if fence is None:
        await store.set_replay(channel, None, now)
    else:
        await store.fenced_set_replay(channel, token_of(fence, channel), None, now)
