"""The consent conflict rule and the Salesforce → Iterable decision (core/consent.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamsync.core.consent import (
    ITERABLE,
    SALESFORCE,
    Action,
    ConsentState,
    decide_from_salesforce,
    echo_opt_out,
    opted_out,
    prevails,
    settles_opt_out,
    supersedes,
    winner,
)


def sf(out: bool, at: int) -> ConsentState:
    return ConsentState(out, at, SALESFORCE)


def it(out: bool, at: int) -> ConsentState:
    return ConsentState(out, at, ITERABLE)


def test_the_later_change_wins_and_an_unsubscribe_wins_a_tie() -> None:
    assert prevails(sf(False, 2), it(True, 1))
    assert not prevails(sf(True, 1), it(False, 2))
    assert prevails(sf(True, 5), it(False, 5))       # tie: the opt-out wins
    assert not prevails(it(False, 5), sf(True, 5))
    assert not prevails(sf(True, 5), it(True, 5))    # equal: nothing wins
    assert prevails(sf(False, 0), None)
    assert winner(it(False, 5), sf(True, 5)) == sf(True, 5)
    assert winner(it(False, 6), sf(True, 5)) == it(False, 6)


@given(st.booleans(), st.integers(0, 10), st.booleans(), st.integers(0, 10))
def test_the_rule_picks_the_same_winner_whichever_side_asks(
        a_out: bool, a_at: int, b_out: bool, b_at: int) -> None:
    a, b = sf(a_out, a_at), it(b_out, b_at)
    if (a_out, a_at) != (b_out, b_at):
        assert winner(a, b) == winner(b, a)
        assert prevails(a, b) != prevails(b, a)


def test_a_side_supersedes_its_own_state_from_the_same_instant() -> None:
    assert supersedes(sf(False, 5), sf(True, 5))       # a re-read within the same second
    assert not supersedes(sf(False, 4), sf(True, 5))
    assert not supersedes(sf(True, 5), sf(True, 5))
    assert not supersedes(sf(False, 5), it(True, 5))   # across sides: the conflict rule
    assert supersedes(sf(True, 5), it(False, 5))


def test_first_sight_of_an_opt_out_unsubscribes_and_of_none_changes_nothing() -> None:
    d = decide_from_salesforce(sf(True, 10), None, resubscribe=False)
    assert (d.action, d.record) == (Action.UNSUBSCRIBE, sf(True, 10))
    d = decide_from_salesforce(sf(False, 10), None, resubscribe=True)
    assert (d.action, d.record) == (Action.NONE, None)


def test_a_state_already_stored_writes_nothing_as_an_echo_does() -> None:
    # Our own Salesforce write (from an Iterable unsubscribe) comes back as the same state.
    d = decide_from_salesforce(sf(True, 20), it(True, 10), resubscribe=True)
    assert (d.action, d.record) == (Action.NONE, None)


def test_an_older_salesforce_state_does_not_override_a_later_iterable_change() -> None:
    d = decide_from_salesforce(sf(True, 10), it(False, 11), resubscribe=False)
    assert d.action is Action.NONE and d.record is None


def test_resubscribe_only_when_configured_but_the_opt_in_is_remembered() -> None:
    d = decide_from_salesforce(sf(False, 10), sf(True, 10), resubscribe=True)
    assert (d.action, d.record) == (Action.RESUBSCRIBE, sf(False, 10))  # cleared at once
    last = sf(True, 10)
    d = decide_from_salesforce(sf(False, 20), last, resubscribe=False)
    assert (d.action, d.record) == (Action.NONE, sf(False, 20))
    d = decide_from_salesforce(sf(False, 20), last, resubscribe=True)
    assert (d.action, d.record) == (Action.RESUBSCRIBE, sf(False, 20))
    d = decide_from_salesforce(sf(True, 30), sf(False, 20), resubscribe=False)
    assert (d.action, d.record) == (Action.UNSUBSCRIBE, sf(True, 30))


def test_opted_out_is_any_true_field() -> None:
    fields = ("HasOptedOutOfEmail", "Do_Not_Market__c")
    assert opted_out({"HasOptedOutOfEmail": False, "Do_Not_Market__c": True}, fields)
    assert not opted_out({"HasOptedOutOfEmail": False, "Do_Not_Market__c": None}, fields)
    assert not opted_out({"HasOptedOutOfEmail": "true"}, fields)  # only a real boolean


def test_echo_payload_states_an_opt_out_only_when_it_is_certain() -> None:
    one = ("HasOptedOutOfEmail",)
    assert echo_opt_out({"HasOptedOutOfEmail": True}, ["HasOptedOutOfEmail"], one) is True
    assert echo_opt_out({"HasOptedOutOfEmail": False}, ["hasoptedoutofemail"], one) is False
    assert echo_opt_out({"FirstName": "A"}, ["FirstName"], one) is None
    two = ("HasOptedOutOfEmail", "DoNotCall")
    # one field cleared, the other not stated: still possibly opted out
    assert echo_opt_out({"HasOptedOutOfEmail": False}, ["HasOptedOutOfEmail"], two) is None
    assert echo_opt_out({"HasOptedOutOfEmail": True}, ["HasOptedOutOfEmail"], two) is True


def test_only_a_change_of_nothing_but_opt_out_fields_to_true_settles_an_opt_out() -> None:
    one = ("HasOptedOutOfEmail",)
    audit = ["LastModifiedDate", "LastModifiedById", "SystemModstamp"]
    out = {"HasOptedOutOfEmail": True, "LastModifiedDate": "2026-12-05T13:00:00.000Z"}
    assert settles_opt_out(out, ["HasOptedOutOfEmail", *audit], one)
    assert settles_opt_out(out, ["hasoptedoutofemail"], one)
    # an opt-in never goes fast (resubscribing is the pipeline's, from a read)
    assert not settles_opt_out({"HasOptedOutOfEmail": False}, ["HasOptedOutOfEmail"], one)
    # the same change moves the email (or any other field): the identity may not name it
    assert not settles_opt_out({**out, "Email": "new@example.com"},
                               ["HasOptedOutOfEmail", "Email"], one)
    assert not settles_opt_out({**out, "FirstName": "A"}, ["HasOptedOutOfEmail", "FirstName"],
                               one)
    assert not settles_opt_out({"LastModifiedDate": "x"}, ["LastModifiedDate"], one)
    assert not settles_opt_out({}, [], one)  # a gap event carries no fields
    two = ("HasOptedOutOfEmail", "Do_Not_Market__c")
    # one of two fields set: opted out whatever the other says
    assert settles_opt_out({"Do_Not_Market__c": True}, ["Do_Not_Market__c"], two)
    # one of two cleared: the other is unknown, nothing is settled
    assert not settles_opt_out({"Do_Not_Market__c": False}, ["Do_Not_Market__c"], two)
