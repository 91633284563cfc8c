"""Which CDC changes are event candidates, their ids, and when a candidate fires."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamsync.core.event_rules import ConditionState, decide, event_id, rule_triggers
from streamsync.models import ChangeEvent

OPP = "0068W0000000001QAA"


def trigger(**kw: Any) -> Any:
    rule = SimpleNamespace(**{"name": "won", "object": "Opportunity", "trigger": ["update"],
                              "changed_fields": [], "condition": "StageName = 'Closed Won'",
                              **kw})
    return rule_triggers([rule])[0]


def change(change_type: str, changed: tuple[str, ...] = (), key: str = "tx-1",
           ts: int = 1000) -> ChangeEvent:
    return ChangeEvent(channel="/data/OpportunityChangeEvent", replay_id=1, entity="Opportunity",
                       change_type=change_type, record_ids=(OPP,), wildcard_prefixes=(),  # type: ignore[arg-type]
                       unexpected_ids=(), commit_timestamp_ms=ts, commit_number=1,
                       transaction_key=key, sequence_number=1, change_origin="",
                       commit_user="", changed_fields=changed)


def test_event_ids_are_deterministic_and_iterable_safe() -> None:
    assert event_id("won", OPP, "0002343d-9d90-e395") == f"won-{OPP}-0002343d-9d90-e395"
    odd = event_id("won", OPP, "key/with spaces")
    assert odd.startswith(f"won-{OPP}-") and odd.replace("-", "").isalnum()
    assert odd == event_id("won", OPP, "key/with spaces")


def test_changed_fields_pick_candidates_and_compound_components_are_named_by_field() -> None:
    rule = trigger(changed_fields=["StageName"], condition=None)
    assert rule.candidates(change("UPDATE", ("Amount",)), {"Amount": 1.0}) == []
    [cand] = rule.candidates(change("UPDATE", ("StageName",)), {"StageName": "Closed Won"})
    assert cand.fires and cand.event_id == f"won-{OPP}-tx-1"
    lead = rule_triggers([SimpleNamespace(name="n", object="Opportunity", trigger=["update"],
                                          changed_fields=["FirstName"], condition=None)])[0]
    [named] = lead.candidates(change("UPDATE", ("Name.FirstName",)),
                              {"Name": {"FirstName": "Ada"}})
    assert named.fires
    assert rule.candidates(change("GAP_UPDATE", ("StageName",)), {}) == []


def test_fires_on_the_transition_not_when_it_already_held() -> None:
    rule = trigger()
    [won] = rule.candidates(change("UPDATE", ("StageName",)), {"StageName": "Closed Won"})
    first = decide(rule, won, ConditionState(False, {"stagename": "Prospecting"}, 500), {})
    assert first.fire and first.state is not None and first.state.met
    [other] = rule.candidates(change("UPDATE", ("NextStep",), "tx-2", 2000), {"NextStep": "x"})
    assert not decide(rule, other, first.state, {"stagename": "Closed Won"}).fire
    [again] = rule.candidates(change("UPDATE", ("StageName",), "tx-3", 3000),
                              {"StageName": "Closed Won"})
    assert not decide(rule, again, first.state, {}).fire


def test_without_a_stored_state_an_untouched_condition_does_not_fire() -> None:
    rule = trigger()
    [other] = rule.candidates(change("UPDATE", ("NextStep",)), {"NextStep": "x"})
    outcome = decide(rule, other, None, {"stagename": "Closed Won"})
    assert not outcome.fire and outcome.state is None
    [won] = rule.candidates(change("UPDATE", ("StageName",)), {"StageName": "Closed Won"})
    assert decide(rule, won, None, {"stagename": "Prospecting"}).fire  # the change's value wins


def test_create_delete_and_undelete_triggers() -> None:
    rule = trigger(trigger=["create", "delete", "undelete"])
    [created] = rule.candidates(change("CREATE"), {"StageName": "Closed Won", "Name": "x"})
    assert decide(rule, created, None, {}).fire
    [lost] = rule.candidates(change("CREATE", key="tx-9"), {"Name": "no stage"})
    assert not decide(rule, lost, None, {}).fire  # absent from a CREATE payload: null
    [deleted] = rule.candidates(change("DELETE", key="tx-2", ts=2000), {})
    state = ConditionState(True, {"stagename": "Closed Won"}, 1000)
    assert decide(rule, deleted, state, {}).fire
    [undeleted] = rule.candidates(change("UNDELETE", key="tx-3", ts=3000),
                                  {"StageName": "Closed Won"})
    assert decide(rule, undeleted, state, {}).fire
    update_only = trigger()
    [c] = update_only.candidates(change("CREATE"), {"StageName": "Closed Won"})
    outcome = decide(update_only, c, None, {})
    assert not outcome.fire and outcome.state is not None and outcome.state.met  # state kept


def test_an_older_change_than_a_state_that_holds_does_not_fire() -> None:
    """A backfill judged a later record version and seeded the state (docs/events.md §7): a
    replay of the change that made the condition hold, committed before it, fires nothing;
    before a later state that does not hold, it still fires."""
    rule = trigger()
    [won] = rule.candidates(change("UPDATE", ("StageName",), ts=1000),
                            {"StageName": "Closed Won"})
    seeded = ConditionState(True, {"stagename": "Closed Won"}, 2000)
    outcome = decide(rule, won, seeded, {})
    assert not outcome.fire and outcome.state is None  # the later state stays
    lost = ConditionState(False, {"stagename": "Closed Lost"}, 2000)
    assert decide(rule, won, lost, {}).fire
