"""Iterable subscription events as streamsync reads them: webhook bodies and export lines,
their dedupe key, and what they ask of a Salesforce opt-out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamsync.core.consent_inbound import (
    ConsentGroups,
    InboundEvent,
    decide,
    export_time,
    opt_out_meant,
    parse_export_line,
    parse_iterable_time,
    parse_webhook,
)
from streamsync.errors import MalformedConsentEvent

# Iterable's documented sample body for docs@iterable.com (docs/iterable.md §11).
SAMPLE = {"email": "docs@iterable.com", "eventName": "emailUnSubscribe", "dataFields": {
    "campaignId": 1089024, "messageId": "bf008db8ab194b65816398c05bf30f99",
    "emailId": "c1089024:t1526112:docs@iterable.com", "workflowName": "My test workflow",
    "messageTypeIds": [], "locale": None, "templateId": 1526112, "emailSubject": "Upcoming events!",
    "labels": [], "unsubSource": "EmailLink", "createdAt": "2020-03-20 23:34:15 +00:00",
    "templateName": "My test template", "emailListIds": [], "messageTypeId": 31082,
    "experimentId": None, "channelIds": [27447], "campaignName": "My test campaign",
    "workflowId": 76786, "email": "docs@iterable.com", "channelId": 27447}}
MARKETING = ConsentGroups(channel_ids=frozenset({27447}))


def test_the_documented_sample_parses() -> None:
    event = parse_webhook(SAMPLE)
    assert event is not None and event.unsubscribe
    assert (event.email, event.user_id, event.source, event.channel_ids, event.message_type_ids,
            event.list_ids) == ("docs@iterable.com", None, "EmailLink", (27447,), (), ())
    assert event.created_ms == 1_584_747_255_000
    assert opt_out_meant(event, MARKETING) is True


def test_the_same_event_by_webhook_and_by_export_has_one_key() -> None:
    by_hook = parse_webhook(SAMPLE)
    line = {**SAMPLE["dataFields"], "createdAt": "2020-03-20T23:34:15+00:00"}  # type: ignore[dict-item]
    by_export = parse_export_line(line, "emailUnsubscribe")  # Airbyte's spelling
    assert by_hook is not None and by_export.key == by_hook.key
    other = parse_export_line({**line, "channelIds": [1]}, "emailUnSubscribe")
    later = parse_export_line({**line, "createdAt": "2020-03-20 23:34:16 +00:00"},
                              "emailUnSubscribe")
    upper = parse_export_line({**line, "email": "DOCS@iterable.com"}, "emailUnSubscribe")
    assert len({by_export.key, other.key, later.key}) == 3 and upper.key == by_export.key


@pytest.mark.parametrize(("raw", "ms"), [
    ("2026-12-05 07:00:01 +00:00", 1_796_454_001_000),
    ("2026-12-05T07:00:01Z", 1_796_454_001_000),
    ("2026-12-05 07:00:01.25 +00:00", 1_796_454_001_250),
    ("2026-12-05 08:00:01 +0100", 1_796_454_001_000),
    ("2026-12-05 07:00:01", 1_796_454_001_000),
])
def test_iterable_times(raw: str, ms: int) -> None:
    assert parse_iterable_time(raw) == ms


@pytest.mark.parametrize("raw", ["", "yesterday", "2026-13-05 07:00:01 +00:00", 17, None])
def test_bad_times_are_malformed_events(raw: object) -> None:
    with pytest.raises(MalformedConsentEvent):
        parse_iterable_time(raw)


def test_export_time_is_utc_seconds() -> None:
    assert export_time(1_796_454_001_999) == "2026-12-05 07:00:01"


def _event(name: str, at: int, **groups: tuple[int, ...]) -> InboundEvent:
    return InboundEvent(f"k{name}{at}{groups}", name, "a@x.co", None, at, "EmailLink", **groups)


def test_the_latest_meaningful_event_decides_and_an_unsubscribe_wins_a_tie() -> None:
    out = _event("emailUnSubscribe", 1000, channel_ids=(27447,))
    back = _event("emailSubscribe", 2000, channel_ids=(27447,))
    assert decide([out, back], MARKETING)["email:a@x.co"].opted_out is False
    assert decide([back, out], MARKETING)["email:a@x.co"].opted_out is False
    tie = replace(back, created_ms=1000)
    for order in ([out, tie], [tie, out]):
        decision = decide(order, MARKETING)["email:a@x.co"]
        assert decision.opted_out is True and decision.event is out


def test_events_about_other_groups_decide_nothing_and_hide_nothing() -> None:
    out = _event("emailUnSubscribe", 1000, channel_ids=(27447,))
    other_list = _event("emailSubscribe", 5000, list_ids=(9,))
    other_type = _event("emailUnSubscribe", 6000, message_type_ids=(31082,))
    assert decide([out, other_list, other_type], MARKETING)["email:a@x.co"].event is out
    assert decide([other_list, other_type], MARKETING) == {}


def test_a_subscribe_back_to_only_some_groups_is_not_consent_back() -> None:
    groups = ConsentGroups(channel_ids=frozenset({1}), list_ids=frozenset({7}))
    assert opt_out_meant(_event("emailUnSubscribe", 1, list_ids=(7,)), groups) is True
    assert opt_out_meant(_event("emailSubscribe", 1, list_ids=(7,)), groups) is None
    assert opt_out_meant(_event("emailSubscribe", 1, list_ids=(7, 8), channel_ids=(1,)),
                         groups) is False
    assert opt_out_meant(_event("emailSubscribe", 1, list_ids=(7,)), ConsentGroups()) is None


def test_an_event_of_a_user_id_only_project_is_keyed_by_user_id() -> None:
    event = parse_webhook({"userId": "u1", "eventName": "emailSubscribe", "dataFields": {
        "createdAt": "2026-12-05 07:00:01 +00:00", "signupSource": "WebForm"}})
    assert event is not None and event.user_key == "userId:u1" and event.source == "WebForm"


def test_what_an_event_asks_of_one_record() -> None:
    from streamsync.core.consent import ConsentState
    from streamsync.core.consent_inbound import (
        ALREADY,
        SALESFORCE_LATER,
        STORED_LATER,
        WRITE,
        Decision,
        inbound_step,
    )
    out = Decision(_event("emailUnSubscribe", 10_500, channel_ids=(27447,)), True)
    # Nothing stored, Salesforce opted in: write. Already opted out: nothing.
    assert inbound_step(out, False, 99_000, None) == WRITE
    assert inbound_step(out, True, 99_000, None) == ALREADY
    # A later opt-in stored (Salesforce's, or Iterable's own): the later change stands.
    assert inbound_step(out, False, None, ConsentState(False, 11_000, "salesforce")) == (
        STORED_LATER)
    # Within the same second (Iterable dates to the second): a tie, the opt-out wins it.
    assert inbound_step(out, False, None, ConsentState(False, 10_900, "salesforce")) == WRITE
    back = Decision(_event("emailSubscribe", 10_500, channel_ids=(27447,)), False)
    assert inbound_step(back, True, None, ConsentState(True, 10_100, "iterable")) == STORED_LATER
    assert inbound_step(back, True, None, ConsentState(True, 9_900, "iterable")) == WRITE
    # The echo of our own Iterable write (stored: opted out by Salesforce at 9 s) arrives
    # after the person opted in again in Salesforce at 12 s: Salesforce's change stands.
    stored = ConsentState(True, 9_000, "salesforce")
    assert inbound_step(out, False, 12_000, stored) == SALESFORCE_LATER
    assert inbound_step(out, False, 10_000, stored) == WRITE
