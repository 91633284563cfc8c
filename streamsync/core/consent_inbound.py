"""Iterable subscribe/unsubscribe events on their way to Salesforce: parsing a system-webhook
body or an export line into one `InboundEvent`, the key that makes a repeated delivery a
duplicate, and which events change a Salesforce opt-out (docs/iterable.md §14).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from streamsync.core.consent import ITERABLE, ConsentState, prevails
from streamsync.errors import MalformedConsentEvent

SUBSCRIBE: Final = "emailSubscribe"
UNSUBSCRIBE: Final = "emailUnSubscribe"
HOSTED_CLICK: Final = "hostedUnsubscribeClick"
CONSENT_EVENTS: Final = (UNSUBSCRIBE, SUBSCRIBE)
"""The event names (and export data types) that change a subscription."""
_NAMES: Final = {"emailunsubscribe": UNSUBSCRIBE, "emailsubscribe": SUBSCRIBE}
_TIME_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?\Z"
)
MAX_IDS: Final = 1000
MAX_TEXT: Final = 320


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One subscription change made in Iterable, as stored before it is applied.

    `channel_ids`, `message_type_ids` and `list_ids` are the groups this event changed;
    `source` is its unsubSource or signupSource; `created_ms` is Iterable's createdAt.
    """

    key: str
    event_name: str
    email: str | None
    user_id: str | None
    created_ms: int
    source: str | None
    channel_ids: tuple[int, ...] = ()
    message_type_ids: tuple[int, ...] = ()
    list_ids: tuple[int, ...] = ()

    @property
    def unsubscribe(self) -> bool:
        return self.event_name == UNSUBSCRIBE

    @property
    def user_key(self) -> str:
        """Who the event is about: `email:<address>` or, without an email, `userId:<id>`."""
        return f"email:{self.email}" if self.email is not None else f"userId:{self.user_id}"


def parse_iterable_time(raw: object) -> int:
    """`yyyy-MM-dd HH:mm:ss +00:00` (Iterable's webhook and export form; the ISO `T` form and
    a missing zone, read as UTC, too) as epoch milliseconds."""
    if not isinstance(raw, str):
        raise MalformedConsentEvent(f"createdAt must be a date string, got {raw!r:.60}")
    match = _TIME_RE.match(raw.strip())
    if match is None:
        raise MalformedConsentEvent(f"createdAt is not yyyy-MM-dd HH:mm:ss +00:00: {raw!r:.60}")
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    if ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError as exc:
        raise MalformedConsentEvent(f"createdAt is not a valid date: {raw!r:.60}") from exc
    millis = int((fraction or "0").ljust(3, "0")[:3])
    return int(moment.timestamp()) * 1000 + millis


def export_time(ms: int) -> str:
    """Epoch milliseconds as the export API's `startDateTime`/`endDateTime` (UTC, seconds)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ids(fields: Mapping[str, Any], name: str) -> tuple[int, ...]:
    raw = fields.get(name)
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_IDS or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise MalformedConsentEvent(f"{name} must be a list of integer ids")
    return tuple(sorted(set(raw)))


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str | int) or isinstance(raw, bool) or len(str(raw)) > MAX_TEXT:
        raise MalformedConsentEvent(f"{name} must be a string of at most {MAX_TEXT} characters")
    return str(raw)


def event_key(event_name: str, email: str | None, user_id: str | None, created_ms: int,
              source: str | None, groups: Sequence[tuple[int, ...]]) -> str:
    """The dedupe key: the same event delivered twice, or once by webhook and once by export,
    has the same key (Iterable sends no event id; createdAt has whole seconds)."""
    who = f"e:{email}" if email is not None else f"u:{user_id}"
    text = "|".join([event_name, who, str(created_ms // 1000), source or "",
                     *(",".join(map(str, g)) for g in groups)])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _event(event_name: str, fields: Mapping[str, Any], top: Mapping[str, Any]) -> InboundEvent:
    email = _text(fields, "email") or _text(top, "email")
    user_id = _text(fields, "userId") or _text(top, "userId")
    if email is not None:
        email = email.strip().lower()
    if email is None and user_id is None:
        raise MalformedConsentEvent("the event names no user (no email, no userId)")
    created_ms = parse_iterable_time(fields.get("createdAt"))
    source = _text(fields, "unsubSource" if event_name == UNSUBSCRIBE else "signupSource")
    groups = (_ids(fields, "channelIds"), _ids(fields, "messageTypeIds"),
              _ids(fields, "emailListIds") or _ids(fields, "userListIds"))
    key = event_key(event_name, email, user_id, created_ms, source, groups)
    return InboundEvent(key, event_name, email, user_id, created_ms, source, *groups)


def parse_webhook(body: object) -> InboundEvent | None:
    """A system-webhook body `{"email", "userId"?, "eventName", "dataFields"}` as an event;
    None for events that change no subscription (hostedUnsubscribeClick, sends, opens, ...:
    the unsubscribe a hosted-page click leads to comes as its own emailUnSubscribe)."""
    if not isinstance(body, dict):
        raise MalformedConsentEvent("the body must be a JSON object")
    name = body.get("eventName")
    if not isinstance(name, str) or not name:
        raise MalformedConsentEvent("eventName is missing")
    event_name = _NAMES.get(name.lower())
    if event_name is None:
        return None
    fields = body.get("dataFields")
    if not isinstance(fields, dict):
        raise MalformedConsentEvent("dataFields must be a JSON object")
    return _event(event_name, fields, body)


def parse_export_line(line: object, data_type: str) -> InboundEvent:
    """One line of `GET /api/export/data.json?dataTypeName=<data_type>` as an event."""
    event_name = _NAMES.get(data_type.lower())
    if event_name is None:
        raise ValueError(f"not a consent data type: {data_type!r}")
    if not isinstance(line, dict):
        raise MalformedConsentEvent("an export line must be a JSON object")
    return _event(event_name, line, {})


@dataclass(frozen=True, slots=True)
class ConsentGroups:
    """The Iterable groups one object's opt-out stands for (its consent configuration)."""

    channel_ids: frozenset[int] = frozenset()
    message_type_ids: frozenset[int] = frozenset()
    list_ids: frozenset[int] = frozenset()

    def touched_by(self, event: InboundEvent) -> bool:
        """Whether the event changed any of these groups."""
        return bool(self.channel_ids.intersection(event.channel_ids)
                    or self.message_type_ids.intersection(event.message_type_ids)
                    or self.list_ids.intersection(event.list_ids))

    def covered_by(self, event: InboundEvent) -> bool:
        """Whether the event changed every one of these groups (and there is at least one)."""
        return bool(self.channel_ids or self.message_type_ids or self.list_ids) and (
            self.channel_ids <= set(event.channel_ids)
            and self.message_type_ids <= set(event.message_type_ids)
            and self.list_ids <= set(event.list_ids))


