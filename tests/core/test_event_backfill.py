"""Which rules `backfill --events` judges from a record's current state, and their ids and
times (streamsync/core/event_backfill.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamsync.core.event_backfill import (
    backfill_event_id,
    moment_field,
    qualifies,
    unjudgeable,
    version_field,
)
from streamsync.core.event_rules import rule_triggers

OPP = "0068W0000000001QAA"


def trigger(**kw: Any) -> Any:
    rule = SimpleNamespace(**{"name": "won", "object": "Opportunity", "trigger": ["update"],
                              "changed_fields": [], "condition": "StageName = 'Closed Won'",
                              **kw})
    return rule_triggers([rule])[0]


def test_a_state_can_be_judged_a_change_or_a_delete_cannot() -> None:
    assert unjudgeable(trigger()) is None
    assert unjudgeable(trigger(trigger=["create"], condition=None)) is None
    assert unjudgeable(trigger(trigger=["undelete"])) is None
    assert "deleted record" in str(unjudgeable(trigger(trigger=["delete"])))
    assert "change without a condition" in str(unjudgeable(trigger(condition=None)))
    assert "change without a condition" in str(
        unjudgeable(trigger(trigger=["delete", "update"], condition=None)))


def test_created_at_and_the_version_in_the_id_follow_the_kind_of_rule() -> None:
    won, created = trigger(), trigger(trigger=["create"], condition=None)
    assert (moment_field(won), version_field(won)) == ("LastModifiedDate", "SystemModstamp")
    assert (moment_field(created), version_field(created)) == ("CreatedDate", "CreatedDate")
    created_if = trigger(trigger=["create"])
    assert (moment_field(created_if), version_field(created_if)) == ("CreatedDate",
                                                                     "SystemModstamp")
    assert backfill_event_id("won", OPP, 1700000000000) == f"won-{OPP}-bf-1700000000000"


def test_a_record_qualifies_when_live_and_meeting_the_condition_now() -> None:
    won = trigger()
    assert qualifies(won, {"stagename": "Closed Won", "isdeleted": False})
    assert not qualifies(won, {"stagename": "Closed Won", "isdeleted": True})
    assert not qualifies(won, {"stagename": "Prospecting"})
    assert qualifies(trigger(trigger=["create"], condition=None), {"stagename": None})
