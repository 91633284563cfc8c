"""`backfill --events`: which rules a record's current state can judge, and how a qualifying
record becomes an event (docs/events.md §7)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from streamsync.core.event_rules import RuleTrigger, event_id

STATE_TRIGGERS: Final = frozenset({"update", "undelete"})
VERSION_FIELD: Final = "SystemModstamp"
TIME_FIELDS: Final = ("CreatedDate", "LastModifiedDate", VERSION_FIELD)


def unjudgeable(trigger: RuleTrigger) -> str | None:
    """Why a record's current state cannot tell whether the rule fired (None: it can).

    A `create` rule fires for every record there is (its condition, if any, judged on the
    current values); a condition rule with an update or undelete trigger fires for records
    meeting the condition now. A delete leaves no current record, and an update without a
    condition is a change, not a state: nothing in a record says one happened."""
    if "create" in trigger.triggers:
        return None
    if trigger.condition is not None and trigger.triggers & STATE_TRIGGERS:
        return None
    if trigger.triggers == {"delete"}:
        return "its trigger is delete: a deleted record has no current state to judge"
    return ("its trigger is a change without a condition: a record's current state cannot "
            "tell that one happened")


def as_creation(trigger: RuleTrigger) -> bool:
    """Judged as the record's creation: no condition, or no update/undelete trigger."""
    return trigger.condition is None or not trigger.triggers & STATE_TRIGGERS


def moment_field(trigger: RuleTrigger) -> str:
    """The field `createdAt` comes from: CreatedDate for a rule judged as a creation, else
    LastModifiedDate (the latest change the record shows, at or after the change that made
    the condition hold)."""
    return "CreatedDate" if as_creation(trigger) else "LastModifiedDate"


def version_field(trigger: RuleTrigger) -> str:
    """The field naming the record state an event was judged on (part of its id): CreatedDate
    for a rule without a condition (a record is created once), else SystemModstamp."""
    return "CreatedDate" if trigger.condition is None else VERSION_FIELD


def backfill_event_id(rule: str, record_id: str, version_ms: int) -> str:
    """`<rule>-<record id>-bf-<version ms>`: deterministic for one record state, never a CDC
    transaction key (docs/events.md §7)."""
    return event_id(rule, record_id, f"bf-{version_ms}")


def condition_values(trigger: RuleTrigger, record: Mapping[str, Any]) -> dict[str, Any]:
    """The condition fields' current values by lower-case name (`record`: lower-case keys)."""
    return {name: record.get(name) for name in sorted(trigger.condition_fields)}


def qualifies(trigger: RuleTrigger, record: Mapping[str, Any]) -> bool:
    """Whether a live record meets the rule now (`record`: lower-case keys)."""
    if record.get("isdeleted"):
        return False
    return trigger.condition is None or trigger.condition.holds(
        condition_values(trigger, record))
