"""CDC message parsing, with a corpus of malformed and surprising messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsync.core.events import channel_for, is_echo, origin_client, parse_event
from streamsync.core.ids import to_18
from streamsync.errors import MalformedEvent, RecordError, StreamsyncError, UnexpectedEntity

LEAD1 = to_18("00Q000000000001")
LEAD2 = to_18("00Q000000000002")


def _message(**header: Any) -> dict[str, Any]:
    base = {
        "entityName": "Lead",
        "recordIds": [LEAD1],
        "changeType": "UPDATE",
        "changeOrigin": "com/salesforce/api/rest/66.0;client=streamsync",
        "transactionKey": "001b7375-0086-250e-e6ca-b99bc3a8b69f",
        "sequenceNumber": 1,
        "commitTimestamp": 1714566896000,
        "commitNumber": 92847272780,
        "commitUser": "005000000000001AAA",
        "changedFields": ["Email", "LastModifiedDate"],
    }
    base.update(header)
    return {"channel": "/data/LeadChangeEvent",
            "data": {"schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
                     "payload": {"ChangeEventHeader": base, "Email": "a@example.com"},
                     "event": {"replayId": 6421}}}


def test_parses_a_well_formed_update() -> None:
    ev = parse_event(_message())
    assert ev.channel == "/data/LeadChangeEvent" and ev.replay_id == 6421
    assert ev.entity == "Lead" and ev.change_type == "UPDATE"
    assert ev.record_ids == (LEAD1,)
    assert ev.commit_timestamp_ms == 1714566896000 and ev.commit_number == 92847272780
    assert ev.transaction_key.startswith("001b") and ev.sequence_number == 1
    assert ev.changed_fields == ("Email", "LastModifiedDate")
    assert not ev.is_gap and not ev.is_overflow and not ev.is_wildcard
    assert not ev.needs_reconcile and not ev.is_delete
    with pytest.raises(AttributeError):
        ev.entity = "Contact"  # type: ignore[misc]


def test_merged_event_normalises_and_dedupes_15_char_ids() -> None:
    ev = parse_event(_message(recordIds=["00Q000000000001", LEAD2, LEAD1]))
    assert ev.record_ids == (LEAD1, LEAD2)


@pytest.mark.parametrize("change_type", ["CREATE", "UPDATE", "DELETE", "UNDELETE"])
def test_every_change_type(change_type: str) -> None:
    ev = parse_event(_message(changeType=change_type, changedFields=[]))
    assert ev.change_type == change_type
    assert ev.is_delete == (change_type == "DELETE")


@pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                                         "GAP_UNDELETE"])
def test_gap_events(change_type: str) -> None:
    ev = parse_event(_message(changeType=change_type, changeOrigin="", recordIds=[LEAD1, LEAD2]))
    assert ev.is_gap and not ev.is_overflow and ev.record_ids == (LEAD1, LEAD2)


@pytest.mark.parametrize("ids", [[], ["000000000000000AAA"], ["dummy"], None])
def test_overflow_events_need_no_real_ids(ids: Any) -> None:
    msg = _message(changeType="GAP_OVERFLOW")
    if ids is None:
        del msg["data"]["payload"]["ChangeEventHeader"]["recordIds"]
    else:
        msg["data"]["payload"]["ChangeEventHeader"]["recordIds"] = ids
    ev = parse_event(msg)
    assert ev.is_overflow and ev.needs_reconcile and not ev.is_gap
    assert ev.record_ids == ()


def test_wildcard_ids() -> None:
    msg = _message(entityName="Account", recordIds=["001*"])
    msg["channel"] = "/data/AccountChangeEvent"
    ev = parse_event(msg)
    assert ev.wildcard_prefixes == ("001",) and ev.is_wildcard and ev.needs_reconcile
    assert ev.record_ids == ()


def test_ids_of_unexpected_objects_are_flagged() -> None:
    contact = to_18("003000000000001")
    ev = parse_event(_message(recordIds=[LEAD1, contact]))
    assert ev.record_ids == (LEAD1,) and ev.unexpected_ids == (contact,)


def test_all_channel_and_custom_objects() -> None:
    msg = _message()
    msg["channel"] = "/data/ChangeEvents"
    assert parse_event(msg).entity == "Lead"
    custom = _message(entityName="Thing__c", recordIds=["a0RE000000IJmcN"])
    custom["channel"] = "/data/Thing__ChangeEvent"
    ev = parse_event(custom)
    assert ev.record_ids == ("a0RE000000IJmcNMAT",) and ev.unexpected_ids == ()
    assert channel_for("Thing__c") == "/data/Thing__ChangeEvent"
    assert channel_for("Lead") == "/data/LeadChangeEvent"


def test_replay_id_as_string_and_optional_diagnostics() -> None:
    msg = _message()
    msg["data"]["event"]["replayId"] = "6421"
    header = msg["data"]["payload"]["ChangeEventHeader"]
    for key in ("commitNumber", "sequenceNumber", "transactionKey", "changeOrigin",
                "commitUser", "changedFields"):
        del header[key]
    ev = parse_event(msg)
    assert ev.replay_id == 6421 and ev.commit_number is None and ev.change_origin == ""


def test_unconfigured_entity() -> None:
    with pytest.raises(UnexpectedEntity) as exc:
        parse_event(_message(), expected_entities={"Contact", "Account"})
    assert exc.value.reason == "unknown_entity" and exc.value.replay_id == 6421
    assert parse_event(_message(), expected_entities={"Lead"}).entity == "Lead"


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    msg = copy.deepcopy(_message())
    node: Any = msg
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return msg


_DELETE = object()
H = ["data", "payload", "ChangeEventHeader"]

MALFORMED: list[tuple[str, Any, bool]] = [
    # (description, message, replay id known)
    ("not a dict", [1, 2], False),
    ("string", "{}", False),
    ("empty", {}, False),
    ("no channel", _mutate(["channel"], _DELETE), False),
    ("channel not a string", _mutate(["channel"], 5), False),
    ("channel injection", _mutate(["channel"], "/data/Lead;DROP"), False),
    ("no data", _mutate(["data"], _DELETE), False),
    ("data is a list", _mutate(["data"], []), False),
    ("no event", _mutate(["data", "event"], _DELETE), False),
    ("no replay id", _mutate(["data", "event", "replayId"], _DELETE), False),
    ("replay id junk", _mutate(["data", "event", "replayId"], "abc"), False),
    ("replay id bool", _mutate(["data", "event", "replayId"], True), False),
    ("replay id float", _mutate(["data", "event", "replayId"], 1.5), False),
    ("no payload", _mutate(["data", "payload"], _DELETE), True),
    ("payload null", _mutate(["data", "payload"], None), True),
    ("no header", _mutate(["data", "payload", "ChangeEventHeader"], _DELETE), True),
    ("header a string", _mutate(["data", "payload", "ChangeEventHeader"], "x"), True),
    ("no entity", _mutate([*H, "entityName"], _DELETE), True),
    ("entity junk", _mutate([*H, "entityName"], "Lead'; --"), True),
    ("entity empty", _mutate([*H, "entityName"], ""), True),
    ("entity on the wrong channel", _mutate([*H, "entityName"], "Contact"), True),
    ("no change type", _mutate([*H, "changeType"], _DELETE), True),
    ("unknown change type", _mutate([*H, "changeType"], "MERGE"), True),
    ("change type lower case", _mutate([*H, "changeType"], "update"), True),
    ("no record ids", _mutate([*H, "recordIds"], _DELETE), True),
    ("record ids empty", _mutate([*H, "recordIds"], []), True),
    ("record ids a string", _mutate([*H, "recordIds"], LEAD1), True),
    ("record id junk", _mutate([*H, "recordIds"], ["' OR Id != '"]), True),
    ("record id bad checksum", _mutate([*H, "recordIds"], ["00Q000000000001AAB"]), True),
    ("record id too short", _mutate([*H, "recordIds"], ["00Q00000000001"]), True),
    ("record id number", _mutate([*H, "recordIds"], [12345]), True),
    ("record id null", _mutate([*H, "recordIds"], [None]), True),
    ("record id non-ASCII", _mutate([*H, "recordIds"], ["00Q00000000000é"]), True),
    ("record id control char", _mutate([*H, "recordIds"], ["00Q00000000000\x00"]), True),
    ("no commit timestamp", _mutate([*H, "commitTimestamp"], _DELETE), True),
    ("commit timestamp junk", _mutate([*H, "commitTimestamp"], "yesterday"), True),
    ("commit timestamp negative", _mutate([*H, "commitTimestamp"], -1), True),
    ("changed fields not a list", _mutate([*H, "changedFields"], "Email"), True),
    ("changed fields numbers", _mutate([*H, "changedFields"], [1]), True),
    ("transaction key number", _mutate([*H, "transactionKey"], 7), True),
    ("sequence number junk", _mutate([*H, "sequenceNumber"], "first"), True),
]


@pytest.mark.parametrize(("what", "message", "replay_known"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_messages(what: str, message: Any, replay_known: bool) -> None:
    with pytest.raises(MalformedEvent) as exc:
        parse_event(message)
    err = exc.value
    assert isinstance(err, RecordError) and isinstance(err, StreamsyncError)
    assert err.reason == "malformed_event" and err.detail
    assert (err.replay_id == 6421) == replay_known


def test_too_many_ids() -> None:
    with pytest.raises(MalformedEvent, match="more than"):
        parse_event(_message(recordIds=[LEAD1] * 100_001))


@pytest.mark.parametrize(
    ("origin", "client"),
    [("com/salesforce/api/rest/66.0;client=streamsync", "streamsync"),
     ("com/salesforce/api/soap/66.0; client = streamsync ", "streamsync"),
     ("com/salesforce/api/rest/66.0;other=1;client=X", "X"),
     ("com/salesforce/api/rest/66.0", None), ("", None), ("com.salesforce.core", None),
     ("client=streamsync", None)],
)
def test_origin_client(origin: str, client: str | None) -> None:
    assert origin_client(origin) == client


def test_echo_suppression() -> None:
    ours = parse_event(_message())
    theirs = parse_event(_message(changeOrigin="com/salesforce/api/rest/66.0;client=other"))
    ui = parse_event(_message(changeOrigin=""))
    assert is_echo(ours, "streamsync")
    assert not is_echo(theirs, "streamsync") and not is_echo(ui, "streamsync")
    assert not is_echo(ours, None) and not is_echo(ours, "")
    assert not is_echo(ours, "streamsync2")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([LEAD1, "00Q000000000001", "001*", "UPDATE", "GAP_OVERFLOW", "Lead"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
header_keys = st.sampled_from(["entityName", "recordIds", "changeType", "commitTimestamp",
                               "commitNumber", "transactionKey", "sequenceNumber",
                               "changeOrigin", "changedFields", "commitUser"])


@given(st.dictionaries(header_keys, json_values, max_size=10), json_values,
       st.sampled_from(["/data/LeadChangeEvent", "/data/ChangeEvents", "bad", None]))
@settings(max_examples=300, deadline=None)
def test_random_messages_only_raise_malformed_event(header: dict[str, Any], replay: Any,
                                                    channel: Any) -> None:
    msg = _message(**header)
    msg["channel"] = channel
    msg["data"]["event"]["replayId"] = replay
    try:
        ev = parse_event(msg)
    except MalformedEvent:
        return
    assert all(len(i) == 18 for i in ev.record_ids + ev.unexpected_ids)
    assert ev.record_ids or ev.wildcard_prefixes or ev.unexpected_ids or ev.is_overflow


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_arbitrary_json_only_raises_malformed_event(value: Any) -> None:
    try:
        parse_event(value)
    except MalformedEvent:
        pass
