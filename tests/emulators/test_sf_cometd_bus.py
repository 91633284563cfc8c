"""EventBus: replay ids, CometD data shape, channels, gap events, retention by count and age."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamsync.emulators.salesforce.bus import (
    EventBus,
    RetainedEvent,
    entity_channel,
    schema_id,
)


class Clock:
    """A settable clock for retention and expiry tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def header(entity: str = "Lead", change: str = "UPDATE", rid: str = "00Q000000000001AAA",
           ts: int = 1_700_000_000_000) -> dict[str, Any]:
    return {"entityName": entity, "recordIds": [rid], "changeType": change,
            "changeOrigin": "com/salesforce/api/rest/66.0;client=test", "transactionKey": "tk",
            "sequenceNumber": 1, "commitTimestamp": ts, "commitNumber": 1,
            "commitUser": "005000000000001AAA", "changedFields": ["Email", "LastModifiedDate"]}


def test_entity_channels_and_schema_ids() -> None:
    assert entity_channel("Lead") == "/data/LeadChangeEvent"
    assert entity_channel("Account") == "/data/AccountChangeEvent"
    assert entity_channel("Invoice__c") == "/data/Invoice__ChangeEvent"
    assert len(schema_id("Lead")) == 22
    assert schema_id("Lead") == schema_id("Lead") != schema_id("Contact")


def test_publish_assigns_rising_replay_ids_and_wraps_the_cometd_data() -> None:
    bus = EventBus()
    assert bus.latest_replay_id == 0 and bus.oldest_replay_id is None
    payload = {"ChangeEventHeader": header(), "Email": "a@example.com", "Phone": None}
    first = bus.publish("Lead", payload)
    second = bus.publish("Contact", {"ChangeEventHeader": header("Contact", "CREATE")})
    assert second == first + 1 == bus.latest_replay_id
    events = list(bus.events_after(0))
    assert [e.replay_id for e in events] == [first, second]
    assert [e.channel for e in events] == ["/data/LeadChangeEvent", "/data/ContactChangeEvent"]
    data = orjson.loads(events[0].data_json)
    assert data == {"schema": schema_id("Lead"), "payload": payload,
                    "event": {"replayId": first}}
    message = orjson.loads(events[0].message("/data/ChangeEvents"))
    assert message == {"data": data, "channel": "/data/ChangeEvents"}
    assert "clientId" not in message


def test_the_payload_is_frozen_at_publish_time() -> None:
    bus = EventBus()
    payload: dict[str, Any] = {"ChangeEventHeader": header(), "Email": "a@example.com"}
    bus.publish("Lead", payload)
    payload["Email"] = "changed@example.com"
    (event,) = bus.events_after(0)
    assert orjson.loads(event.data_json)["payload"]["Email"] == "a@example.com"


def test_publish_rejects_a_payload_without_header() -> None:
    bus = EventBus()
    with pytest.raises(ValueError, match="ChangeEventHeader"):
        bus.publish("Lead", {"Email": "x@example.com"})
    with pytest.raises(ValueError, match="entity_name"):
        bus.publish("", {"ChangeEventHeader": header()})
    assert bus.latest_replay_id == 0


def test_events_after_a_replay_id() -> None:
    bus = EventBus()
    ids = [bus.publish("Lead", {"ChangeEventHeader": header()}) for _ in range(5)]
    assert [e.replay_id for e in bus.events_after(ids[1])] == ids[2:]
    assert list(bus.events_after(ids[-1])) == []
    assert [e.replay_id for e in bus.events_after(-5)] == ids
    assert bus.has_events_after(ids[3]) and not bus.has_events_after(ids[4])


def test_gap_and_overflow_events_carry_a_header_only() -> None:
    bus = EventBus()
    rid = bus.publish_gap("Account", "GAP_UPDATE", ["001000000000001AAA"], 1_700_000_000_123)
    overflow = bus.publish_gap("Lead", "GAP_OVERFLOW", [], 1_700_000_000_456)
    gap, over = list(bus.events_after(0))
    payload = orjson.loads(gap.data_json)["payload"]
    assert list(payload) == ["ChangeEventHeader"]
    head = payload["ChangeEventHeader"]
    assert head["changeType"] == "GAP_UPDATE" and head["entityName"] == "Account"
    assert head["recordIds"] == ["001000000000001AAA"]
    assert head["commitTimestamp"] == 1_700_000_000_123 and head["changedFields"] == []
    assert len(head["transactionKey"]) == 36 and head["sequenceNumber"] == 1
    assert orjson.loads(over.data_json)["payload"]["ChangeEventHeader"]["changeType"] == \
        "GAP_OVERFLOW"
    assert (gap.replay_id, over.replay_id) == (rid, overflow)
    with pytest.raises(ValueError, match="GAP_"):
        bus.publish_gap("Lead", "UPDATE", [], 0)


def test_retention_by_count_drops_the_oldest() -> None:
    bus = EventBus(retention_count=3)
    ids = [bus.publish("Lead", {"ChangeEventHeader": header()}) for _ in range(5)]
    assert len(bus) == 3 and bus.oldest_replay_id == ids[2]
    assert not bus.is_retained(ids[1]) and bus.is_retained(ids[2]) and bus.is_retained(ids[4])
    assert [e.replay_id for e in bus.events_after(0)] == ids[2:]


def test_retention_by_age_with_an_injected_clock() -> None:
    clock = Clock()
    bus = EventBus(retention_s=100.0, clock=clock)
    old = bus.publish("Lead", {"ChangeEventHeader": header()})
    clock.now += 60
    young = bus.publish("Lead", {"ChangeEventHeader": header()})
    clock.now += 50
    assert not bus.is_retained(old) and bus.is_retained(young)
    assert [e.replay_id for e in bus.events_after(0)] == [young]
    clock.now += 60
    assert len(bus) == 0 and bus.oldest_replay_id is None and not bus.is_retained(young)
    assert bus.latest_replay_id == young
    assert bus.publish("Lead", {"ChangeEventHeader": header()}) == young + 1


def test_purge_drops_everything_and_ids_keep_rising() -> None:
    bus = EventBus()
    last = 0
    for _ in range(3):
        last = bus.publish("Lead", {"ChangeEventHeader": header()})
    bus.purge()
    assert len(bus) == 0 and not bus.is_retained(last) and bus.latest_replay_id == last
    assert bus.publish("Lead", {"ChangeEventHeader": header()}) == last + 1


def test_compaction_keeps_ids_addressable() -> None:
    bus = EventBus(retention_count=100)
    for _ in range(10_000):
        bus.publish("Lead", {"ChangeEventHeader": header()})
    assert len(bus) == 100 and bus.oldest_replay_id == 9_901
    assert [e.replay_id for e in bus.events_after(9_990)] == list(range(9_991, 10_001))


def test_listeners_see_every_publish() -> None:
    bus = EventBus()
    seen: list[RetainedEvent] = []
    bus.add_listener(seen.append)
    bus.publish("Lead", {"ChangeEventHeader": header()})
    bus.remove_listener(seen.append)
    bus.remove_listener(seen.append)
    bus.publish("Lead", {"ChangeEventHeader": header()})
    assert [e.replay_id for e in seen] == [1]


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        EventBus(retention_s=0)
    with pytest.raises(ValueError):
        EventBus(retention_count=0)
