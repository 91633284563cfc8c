"""The Iterable → Salesforce final-state check (core/verify_consent.py
`later_iterable_unsubscribes`) on hand-made histories."""

from __future__ import annotations

from streamsync.core.consent_inbound import ConsentGroups, InboundEvent
from streamsync.core.verify_consent import RecordConsent, later_iterable_unsubscribes

GROUPS = ConsentGroups(channel_ids=frozenset({1}))


def _ev(name: str, email: str, at_s: int, channel: int = 1) -> InboundEvent:
    return InboundEvent(f"{name}{email}{at_s}{channel}", name, email, None, at_s * 1000, "x",
                        (channel,))


def _rec(email: str, opted_out: bool, changed_s: int | None) -> RecordConsent:
    return RecordConsent("Lead", f"id-{email}", email, opted_out,
                         None if changed_s is None else changed_s * 1000 + 500)


def test_an_iterable_unsubscribe_not_in_salesforce_is_a_mismatch_unless_salesforce_is_later(
        ) -> None:
    events = [_ev("emailUnSubscribe", "a@x.co", 10), _ev("emailUnSubscribe", "b@x.co", 10),
              _ev("emailUnSubscribe", "c@x.co", 10), _ev("emailSubscribe", "c@x.co", 12),
              _ev("emailUnSubscribe", "d@x.co", 10, channel=2),
              _ev("emailUnSubscribe", "e@x.co", 10), _ev("emailUnSubscribe", "f@x.co", 10)]
    records = [_rec("a@x.co", False, None),       # never changed in Salesforce: mismatch
               _rec("B@x.co", False, 11),         # opted in again in Salesforce later: fine
               _rec("c@x.co", False, None),       # subscribed back in Iterable: fine
               _rec("d@x.co", False, None),       # another channel: fine
               _rec("e@x.co", False, 10),         # the same second: the unsubscribe wins
               _rec("f@x.co", True, 5)]           # opted out: fine
    found = later_iterable_unsubscribes(records, events, GROUPS)
    assert [(m.key, m.record_id) for m in found] == [("a@x.co", "id-a@x.co"),
                                                     ("e@x.co", "id-e@x.co")]
    assert found[0].problem.startswith("unsubscribed in Iterable")
