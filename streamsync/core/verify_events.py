"""Final-state check of custom events (docs/events.md §5): every qualifying change produced
exactly one event (by its id) with the right name, user, time and data, and no event of a rule
exists that no qualifying change explains. A change CDC itself may have lost (committed after
the last event the service stored, then purged from the bus before it resubscribed: Salesforce
delivers it to no subscriber) may lack its event, but never has two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class QualifyingChange:
    """A change that must have fired a rule: found independently of the product, e.g. in
    Salesforce's change log (`value_transitions`)."""

    rule: str
    record_id: str
    transaction_key: str
    commit_ts_ms: int
    lost_to_cdc: bool = False  # in a window CDC could not replay: its event may be absent
    data_moved: bool = False  # a later change set a field its data reads: data not compared


@dataclass(frozen=True, slots=True)
class ExpectedEvent:
    """What Iterable must hold for one qualifying change; `data` None: not compared."""

    event_id: str
    event_name: str
    user: str  # the email (lower case) or userId it lands on
    created_at_s: int
    data: Mapping[str, Any] | None = None
    may_be_absent: bool = False  # its change may have been lost to CDC (QualifyingChange)


@dataclass(frozen=True, slots=True)
class EventMismatch:
    event_id: str
    problem: str  # missing, duplicate, unexpected, wrong_name, wrong_user, wrong_time, wrong_data
    detail: str = ""


@dataclass
class EventReport:
    expected: int = 0
    found: int = 0
    mismatches: list[EventMismatch] = field(default_factory=list)
    lost_to_cdc: int = 0  # expected events absent because CDC lost their change

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> dict[str, Any]:
        return {"events_expected": self.expected, "events_found": self.found,
                "event_mismatches": len(self.mismatches), "events_lost_to_cdc": self.lost_to_cdc}


def value_transitions(change_log: Iterable[Mapping[str, Any]], *, rule: str, entity: str,
                      field_name: str, value: Any) -> list[QualifyingChange]:
    """Changes whose CDC body sets `field_name` to `value` on an UPDATE: the moments a
    `changed_fields = [field]`, `condition = "field = value"` rule fires on (CDC lists a field
    only when its value changed, so each is a transition into the value)."""
    out: list[QualifyingChange] = []
    for body in change_log:
        header = body.get("ChangeEventHeader") or {}
        if header.get("entityName") != entity or header.get("changeType") != "UPDATE" \
                or field_name not in (header.get("changedFields") or ()) \
                or body.get(field_name) != value:
            continue
        out.extend(QualifyingChange(rule, str(rid), str(header.get("transactionKey", "")),
                                    int(header["commitTimestamp"]))
                   for rid in header.get("recordIds") or ())
    return out


def mark_lost_to_cdc(changes: Iterable[QualifyingChange],
                     windows: Iterable[tuple[str, int, int]],
                     entity_of: Mapping[str, str]) -> list[QualifyingChange]:
    """`changes` with those CDC may have lost marked `lost_to_cdc`: a window is (entity, from
    ms, to ms), the commit time of the last event the service had stored on the entity's
    channel to the moment it found that replay id gone; `entity_of` gives each rule's entity."""
    spans = list(windows)
    return [replace(c, lost_to_cdc=any(
        entity == entity_of.get(c.rule) and start <= c.commit_ts_ms <= end
        for entity, start, end in spans)) for c in changes]


