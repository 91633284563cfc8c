"""The CDC event bus: replay ids, retention by age and count, and wake-ups for long polls."""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

ALL_CHANGE_EVENTS = "/data/ChangeEvents"
GAP_CHANGE_TYPES = frozenset(
    {"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"}
)
_COMPACT_AFTER = 4096


def entity_channel(entity_name: str) -> str:
    """The per-object channel: Lead -> /data/LeadChangeEvent, Foo__c -> /data/Foo__ChangeEvent."""
    if entity_name.endswith("__c"):
        return f"/data/{entity_name[:-1]}ChangeEvent"
    return f"/data/{entity_name}ChangeEvent"


def schema_id(entity_name: str) -> str:
    """A stable 22-character schema id per change-event entity, shaped like Salesforce's."""
    digest = hashlib.md5(f"{entity_name}ChangeEvent".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class RetainedEvent:
    """One published event: its replay id, channel and the JSON of its CometD `data` member."""

    replay_id: int
    entity_name: str
    channel: str
    published_at: float
    data_json: bytes

    def message(self, channel: str) -> bytes:
        """The delivered CometD message for a subscription on `channel`, as JSON bytes."""
        return b'{"data":' + self.data_json + b',"channel":"' + channel.encode() + b'"}'


Listener = Callable[[RetainedEvent], None]


class EventBus:
    """CDC events with replay ids, retained by age and count."""

    def __init__(self, *, retention_s: float = 72 * 3600, retention_count: int = 500_000,
                 clock: Callable[[], float] = time.time) -> None:
        if retention_s <= 0:
            raise ValueError(f"retention_s must be positive, got {retention_s!r}")
        if retention_count < 1:
            raise ValueError(f"retention_count must be at least 1, got {retention_count!r}")
        self.retention_s = retention_s
        self.retention_count = retention_count
        self._clock = clock
        self._events: list[RetainedEvent] = []
        self._head = 0
        self._latest = 0
        self._commit_numbers = itertools.count(1_000_000_001)
        self._listeners: list[Listener] = []
        self.published_total = 0

    # ---------------------------------------------------------------- publishing

    def publish(self, entity_name: str, payload: dict[str, Any]) -> int:
        """payload = {"ChangeEventHeader": {...}, <changed fields>}. Assigns the next replay id,
        wraps it as the CometD data {"schema": ..., "payload": payload, "event": {"replayId": N}},
        makes it visible on /data/ChangeEvents and /data/<Entity>ChangeEvent (custom objects
        Foo__c -> /data/Foo__ChangeEvent) and wakes waiting long polls. Returns the replay id."""
        if not entity_name:
            raise ValueError("entity_name must not be empty")
        if not isinstance(payload.get("ChangeEventHeader"), dict):
            raise ValueError("payload must carry a ChangeEventHeader object")
        replay_id = self._latest + 1
        data = {"schema": schema_id(entity_name), "payload": payload,
                "event": {"replayId": replay_id}}
        event = RetainedEvent(replay_id, entity_name, entity_channel(entity_name), self._clock(),
                              orjson.dumps(data))
        self._latest = replay_id
        self._events.append(event)
        self.published_total += 1
        self._trim()
        for listener in tuple(self._listeners):
            listener(event)
        return replay_id

    def publish_gap(self, entity_name: str, change_type: str, record_ids: list[str],
                    commit_timestamp_ms: int) -> int:
        """Publish a GAP_* or GAP_OVERFLOW event: a header with no record fields."""
        if change_type not in GAP_CHANGE_TYPES:
            raise ValueError(
                f"change_type must be one of {sorted(GAP_CHANGE_TYPES)}, got {change_type!r}")
        header: dict[str, Any] = {
            "entityName": entity_name,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": "",
            "transactionKey": str(uuid.uuid4()),
            "sequenceNumber": 1,
            "commitTimestamp": int(commit_timestamp_ms),
            "commitNumber": next(self._commit_numbers),
            "commitUser": "",
            "changedFields": [],
        }
        return self.publish(entity_name, {"ChangeEventHeader": header})

    def purge(self) -> None:
        """Drop every retained event: stored replay ids fall out of retention."""
        self._events = []
        self._head = 0

    # ---------------------------------------------------------------- reading

    @property
    def latest_replay_id(self) -> int:
        """The replay id of the last published event (0 before the first one)."""
        return self._latest

    @property
    def oldest_replay_id(self) -> int | None:
        """The replay id of the oldest event still retained, or None if none is."""
        self._trim()
        if self._head >= len(self._events):
            return None
        return self._events[self._head].replay_id

    def __len__(self) -> int:
        self._trim()
        return len(self._events) - self._head

    def is_retained(self, replay_id: int) -> bool:
        """True if the event with this replay id is still within retention."""
        oldest = self.oldest_replay_id
        return oldest is not None and oldest <= replay_id <= self._latest

    def events_after(self, replay_id: int) -> Iterator[RetainedEvent]:
        """The retained events with a replay id greater than `replay_id`, oldest first."""
        self._trim()
        if self._head >= len(self._events):
            return iter(())
        oldest = self._events[self._head].replay_id
        start = self._head + max(0, replay_id + 1 - oldest)
        return itertools.islice(self._events, start, None)

    def has_events_after(self, replay_id: int) -> bool:
        """True if some retained event has a replay id greater than `replay_id`."""
        return replay_id < self._latest and len(self) > 0

    # ---------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` synchronously after every publish (from the loop thread)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ---------------------------------------------------------------- retention

    def _trim(self) -> None:
        events = self._events
        head = self._head
        excess = len(events) - head - self.retention_count
        if excess > 0:
            head += excess
        cutoff = self._clock() - self.retention_s
        while head < len(events) and events[head].published_at < cutoff:
            head += 1
        if head >= len(events):
            self._events = []
            head = 0
        elif head > _COMPACT_AFTER and head * 2 > len(events):
            del events[:head]
            head = 0
        self._head = head
