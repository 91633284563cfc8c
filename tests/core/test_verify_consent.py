"""The consent final-state check (core/verify_consent.py): no opted-out record's Iterable user
still receives a configured channel, message type or list."""

from __future__ import annotations

from typing import Any

from streamsync.core.ids import to_18
from streamsync.core.verify_consent import ConsentPolicy, check_consent, still_received
from tests.core.test_verify import LEAD

POLICY = ConsentPolicy(LEAD, ("HasOptedOutOfEmail",), channel_ids=(39581,),
                       message_type_ids=(48921, 48923), list_ids=(7,),
                       defers_when_converted=True)
OPT_IN_TYPES = frozenset({48923})


def lead(n: int, out: bool, **extra: Any) -> dict[str, Any]:
    return {"Id": to_18(f"00Q00000000000{n}"), "Email": f"p{n}@example.com", "FirstName": "P",
            "HasOptedOutOfEmail": out, **extra}


def test_an_opted_out_record_must_receive_none_of_the_groups() -> None:
    done = {"unsubscribedChannelIds": [39581], "unsubscribedMessageTypeIds": [48921],
            "subscribedMessageTypeIds": [], "emailListIds": [3]}
    assert still_received(POLICY, done, OPT_IN_TYPES) == []
    assert still_received(POLICY, {}, OPT_IN_TYPES) == ["channel 39581", "message type 48921"]
    assert still_received(POLICY, {"subscribedMessageTypeIds": [48923], "emailListIds": [7]},
                          OPT_IN_TYPES) == ["channel 39581", "message type 48921",
                                            "message type 48923", "list 7"]


def test_check_reports_only_opted_out_live_mappable_records() -> None:
    records = {"Lead": [lead(1, True), lead(2, False), lead(3, True, IsDeleted=True),
                        lead(4, True, IsConverted=True), lead(5, True, Email="not-an-email"),
                        lead(6, True)]}
    subs = {"p1@example.com": {"unsubscribedChannelIds": [39581],
                               "unsubscribedMessageTypeIds": [48921]},
            "p2@example.com": {}, "p3@example.com": {}, "p4@example.com": {}}
    report = check_consent({"Lead": POLICY}, records, subs, OPT_IN_TYPES)
    assert report.ok and report.opted_out == 2  # p6 has no profile: nothing received
    subs["p6@example.com"] = {"unsubscribedChannelIds": [39581]}
    report = check_consent({"Lead": POLICY}, records, subs, OPT_IN_TYPES)
    [mismatch] = report.mismatches
    assert (mismatch.key, mismatch.problem) == (
        "p6@example.com",
        "opted out in Salesforce, still subscribed in Iterable to message type 48921")
    assert report.summary() == {"consent_opted_out_checked": 2, "consent_mismatches": 1}
