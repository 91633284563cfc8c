"""Event rules on CDC changes: which changes are candidates, their deterministic ids, and the
decision whether a candidate fires (docs/events.md §3)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from streamsync.core.condition import Condition, compile_condition
from streamsync.models import ChangeEvent
from streamsync.models import EventCandidate as Candidate

TRIGGERS: Final[Mapping[str, str]] = {"CREATE": "create", "UPDATE": "update",
                                      "DELETE": "delete", "UNDELETE": "undelete"}
FULL_CHANGES: Final = frozenset({"CREATE", "UNDELETE"})  # payload carries every non-null field
_ID_SAFE: Final = re.compile(r"[A-Za-z0-9-]{1,200}")


def event_id(rule: str, record_id: str, transaction_key: str) -> str:
    """`<rule>-<record id>-<transaction key>`: letters, digits and hyphens, as Iterable needs;
    a key with other characters is hashed (docs/events.md §1)."""
    key = transaction_key if _ID_SAFE.fullmatch(transaction_key) else \
        hashlib.blake2b(transaction_key.encode(), digest_size=16).hexdigest()
    return f"{rule}-{record_id}-{key}"


def _field_of(compound: str, component: str) -> str:
    """The field a compound component stands for: `Name.FirstName` → FirstName,
    `MailingAddress.Street` → MailingStreet."""
    if compound.endswith("Address"):
        return compound[: -len("Address")] + component
    return component


def flat_values(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A CDC payload's field values by lower-case field name (compound components flattened)."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "ChangeEventHeader":
            continue
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                out[_field_of(key, str(sub)).lower()] = sub_value
        else:
            out[key.lower()] = value
    return out


def changed_names(changed_fields: Iterable[str]) -> set[str]:
    """changedFields as lower-case field names (`Name.FirstName` → firstname)."""
    out = set()
    for path in changed_fields:
        compound, dot, component = path.partition(".")
        out.add((_field_of(compound, component) if dot else path).lower())
    return out


@dataclass(frozen=True)
class RuleTrigger:
    """The describe-free part of a rule: what ingest needs to pick candidates."""

    name: str
    object_name: str
    triggers: frozenset[str]
    changed_fields: frozenset[str]  # lower case; empty: any
    condition: Condition | None

    @property
    def condition_fields(self) -> frozenset[str]:
        return frozenset(f.lower() for f in self.condition.fields) if self.condition else \
            frozenset()

    def candidates(self, event: ChangeEvent, payload: Mapping[str, Any]) -> list[Candidate]:
        """The candidates of one parsed CDC event (GAP events carry no field data: none)."""
        kind = TRIGGERS.get(event.change_type)
        if kind is None or event.entity != self.object_name:
            return []
        changed = changed_names(event.changed_fields)
        fires = kind in self.triggers and (
            kind != "update" or not self.changed_fields or bool(changed & self.changed_fields))
        cond = self.condition_fields
        touches = bool(changed & cond) or event.change_type in FULL_CHANGES
        if not fires and not (cond and (touches or event.change_type == "DELETE")):
            return []
        flat = flat_values(payload)
        if event.change_type in FULL_CHANGES:
            values = {f: flat.get(f) for f in cond}
        else:
            values = {f: flat.get(f) for f in cond & changed}
        return [Candidate(event_id(self.name, sf_id, event.transaction_key), self.name,
                          event.entity, sf_id, event.change_type, event.commit_timestamp_ms,
                          fires, values, touches) for sf_id in event.record_ids]


def rule_triggers(rules: Sequence[Any]) -> list[RuleTrigger]:
    """RuleTriggers of config `EventRule`s (name, object, trigger, changed_fields, condition)."""
    return [RuleTrigger(r.name, r.object, frozenset(r.trigger),
                        frozenset(f.lower() for f in r.changed_fields),
                        compile_condition(r.condition) if r.condition else None) for r in rules]


@dataclass(frozen=True, slots=True)
class ConditionState:
    """The last known condition of a (rule, record): whether it held, and the values known."""

    met: bool
    values: dict[str, Any]
    commit_ts_ms: int


@dataclass(frozen=True, slots=True)
class Decision:
    fire: bool
    state: ConditionState | None  # to store; None: leave the stored state as it is


def missing_fields(trigger: RuleTrigger, candidate: Candidate,
                   state: ConditionState | None) -> frozenset[str]:
    """Condition fields whose value neither the change nor the stored state knows (read them)."""
    if trigger.condition is None or candidate.change_type in FULL_CHANGES:
        return frozenset()
    known = set(candidate.values) | (set(state.values) if state is not None else set())
    return trigger.condition_fields - known


def decide(trigger: RuleTrigger, candidate: Candidate, state: ConditionState | None,
           read: Mapping[str, Any]) -> Decision:
    """Whether a candidate fires, and the condition state after it.

    An update fires when the condition holds now and did not before: the stored state says
    what held before; with none stored, a change that set no condition field cannot have
    changed the outcome (so it does not fire), and one that set one is taken as the change
    that made it hold. `read`: current values (lower-case names) for
    condition fields neither the change nor the state knows.
    """
    if trigger.condition is None:
        return Decision(candidate.fires, None)
    if state is None and candidate.change_type == "UPDATE" and not candidate.touches_condition:
        # Nothing known before and this change cannot have changed the outcome; a read now
        # may already show later changes, so nothing is learned from it either.
        return Decision(False, None)
    in_order = state is None or candidate.commit_ts_ms >= state.commit_ts_ms
    known: dict[str, Any] = {}
    if candidate.change_type not in FULL_CHANGES:
        if state is not None:
            known.update(state.values)
        for name in trigger.condition_fields - set(known) - set(candidate.values):
            known[name] = read.get(name)
    known.update(candidate.values)
    met = trigger.condition.holds(known)
    if candidate.change_type in FULL_CHANGES:
        before = False
    elif state is not None and (in_order or state.met):
        # An older change than a state that holds (one a backfill judged on a later record
        # version, docs/events.md §7): that state already accounts for it.
        before = state.met
    else:
        before = False  # touched (an out-of-order change before an unmet state, first seen)
    fire = candidate.fires and met and (candidate.change_type == "DELETE" or not before)
    new_state = ConditionState(met, known, candidate.commit_ts_ms) if in_order else None
    return Decision(fire, new_state)