def mark_data_moved(changes: Iterable[QualifyingChange],
                    change_log: Iterable[Mapping[str, Any]],
                    data_fields: Mapping[str, Iterable[str]]) -> list[QualifyingChange]:
    """`changes` marked `data_moved` where a later transaction's UPDATE of the record changed
    a field its rule's data reads (`data_fields`: rule -> the paths of its mapping). The event
    carries the record as the decide step read it, somewhere between the change and now, so
    Salesforce now cannot tell its data; its id, user and time are still compared."""
    later: dict[str, list[tuple[int, str, frozenset[str]]]] = {}
    for body in change_log:
        header = body.get("ChangeEventHeader") or {}
        if header.get("changeType") != "UPDATE":
            continue
        changed = frozenset(str(f).lower().partition(".")[0]
                            for f in header.get("changedFields") or ())
        for rid in header.get("recordIds") or ():
            later.setdefault(str(rid), []).append(
                (int(header.get("commitTimestamp", 0)), str(header.get("transactionKey", "")),
                 changed))
    fields = {rule: cdc_field_names(paths) for rule, paths in data_fields.items()}
    return [replace(c, data_moved=True) if any(
        ts >= c.commit_ts_ms and key != c.transaction_key and changed & fields.get(c.rule, set())
        for ts, key, changed in later.get(c.record_id, ())) else c for c in changes]


def cdc_field_names(paths: Iterable[str]) -> frozenset[str]:
    """The names (lower case) CDC gives the record's changes that can move these paths: the
    field itself, or a relationship path's lookup field (`Account.Name`: `AccountId`;
    `Partner__r.Name`: `Partner__c`)."""
    out: set[str] = set()
    for path in paths:
        head, dot, _ = path.lower().partition(".")
        if not dot:
            out.add(head)
        elif head.endswith("__r"):
            out.add(head[:-3] + "__c")
        else:
            out.add(head + "id")
    return frozenset(out)


def iterable_time(seconds: int) -> str:
    """An event's `createdAt` as Iterable's read endpoints show it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S +00:00")


def _user(event: Mapping[str, Any]) -> str:
    """The profile an event is on: the one it was read through (`readAs`), else its own."""
    if event.get("readAs"):
        return str(event["readAs"])
    email = event.get("email")
    return str(email).lower() if email else str(event.get("userId", ""))


def compare_events(expected: Iterable[ExpectedEvent], found: Iterable[Mapping[str, Any]],
                   names: Iterable[str]) -> EventReport:
    """Compare the events Iterable holds (read back per user, any order) with the expected
    ones; events whose name is not among `names` (no rule's) are ignored."""
    wanted = {e.event_id: e for e in expected}
    names = set(names)
    ours = [e for e in found if e.get("eventName") in names]
    report = EventReport(expected=len(wanted), found=len(ours))
    counts = Counter(str(e.get("_id")) for e in ours)
    by_id = {str(e.get("_id")): e for e in ours}
    for event_id, want in wanted.items():
        got = by_id.get(event_id)
        if got is None and want.may_be_absent:
            report.lost_to_cdc += 1
            continue
        if got is None:
            report.mismatches.append(EventMismatch(event_id, "missing"))
            continue
        if counts[event_id] > 1:
            report.mismatches.append(EventMismatch(event_id, "duplicate",
                                                   f"{counts[event_id]} copies"))
        report.mismatches.extend(_differences(want, got))
    report.mismatches.extend(EventMismatch(i, "unexpected", "no qualifying change")
                             for i in counts if i not in wanted)
    return report


def _differences(want: ExpectedEvent, got: Mapping[str, Any]) -> list[EventMismatch]:
    out: list[EventMismatch] = []
    if got.get("eventName") != want.event_name:
        out.append(EventMismatch(want.event_id, "wrong_name", str(got.get("eventName"))))
    if _user(got) != want.user:
        out.append(EventMismatch(want.event_id, "wrong_user", f"{_user(got)} != {want.user}"))
    if got.get("createdAt") != iterable_time(want.created_at_s):
        out.append(EventMismatch(want.event_id, "wrong_time",
                                 f"{got.get('createdAt')} != {iterable_time(want.created_at_s)}"))
    if want.data is not None and dict(got.get("dataFields") or {}) != dict(want.data):
        out.append(EventMismatch(want.event_id, "wrong_data",
                                 f"{got.get('dataFields')} != {dict(want.data)}"))
    return out
