"""Consent: the conflict rule and the Salesforce → Iterable decision (docs/design.md §7).

Pure: no I/O, no clock. Both directions use `prevails` so a conflict resolves the same way
whichever side sees it first: the later change wins; at the same instant an opt-out wins
(consent is not assumed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from streamsync.core.sf_time import sf_datetime

Side = Literal["salesforce", "iterable"]
SALESFORCE: Side = "salesforce"
ITERABLE: Side = "iterable"


@dataclass(frozen=True, slots=True)
class ConsentState:
    """One person's consent as one side stated it: opted out or not, and when (epoch ms)."""

    opted_out: bool
    changed_at_ms: int
    origin: Side


def prevails(candidate: ConsentState, current: ConsentState | None) -> bool:
    """True when `candidate` wins over `current`: the later timestamp wins; on a tie an opt-out
    (unsubscribe) wins over an opt-in. Equal states never "win" (nothing to change)."""
    if current is None:
        return True
    if candidate.changed_at_ms != current.changed_at_ms:
        return candidate.changed_at_ms > current.changed_at_ms
    return candidate.opted_out and not current.opted_out


def supersedes(candidate: ConsentState, current: ConsentState | None) -> bool:
    """True when `candidate` should replace the stored `current`: a newer statement of the same
    side replaces it from the same instant on (a re-read states that side's current state;
    Salesforce stamps whole seconds), one of the other side only when it `prevails`."""
    if current is not None and candidate.origin == current.origin:
        return candidate.changed_at_ms >= current.changed_at_ms and candidate != current
    return prevails(candidate, current)


def winner(a: ConsentState, b: ConsentState) -> ConsentState:
    """The state that stands when `a` and `b` conflict (see `prevails`)."""
    return a if prevails(a, b) else b


class Action(StrEnum):
    """What the Salesforce state asks of Iterable."""

    NONE = "none"
    UNSUBSCRIBE = "unsubscribe"
    RESUBSCRIBE = "resubscribe"


@dataclass(frozen=True, slots=True)
class Decision:
    """The Iterable write to make (if any) and the consent state to store afterwards (None:
    keep what is stored)."""

    action: Action
    record: ConsentState | None


def decide_from_salesforce(sf: ConsentState, last: ConsentState | None, *,
                           resubscribe: bool) -> Decision:
    """What a Salesforce read of a record means for Iterable, given the last consent state
    stored for it (by either direction).

    - First sight: an opt-out unsubscribes (whatever Iterable had); no opt-out changes nothing
      and stores nothing (Iterable's own state stands).
    - Same state as stored: nothing (this is how the echo of our own Salesforce write, and a
      re-read of an unchanged record, end).
    - A different state that does not supersede the stored one (an Iterable change that is
      later, `prevails`): nothing; the other direction brings Salesforce in line.
    - Otherwise an opt-out unsubscribes; a cleared opt-out resubscribes only when configured,
      else it is only remembered (consent is not assumed back).
    """
    if last is None:
        if sf.opted_out:
            return Decision(Action.UNSUBSCRIBE, sf)
        return Decision(Action.NONE, None)
    if last.opted_out == sf.opted_out or not supersedes(sf, last):
        return Decision(Action.NONE, None)
    if sf.opted_out:
        return Decision(Action.UNSUBSCRIBE, sf)
    return Decision(Action.RESUBSCRIBE if resubscribe else Action.NONE, sf)


def opted_out(record: Mapping[str, Any], fields: Sequence[str]) -> bool:
    """True when any of the opt-out fields of a Salesforce record is true."""
    return any(record.get(name) is True for name in fields)


def echo_opt_out(payload: Mapping[str, Any], changed_fields: Sequence[str],
                 fields: Sequence[str]) -> bool | None:
    """The opt-out state a CDC payload states, or None when it says nothing certain: true when
    a changed opt-out field is true; false only when every opt-out field changed to false."""
    changed = {f.lower() for f in changed_fields}
    touched = [f for f in fields if f.lower() in changed]
    if not touched:
        return None
    if any(payload.get(f) is True for f in touched):
        return True
    if len(touched) == len(fields) and all(payload.get(f) is False for f in touched):
        return False
    return None


AUDIT_FIELDS = frozenset({"lastmodifieddate", "lastmodifiedbyid", "systemmodstamp",
                          "lastreferenceddate", "lastvieweddate"})
"""Fields Salesforce changes with every edit (lower case): they say nothing about a record."""


def settles_opt_out(payload: Mapping[str, Any], changed_fields: Sequence[str],
                    fields: Sequence[str]) -> bool:
    """True when a change event alone says the record is now opted out: it changed an opt-out
    field to true and nothing else but opt-out fields and `AUDIT_FIELDS`, so every other field
    (the email and userId sources among them) is as the record's last sync left it."""
    changed = {f.lower() for f in changed_fields}
    if changed - {f.lower() for f in fields} - AUDIT_FIELDS:
        return False
    return echo_opt_out(payload, changed_fields, fields) is True


def stamp_ms(value: Any) -> int | None:
    """A Salesforce dateTime (`2024-01-02T03:04:05.000+0000`, or with `Z`) as epoch ms."""
    moment = sf_datetime(value)
    return None if moment is None else int(moment.timestamp() * 1000)
