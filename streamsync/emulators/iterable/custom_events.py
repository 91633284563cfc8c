"""Custom events (events/track, trackBulk): upsert by `id`, per-user history, field registry."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from .profiles import iterable_timestamp

MAX_ID_BYTES: Final = 512
_ID_RE: Final = re.compile(r"[A-Za-z0-9-]+\Z")
# createdAt values above this are milliseconds, below it seconds (clients send both).
MS_THRESHOLD: Final = 10**11


def id_problem(event_id: str) -> str | None:
    """Why `event_id` is not a valid event id (letters, digits, hyphens; <= 512 bytes)."""
    if not event_id or _ID_RE.match(event_id) is None:
        return f"Invalid event id {event_id!r}: only letters, digits and hyphens are allowed"
    if len(event_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"Invalid event id: longer than {MAX_ID_BYTES} bytes"
    return None


def created_ms(created_at: int | None, received_wall: float) -> int:
    """The event time in ms: createdAt read as ms above 10^11, else as seconds."""
    if created_at is None:
        return int(received_wall * 1000)
    return created_at if created_at > MS_THRESHOLD else created_at * 1000


def new_event_id() -> str:
    """An id like the ones Iterable generates (30 hex characters)."""
    return secrets.token_hex(15)


@dataclass
class CustomEvent:
    """One stored custom event; `writes` counts how often its id was tracked."""

    id: str
    event_name: str
    email: str | None
    user_id: str | None
    owner_iid: int
    created_at: int | None
    created_ms: int
    data: dict[str, Any]
    campaign_id: int | None
    template_id: int | None
    received_wall: float
    endpoint: str
    writes: int = 1

    def api_view(self) -> dict[str, Any]:
        """An element of GET /api/events/{email} `events`."""
        out: dict[str, Any] = {"_id": self.id, "eventType": "customEvent"}
        out["eventName"] = self.event_name
        if self.email is not None:
            out["email"] = self.email
        if self.user_id is not None:
            out["userId"] = self.user_id
        out["createdAt"] = iterable_timestamp(self.created_ms / 1000.0)
        out["dataFields"] = dict(self.data)
        if self.campaign_id is not None:
            out["campaignId"] = self.campaign_id
        if self.template_id is not None:
            out["templateId"] = self.template_id
        return out

    def record(self) -> dict[str, Any]:
        """A JSON-ready view for the control API, with the stored createdAt and write count."""
        return {
            **self.api_view(),
            "createdAtRaw": self.created_at,
            "createdAtMs": self.created_ms,
            "writes": self.writes,
            "endpoint": self.endpoint,
            "receivedWall": self.received_wall,
        }


class EventStore:
    """Custom events of one project by id, indexed by the user they belong to."""

    def __init__(self) -> None:
        self.by_id: dict[str, CustomEvent] = {}
        self.by_user: dict[int, dict[str, None]] = {}
        self.fields: set[tuple[str, str]] = set()
        self.saved_names: set[str] = set()
        self.allow_new_names = True

    def upsert(self, event: CustomEvent) -> bool:
        """Store an event; an existing id is replaced (not duplicated). True when replaced."""
        old = self.by_id.get(event.id)
        if old is not None:
            event.writes = old.writes + 1
            self.by_user.get(old.owner_iid, {}).pop(old.id, None)
        self.by_id[event.id] = event
        self.by_user.setdefault(event.owner_iid, {})[event.id] = None
        self.saved_names.add(event.event_name)
        return old is not None

    def name_allowed(self, name: str) -> bool:
        """Whether the project accepts events with this name."""
        return self.allow_new_names or name in self.saved_names

    def for_user(self, iid: int, limit: int | None = None) -> list[CustomEvent]:
        """A user's events, newest first."""
        ids = self.by_user.get(iid, {})
        events = sorted(
            (self.by_id[i] for i in ids), key=lambda e: (e.created_ms, e.received_wall),
            reverse=True,
        )
        return events if limit is None else events[:limit]

    def register_fields(
        self, name: str, data: dict[str, Any], create_new: bool
    ) -> tuple[list[str], list[str]]:
        """Note the event's fields: (created, filtered out); filtered fields leave `data`."""
        created: list[str] = []
        filtered: list[str] = []
        for key in list(data):
            if (name, key) in self.fields:
                continue
            if create_new:
                self.fields.add((name, key))
                created.append(key)
            else:
                filtered.append(key)
                del data[key]
        return created, filtered

    def clear(self) -> None:
        """Drop every event (field registry and saved names stay)."""
        self.by_id.clear()
        self.by_user.clear()