def opt_out_meant(event: InboundEvent, groups: ConsentGroups) -> bool | None:
    """What the event means for a Salesforce opt-out of an object with these groups: True (an
    unsubscribe from any of them), False (a subscribe back to all of them: consent is not
    assumed back from a partial one), or None (nothing to change)."""
    if event.unsubscribe:
        return True if groups.touched_by(event) else None
    return False if groups.covered_by(event) else None


@dataclass(frozen=True, slots=True)
class Decision:
    """What one user's pending events ask of a Salesforce opt-out: the event that decides."""

    event: InboundEvent
    opted_out: bool


def decide(events: Iterable[InboundEvent], groups: ConsentGroups) -> dict[str, Decision]:
    """Per user, the latest event (by createdAt) that means something for these groups; at
    the same time an unsubscribe wins (the conflict rule of docs/design.md §7). Events
    about other groups decide nothing, so they never hide an earlier opt-out."""
    out: dict[str, Decision] = {}
    for event in events:
        meant = opt_out_meant(event, groups)
        if meant is None:
            continue
        held = out.get(event.user_key)
        if held is None or (event.created_ms, meant) > (held.event.created_ms, held.opted_out):
            out[event.user_key] = Decision(event, meant)
    return out


WRITE: Final = "write"
ALREADY: Final = "already"
STORED_LATER: Final = "stored_state_later"
SALESFORCE_LATER: Final = "salesforce_changed_later"


def inbound_step(decision: Decision, sf_opted_out: bool, sf_modstamp_ms: int | None,
                 stored: ConsentState | None) -> str:
    """What an Iterable event asks of one Salesforce record (docs/design.md §7):

    - `already`: the record states it already (an echo of our own Iterable write, a repeat);
    - `stored_state_later`: the stored consent state is later (the conflict rule: the later
      change wins, an opt-out wins a tie), so the other side's change stands;
    - `salesforce_changed_later`: the stored state already says what the event says, yet the
      record says otherwise and was modified after the event: Salesforce changed the opt-out
      after the state both sides last agreed on and after this event (e.g. the event is the
      echo of our own Iterable write and the person opted in again in Salesforce since);
    - `write`: set the record's opt-out fields to the event's state.
    """
    if sf_opted_out == decision.opted_out:
        return ALREADY
    # Iterable dates its events to the second: the other side's times are compared at that
    # grain too, so a change within the same second is a tie (an opt-out wins it).
    candidate = ConsentState(decision.opted_out, _second(decision.event.created_ms), ITERABLE)
    if stored is not None and not prevails(candidate, ConsentState(
            stored.opted_out, _second(stored.changed_at_ms), stored.origin)):
        return STORED_LATER
    if (stored is not None and stored.opted_out == candidate.opted_out
            and sf_modstamp_ms is not None
            and _second(sf_modstamp_ms) > candidate.changed_at_ms):
        return SALESFORCE_LATER
    return WRITE


def _second(ms: int) -> int:
    return ms // 1000 * 1000
