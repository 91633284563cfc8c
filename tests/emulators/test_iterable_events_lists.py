"""Iterable emulator custom events (track, trackBulk, reads) and static lists, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.emulators.test_iterable_support import Api, FakeClock, MakeApi, api_factory

TRACK, BULK = "/api/events/track", "/api/events/trackBulk"
SUB, UNSUB = "/api/lists/subscribe", "/api/lists/unsubscribe"


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


async def control(api: Api, path: str, body: Any = None) -> Any:
    method = "GET" if body is None else "POST"
    async with api.session.request(
        method, api.emu.control_url + path, data=orjson.dumps(body) if body is not None else None
    ) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())


async def events_of(api: Api, email: str, **params: str) -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/api/events/{email}", params=params or None)
    assert reply.status == 200, reply.body
    events: list[dict[str, Any]] = reply.body["events"]
    return events


async def test_track_upserts_by_id_and_honours_created_at(make_api: MakeApi) -> None:
    wall = FakeClock(1_700_000_000.0)
    api = await make_api(wall_clock=wall)
    await api.bulk([{"email": "a@example.com", "userId": "ua"}])
    first = await api.call("POST", TRACK, {"email": "a@example.com", "eventName": "closedWon",
                                           "id": "tx-1-006A-rule1", "createdAt": 1_600_000_000,
                                           "dataFields": {"amount": 10}})
    assert first.body == {"msg": "Event with id: tx-1-006A-rule1 tracked.", "code": "Success",
                          "params": {"id": "tx-1-006A-rule1"}}
    again = await api.call("POST", TRACK, {"email": "a@example.com", "eventName": "closedWon",
                                           "id": "tx-1-006A-rule1", "createdAt": 1_600_000_000_000,
                                           "dataFields": {"amount": 20}})
    assert again.status == 200
    events = await events_of(api, "a@example.com")
    assert len(events) == 1  # replaced, not duplicated
    assert events[0]["dataFields"] == {"amount": 20} and events[0]["_id"] == "tx-1-006A-rule1"
    assert events[0]["createdAt"] == "2020-09-13 12:26:40 +00:00"  # ms read as ms
    stored = await control(api, "/custom-events")
    assert stored[0]["writes"] == 2 and stored[0]["createdAtRaw"] == 1_600_000_000_000
    auto = await api.call("POST", TRACK, {"userId": "ua", "eventName": "signup"})
    auto_id = auto.body["params"]["id"]
    assert len(auto_id) == 30 and auto.body["msg"] == f"Event with id: {auto_id} tracked."
    newest = await events_of(api, "a@example.com")
    assert [e["eventName"] for e in newest] == ["signup", "closedWon"]  # newest first
    assert newest[0]["createdAt"] == "2023-11-14 22:13:20 +00:00"  # receive time by default
    by_uid = await api.call("GET", "/api/events/byUserId/ua", params={"limit": "1"})
    assert [e["eventName"] for e in by_uid.body["events"]] == ["signup"]
    for limit in ("0", "201", "x"):
        assert (await api.call("GET", "/api/events/a@example.com",
                               params={"limit": limit})).status == 400
    assert await events_of(api, "nobody@example.com") == []


async def test_track_refusals(make_api: MakeApi) -> None:
    api = await make_api()
    bad_email = await api.call("POST", TRACK, {"email": "sayan", "eventName": "x"})
    assert bad_email.body == {"msg": "Invalid email: sayan", "code": "InvalidEmailAddressError",
                              "params": None}
    unknown = await api.call("POST", TRACK, {"email": "new@example.com", "eventName": "x"})
    assert (unknown.status, unknown.body["code"]) == (400, "UnknownEmailError")
    no_name = await api.call("POST", TRACK, {"email": "a@example.com"})
    assert (no_name.status, no_name.body["code"]) == (400, "BadParams")
    bad_id = await api.call("POST", TRACK, {"email": "a@example.com", "eventName": "x",
                                            "id": "has space"})
    assert bad_id.status == 400 and "obj.id" in bad_id.body["params"]
    long_id = await api.call("POST", TRACK, {"email": "a@example.com", "eventName": "x",
                                             "id": "a" * 513})
    assert long_id.status == 400
    creating = await make_api(events_create_users=True)
    made = await creating.call("POST", TRACK, {"email": "new@example.com", "eventName": "x"})
    assert made.status == 200 and (await creating.get_email("new@example.com")).body["user"]


async def test_track_bulk_limits_and_failure_shapes(make_api: MakeApi) -> None:
    api = await make_api(max_events_per_request=3)
    await api.bulk([{"email": "a@example.com"}])
    reply = await api.call("POST", BULK, {"events": [
        {"email": "a@example.com", "eventName": "e", "id": "1", "dataFields": {"f": 1}},
        {"email": "sayan", "eventName": "e"},
        {"email": "ghost@example.com", "eventName": "e"},
    ]})
    assert reply.body == {
        "successCount": 1, "failCount": 2, "invalidEmails": ["sayan"], "invalidUserIds": [],
        "disallowedEventNames": [], "filteredOutFields": [], "createdFields": ["f"],
        "failedUpdates": {"invalidEmails": ["sayan"], "invalidUserIds": [],
                          "notFoundEmails": ["ghost@example.com"], "notFoundUserIds": [],
                          "forgottenEmails": [], "forgottenUserIds": []},
    }
    wrong = await api.call("POST", BULK, {"events": [
        {"email": "a@example.com", "eventName": "e"},
        {"email": "a@example.com", "eventName": "e", "createdAt": "yesterday"}]})
    assert wrong.body == {"msg": f"[{BULK}] Invalid JSON body", "code": "BadJsonBody",
                          "params": {"obj.events[1].createdAt": "Number value expected"}}
    too_many = await api.call("POST", BULK, {"events": [
        {"email": "a@example.com", "eventName": "e"}] * 4})
    assert (too_many.status, too_many.body["code"]) == (400, "BatchTooLarge")
    await control(api, "/event-names", {"allow_new": False})
    mixed = await api.call("POST", BULK, {"events": [
        {"email": "a@example.com", "eventName": "e", "id": "1", "dataFields": {"g": 2}},
        {"email": "a@example.com", "eventName": "brandNew"}]})
    assert (mixed.body["successCount"], mixed.body["failCount"]) == (1, 1)
    assert mixed.body["disallowedEventNames"] == ["brandNew"]
    assert [e["dataFields"] for e in await events_of(api, "a@example.com")] == [{"g": 2}]
    await control(api, "/settings", {"create_new_fields": False})
    dropped = await api.call("POST", BULK, {"events": [
        {"email": "a@example.com", "eventName": "e", "dataFields": {"f": 3, "h": 4}}]})
    assert dropped.body["filteredOutFields"] == ["h"]
    limited = await make_api(rate_limits=True)
    statuses = [(await limited.call("POST", BULK, {"events": []})).status for _ in range(11)]
    assert statuses[:10] == [200] * 10 and statuses[10] == 429


async def test_lists_create_subscribe_size_users_unsubscribe_delete(make_api: MakeApi) -> None:
    api = await make_api(max_list_subscribers=3)
    first = (await api.call("POST", "/api/lists", {"name": "Closed Won"})).body["listId"]
    second = (await api.call("POST", "/api/lists", {"name": "Closed Won",
                                                    "description": "dup"})).body["listId"]
    lists = (await api.call("GET", "/api/lists")).body["lists"]
    assert [x["id"] for x in lists] == [second, first]  # newest first; names not unique
    assert lists[0]["listType"] == "Standard" and lists[0]["description"] == "dup"
    reply = await api.call("POST", SUB, {"listId": first, "subscribers": [
        {"email": "A@example.com", "dataFields": {"stage": "won"}}, {"email": "b@example.com"},
        {"email": "bad"}]})
    assert (reply.body["successCount"], reply.body["failCount"]) == (2, 1)
    assert reply.body["invalidEmails"] == ["bad"]
    user = (await api.get_email("a@example.com")).body["user"]["dataFields"]
    assert user["emailListIds"] == [first] and user["stage"] == "won"
    size = await api.call("GET", f"/api/lists/{first}/size")
    assert (size.text, size.headers["Content-Type"].split(";")[0]) == ("2", "text/plain")
    users = await api.call("GET", "/api/lists/getUsers", params={"listId": str(first)})
    assert users.text.splitlines() == ["a@example.com", "b@example.com"]
    gone = await api.call("POST", UNSUB, {"listId": first, "subscribers": [
        {"email": "b@example.com"}, {"email": "zz@example.com"}], "campaignId": 9})
    assert (gone.body["successCount"], gone.body["failedUpdates"]["notFoundEmails"]) == (
        1, ["zz@example.com"])
    events = await control(api, "/consent-events")
    assert [(e["eventName"], e["email"], e["emailListIds"]) for e in events] == [
        ("emailSubscribe", "a@example.com", [first]), ("emailSubscribe", "b@example.com", [first]),
        ("emailUnSubscribe", "b@example.com", [first])]
    assert events[2]["unsubSource"] == "ListAPI" and events[2]["campaignId"] == 9
    invalid = await api.call("POST", SUB, {"listId": 999999999, "subscribers": []})
    assert invalid.status == 400 and invalid.body["msg"] == "error.lists.invalidListId(999999999)"
    too_many = await api.call("POST", SUB, {"listId": first, "subscribers": [
        {"email": f"u{i}@example.com"} for i in range(4)]})
    assert (too_many.status, too_many.body["code"]) == (400, "BatchTooLarge")
    malformed = await api.call("POST", SUB, {"listId": "x", "subscribers": {}})
    assert set(malformed.body["params"]) == {"obj.listId", "obj.subscribers"}
    global_unsub = await api.call("POST", UNSUB, {"listId": first, "channelUnsubscribe": True,
                                                  "subscribers": [{"email": "a@example.com"}]})
    assert global_unsub.body["successCount"] == 1
    state = (await control(api, "/subscriptions"))["a@example.com"]
    assert state["emailListIds"] == [] and state["unsubscribedChannelIds"] == [39581, 39583, 39584]
    await api.call("POST", SUB, {"listId": second, "subscribers": [{"email": "a@example.com"}]})
    deleted = await api.call("DELETE", f"/api/lists/{second}")
    assert deleted.body == {"msg": f"List {second} in Project {api.emu.project.id} was "
                            "successfully deleted.", "code": "Success", "params": None}
    assert (await control(api, "/subscriptions"))["a@example.com"]["emailListIds"] == []
    assert (await api.call("DELETE", f"/api/lists/{second}")).status == 400
    dump = await control(api, "/lists")
    assert dump[str(first)]["members"] == []


async def test_list_reads_are_limited_and_user_id_projects_use_user_ids(
    make_api: MakeApi,
) -> None:
    api = await make_api(project_type="userId", rate_limits=True)
    lst = (await api.call("POST", "/api/lists", {"name": "L"})).body["listId"]
    only = await api.call("POST", SUB, {"listId": lst, "updateExistingUsersOnly": True,
                                        "subscribers": [{"userId": "u1"}]})
    assert only.body["failedUpdates"]["notFoundUserIds"] == ["u1"]
    await api.call("POST", SUB, {"listId": lst, "subscribers": [{"userId": "u1"}]})
    users = await api.call("GET", "/api/lists/getUsers", params={"listId": str(lst)})
    assert users.text == "u1\n"
    assert (await api.get_user_id("u1")).body["user"]["dataFields"]["userListIds"] == [lst]
    statuses = [(await api.call("GET", f"/api/lists/{lst}/size")).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]
