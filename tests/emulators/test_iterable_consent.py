"""Iterable emulator consent: subscription endpoints, clicks, system webhooks and the export API,
over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from streamsync.emulators.iterable.__main__ import parse_args
from tests.emulators.iterable_receiver import Receiver
from tests.emulators.test_iterable_support import Api, FakeClock, MakeApi, Reply, api_factory

MARKETING, TRANSACTIONAL, PUSH, SMS = 39581, 39582, 39583, 39584
NEWSLETTER, PROMOS, PRODUCT_OPT_IN, RECEIPTS = 48921, 48922, 48923, 48924
UPD, BULK = "/api/users/updateSubscriptions", "/api/users/bulkUpdateSubscriptions"


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = await Receiver().start()
    yield rec
    await rec.stop()


async def control(api: Api, method: str, path: str, body: Any = None, **params: str) -> Any:
    async with api.session.request(
        method, api.emu.control_url + path, data=orjson.dumps(body) if body is not None else None,
        params=params or None,
    ) as resp:
        parsed = orjson.loads(await resp.read())
        assert resp.status == 200, parsed
        return parsed


async def new_list(api: Api, name: str = "Newsletter list") -> int:
    reply = await api.call("POST", "/api/lists", {"name": name})
    assert reply.status == 200, reply.body
    list_id: int = reply.body["listId"]
    return list_id


def user_fields(reply: Reply) -> dict[str, Any]:
    fields: dict[str, Any] = reply.body["user"]["dataFields"]
    return fields


async def consent_events(api: Api) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await control(api, "GET", "/consent-events")
    return events


def test_cli_takes_a_webhook_url() -> None:
    assert parse_args(["--webhook-url", "http://127.0.0.1:9/hook"]).webhook_url == (
        "http://127.0.0.1:9/hook"
    )
    assert parse_args([]).webhook_url is None


async def test_channels_and_message_types_are_seeded(make_api: MakeApi) -> None:
    api = await make_api()
    channels = (await api.call("GET", "/api/channels")).body["channels"]
    assert {c["id"]: (c["channelType"], c["messageMedium"]) for c in channels} == {
        MARKETING: ("Marketing", "Email"), TRANSACTIONAL: ("Transactional", "Email"),
        PUSH: ("Marketing", "Push"), SMS: ("Marketing", "SMS"),
    }
    types = (await api.call("GET", "/api/messageTypes")).body["messageTypes"]
    assert {t["channelId"] for t in types} == {MARKETING, TRANSACTIONAL, PUSH, SMS}
    assert {t["id"]: t["subscriptionPolicy"] for t in types}[PRODUCT_OPT_IN] == "OptIn"
    no_opt_in = await make_api(opt_in_message_types=False)
    types = (await no_opt_in.call("GET", "/api/messageTypes")).body["messageTypes"]
    assert {t["subscriptionPolicy"] for t in types} == {"OptOut"}
    added = await control(api, "POST", "/channels",
                          {"name": "Alerts", "channelType": "Marketing", "messageMedium": "Push"})
    mt = await control(api, "POST", "/message-types",
                       {"name": "Alert", "channelId": added["id"], "subscriptionPolicy": "OptOut"})
    types = (await api.call("GET", "/api/messageTypes")).body["messageTypes"]
    assert mt["id"] in {t["id"] for t in types}


async def test_update_subscriptions_overwrites_each_field_sent_and_leaves_the_rest(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    lst = await new_list(api)
    ok = await api.call("POST", UPD, {"email": "A@Example.com", "emailListIds": [lst],
                                      "unsubscribedChannelIds": [MARKETING], "campaignId": 7})
    assert (ok.status, ok.body) == (200, {"msg": "", "code": "Success", "params": None})
    await api.call("POST", UPD, {"email": "a@example.com",
                                 "unsubscribedMessageTypeIds": [RECEIPTS]})
    fields = user_fields(await api.get_email("a@example.com"))
    assert fields["emailListIds"] == [lst]
    assert fields["unsubscribedChannelIds"] == [MARKETING]  # untouched by the second call
    assert fields["unsubscribedMessageTypeIds"] == [RECEIPTS]
    assert fields["subscribedMessageTypeIds"] == []
    # Overwrite, not merge: sending [PUSH] drops MARKETING; [] empties the lists.
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [PUSH],
                                 "emailListIds": []})
    fields = user_fields(await api.get_email("a@example.com"))
    assert (fields["unsubscribedChannelIds"], fields["emailListIds"]) == ([PUSH], [])
    events = await consent_events(api)
    names = [(e["eventName"], e["channelIds"], e["messageTypeIds"], e["emailListIds"])
             for e in events]
    assert names == [
        ("emailUnSubscribe", [MARKETING], [], []),
        ("emailSubscribe", [], [], [lst]),
        ("emailUnSubscribe", [], [RECEIPTS], []),
        ("emailUnSubscribe", [PUSH], [], [lst]),
        ("emailSubscribe", [MARKETING], [], []),
    ]
    assert events[0]["unsubSource"] == "API" and events[0]["campaignId"] == 7
    assert events[1]["signupSource"] == "UpdateSubscriptionsAPI"


async def test_update_subscriptions_refusals(make_api: MakeApi) -> None:
    api = await make_api()
    bad_channel = await api.call("POST", UPD, {"email": "a@example.com",
                                               "unsubscribedChannelIds": [1]})
    assert (bad_channel.status, bad_channel.body["code"]) == (400, "BadParams")
    assert (await api.get_email("a@example.com")).body == {}  # a refused call creates no one
    bad_email = await api.call("POST", UPD, {"email": "sayan", "emailListIds": []})
    assert (bad_email.status, bad_email.body["code"]) == (400, "InvalidEmailAddressError")
    bad_type = await api.call("POST", UPD, {"email": "a@example.com", "emailListIds": ["x"]})
    assert bad_type.body["params"] == {"obj.emailListIds": "Array of integers expected"}
    unknown_uid = await api.call("POST", UPD, {"userId": "ghost", "emailListIds": []})
    assert (unknown_uid.status, unknown_uid.body["code"]) == (400, "UnknownUserIdError")
    # validateChannelAlignment: an opt-in type of an unsubscribed channel is refused unless false.
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [MARKETING]})
    aligned = await api.call("POST", UPD, {"email": "a@example.com",
                                           "subscribedMessageTypeIds": [PRODUCT_OPT_IN]})
    assert aligned.status == 400 and "validateChannelAlignment" in aligned.body["msg"]
    stored = await api.call("POST", UPD, {"email": "a@example.com", "validateChannelAlignment":
                                          False, "subscribedMessageTypeIds": [PRODUCT_OPT_IN]})
    assert stored.status == 200
    assert user_fields(await api.get_email("a@example.com"))["subscribedMessageTypeIds"] == [
        PRODUCT_OPT_IN
    ]
    state = await control(api, "GET", "/subscriptions", key="a@example.com")
    assert state["a@example.com"]["receives"][str(PRODUCT_OPT_IN)] is False  # channel blocks
    off = await make_api(opt_in_message_types=False)
    refused = await off.call("POST", UPD, {"email": "a@example.com",
                                           "subscribedMessageTypeIds": [NEWSLETTER]})
    assert refused.status == 400 and "opt-in" in refused.body["msg"]


async def test_bulk_update_subscriptions_reports_per_user_and_caps_items(
    make_api: MakeApi,
) -> None:
    api = await make_api(max_subscription_requests=3)
    reply = await api.call("POST", BULK, {"updateSubscriptionsRequests": [
        {"email": "new@example.com", "unsubscribedChannelIds": [MARKETING]},
        {"email": "sayan", "unsubscribedChannelIds": [MARKETING]},
        {"userId": "ghost", "unsubscribedChannelIds": [MARKETING]},
    ]})
    assert reply.body == {
        "successCount": 1, "failCount": 2, "invalidEmails": ["sayan"], "invalidUserIds": [],
        "validEmailFailures": [], "validUserIdFailures": ["ghost"],
    }
    assert user_fields(await api.get_email("new@example.com"))["unsubscribedChannelIds"] == [
        MARKETING
    ]
    too_many = await api.call("POST", BULK, {"updateSubscriptionsRequests": [
        {"email": f"u{i}@example.com"} for i in range(4)]})
    assert (too_many.status, too_many.body["code"]) == (400, "BatchTooLarge")
    missing = await api.call("POST", BULK, {"users": []})
    assert (missing.status, missing.body["code"]) == (400, "BadJsonBody")
    events = await consent_events(api)
    assert [(e["eventName"], e["email"]) for e in events] == [
        ("emailUnSubscribe", "new@example.com")]


async def test_per_group_endpoints_change_one_group_only(make_api: MakeApi) -> None:
    api = await make_api(project_type="hybrid")
    lst = await new_list(api)
    await api.bulk([{"email": "a@example.com", "userId": "ua"}])
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [PUSH]})
    base = "/api/subscriptions"
    for path in (f"{base}/messageType/{NEWSLETTER}/user/a@example.com",
                 f"{base}/MESSAGECHANNEL/{SMS}/byUserId/ua"):
        reply = await api.call("DELETE", path)
        assert (reply.status, reply.body["code"]) == (200, "Success")
    await api.call("PATCH", f"{base}/emailList/{lst}/user/a@example.com")
    await api.call("PATCH", f"{base}/messageType/{PRODUCT_OPT_IN}/byUserId/ua")
    subs = (await control(api, "GET", "/subscriptions"))["a@example.com"]
    assert subs["unsubscribedChannelIds"] == [PUSH, SMS]  # PUSH kept: additive, not overwrite
    assert subs["unsubscribedMessageTypeIds"] == [NEWSLETTER]
    assert subs["subscribedMessageTypeIds"] == [PRODUCT_OPT_IN]
    assert subs["emailListIds"] == [lst]
    assert user_fields(await api.get_email("a@example.com"))["userListIds"] == [lst]  # hybrid
    bulk = await api.call("PUT", f"{base}/messageChannel/{PUSH}", {
        "users": ["a@example.com", "b@example.com"], "usersByUserId": ["nobody"]},
        params={"action": "subscribe"})
    assert bulk.status == 200 and bulk.body["code"] == "Success"
    snap = await control(api, "GET", "/subscriptions")
    assert snap["a@example.com"]["unsubscribedChannelIds"] == [SMS]
    assert set(snap) == {"a@example.com", "b@example.com", "nobody"}  # subscribe creates users
    unsub = await api.call("PUT", f"{base}/messageChannel/{PUSH}", {"users": ["zz@example.com"]},
                           params={"action": "unsubscribe"})
    assert unsub.body["params"] == {"notFoundEmails": ["zz@example.com"]}
    assert "zz@example.com" not in await control(api, "GET", "/subscriptions")
    sources = {e["unsubSource"] for e in await consent_events(api) if "unsubSource" in e}
    assert sources == {"API"}
    for path, status in ((f"{base}/campaign/1/user/a@example.com", 400),
                         (f"{base}/messageType/1/user/a@example.com", 400)):
        assert (await api.call("PATCH", path)).status == status
    off = await make_api(subscriptions_api=False)
    closed = await off.call("PATCH", f"{base}/messageType/{NEWSLETTER}/user/a@example.com")
    assert (closed.status, closed.body["code"]) == (404, "NotFound")
    accepted = await make_api(subscriptions_status=202)
    reply = await accepted.call("DELETE", f"{base}/messageType/{NEWSLETTER}/user/a@example.com")
    assert reply.status == 202


async def test_bulk_update_sets_arrays_without_events(make_api: MakeApi) -> None:
    api = await make_api()
    lst = await new_list(api)
    await api.bulk([{"email": "a@example.com", "dataFields": {
        "emailListIds": [lst], "unsubscribedChannelIds": [MARKETING], "name": "A"}}])
    fields = user_fields(await api.get_email("a@example.com"))
    assert (fields["emailListIds"], fields["unsubscribedChannelIds"]) == ([lst], [MARKETING])
    assert fields["name"] == "A"
    assert await consent_events(api) == []


async def test_click_acts_as_a_user_webhook_and_export_show_it(
    make_api: MakeApi, receiver: Receiver
) -> None:
    api = await make_api(webhook_url=receiver.url)
    await api.bulk([{"email": "a@example.com", "userId": "ua"}])
    clicked = await control(api, "POST", "/click", {
        "email": "a@example.com", "messageTypeId": NEWSLETTER, "campaignId": 1089024,
        "templateId": 1526112, "hosted": True})
    assert [e["eventName"] for e in clicked["events"]] == [
        "hostedUnsubscribeClick", "emailUnSubscribe"]
    await receiver.wait_for(2)
    await api.emu.webhooks.wait_idle()
    by_name = {b["eventName"]: b for b in receiver.bodies}
    unsub = by_name["emailUnSubscribe"]
    assert unsub["email"] == "a@example.com" and unsub["userId"] == "ua"
    fields = unsub["dataFields"]
    assert fields["email"] == "a@example.com" and fields["unsubSource"] == "EmailLink"
    assert (fields["messageTypeIds"], fields["channelIds"], fields["emailListIds"]) == (
        [NEWSLETTER], [], [])
    assert (fields["messageTypeId"], fields["channelId"], fields["campaignId"]) == (
        NEWSLETTER, MARKETING, 1089024)
    assert fields["createdAt"].endswith(" +00:00") and len(fields["createdAt"]) == 26
    hosted = by_name["hostedUnsubscribeClick"]["dataFields"]
    assert "channelIds" not in hosted and hosted["url"].startswith("https://")
    subs = (await control(api, "GET", "/subscriptions"))["a@example.com"]
    assert subs["receives"][str(NEWSLETTER)] is False and subs["receives"][str(PROMOS)] is True
    export = await api.call("GET", "/api/export/data.json",
                            params={"dataTypeName": "emailUnSubscribe", "range": "Today"})
    lines = [orjson.loads(x) for x in export.text.splitlines()]
    assert export.headers["Content-Type"].startswith("application/x-json-stream")
    assert len(lines) == 1 and lines[0]["unsubSource"] == "EmailLink"
    # Everything in the marketing channels, then a sign-up back into one type.
    await control(api, "POST", "/click", {"email": "a@example.com", "channelId": MARKETING,
                                          "scope": "all"})
    subs = (await control(api, "GET", "/subscriptions"))["a@example.com"]
    assert subs["unsubscribedChannelIds"] == [MARKETING, PUSH, SMS]
    signed = await control(api, "POST", "/signup", {"email": "a@example.com",
                                                    "channelId": MARKETING})
    assert signed["events"][0]["signupSource"] == "WebForm"
    await receiver.wait_for(4)
    assert [b["eventName"] for b in receiver.bodies[2:]] == ["emailUnSubscribe", "emailSubscribe"]


async def test_webhook_auth_retries_and_failure(make_api: MakeApi, receiver: Receiver) -> None:
    api = await make_api(webhook_url=receiver.url)
    await control(api, "POST", "/webhook", {"auth_type": "OAuth2", "auth_token": "tok",
                                            "headers": {"X-Secret": "s3"}, "backoff_s": 0.01,
                                            "retries": 2})
    await api.bulk([{"email": "a@example.com"}])
    receiver.script = [500, 503]
    await control(api, "POST", "/click", {"email": "a@example.com", "channelId": MARKETING})
    await receiver.wait_for(1)
    await api.emu.webhooks.wait_idle()
    assert receiver.headers[0]["Authorization"] == "OAuth2 tok"
    assert receiver.headers[0]["X-Secret"] == "s3"
    deliveries = await control(api, "GET", "/webhook/deliveries")
    assert [a.get("status") for a in deliveries[0]["attempts"]] == [500, 503, 200]
    assert deliveries[0]["outcome"] == "delivered"
    receiver.script = [500, 500, 500]
    await control(api, "POST", "/webhook", {"auth_type": "Basic", "auth_token": "dTpw",
                                            "basic_prefix": False})
    await control(api, "POST", "/click", {"email": "a@example.com", "channelId": PUSH})
    await api.emu.webhooks.wait_idle()
    deliveries = await control(api, "GET", "/webhook/deliveries")
    assert deliveries[1]["outcome"] == "failed" and len(deliveries[1]["attempts"]) == 3
    assert receiver.hits == 6
    webhooks = (await api.call("GET", "/api/webhooks")).body["webhooks"]
    assert webhooks[0]["endpoint"] == receiver.url and webhooks[0]["authType"] == "Basic"
    upd = await api.call("POST", "/api/webhooks", {"id": webhooks[0]["id"], "enabled": False})
    assert upd.body["enabled"] is False
    await control(api, "POST", "/click", {"email": "a@example.com", "channelId": SMS})
    assert len(await control(api, "GET", "/webhook/deliveries")) == 2  # disabled: not sent
    # A dead endpoint (connection refused) is retried, then given up.
    await control(api, "POST", "/webhook", {"url": "http://127.0.0.1:9/none", "enabled": True,
                                            "retries": 1})
    await control(api, "POST", "/signup", {"email": "a@example.com", "channelId": SMS})
    await api.emu.webhooks.wait_idle()
    last = (await control(api, "GET", "/webhook/deliveries"))[-1]
    assert last["outcome"] == "failed" and all("error" in a for a in last["attempts"])
    bad = await api.session.post(api.emu.control_url + "/webhook", json={"auth_type": "Digest"})
    assert bad.status == 400


async def test_webhook_faults_lose_and_duplicate_deliveries(
    make_api: MakeApi, receiver: Receiver
) -> None:
    api = await make_api(webhook_url=receiver.url)
    await api.bulk([{"email": "a@example.com"}])
    await control(api, "POST", "/webhook/faults", {"lose_next": 1, "duplicate_next": 1})
    for channel in (MARKETING, PUSH, SMS):
        await control(api, "POST", "/click", {"email": "a@example.com", "channelId": channel})
    await api.emu.webhooks.wait_idle()
    outcomes = [(d["seq"], d["copy"], d["outcome"])
                for d in await control(api, "GET", "/webhook/deliveries")]
    assert outcomes == [(1, 1, "lost"), (2, 1, "delivered"), (2, 2, "delivered"),
                        (3, 1, "delivered")]
    await receiver.wait_for(3)
    assert sorted(b["dataFields"]["channelIds"][0] for b in receiver.bodies) == [PUSH, PUSH, SMS]
    # The lost event is still in the export: the safety net for missed webhooks.
    export = await api.call("GET", "/api/export/data.json",
                            params={"dataTypeName": "emailUnsubscribe", "range": "All"})
    assert len(export.text.splitlines()) == 3
    assert (await control(api, "GET", "/webhook"))["counts"] == {"lost": 1, "delivered": 3}
    await control(api, "POST", "/webhook/faults", {"loss_rate": 1.0})
    await control(api, "POST", "/click", {"email": "a@example.com", "messageTypeId": PROMOS})
    assert (await control(api, "GET", "/webhook"))["counts"]["lost"] == 2
    bad = await api.session.post(api.emu.control_url + "/webhook/faults", json={"loss_rate": 2})
    assert bad.status == 400


async def test_export_window_fields_lag_and_rate_limit(make_api: MakeApi) -> None:
    wall = FakeClock(1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    api = await make_api(wall_clock=wall, rate_limits=True)
    api.emu.limits.lift("exportData")
    lst = await new_list(api)
    await api.call("POST", "/api/lists/subscribe",
                   {"listId": lst, "subscribers": [{"email": "a@example.com"}]})
    wall.advance(3600)  # 23:13:20
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [MARKETING],
                                 "campaignId": 5})
    wall.advance(3600)  # 2023-11-15 00:13:20
    await api.call("POST", "/api/lists/unsubscribe",
                   {"listId": lst, "subscribers": [{"email": "a@example.com"}]})

    async def export(**params: str) -> list[dict[str, Any]]:
        reply = await api.call("GET", "/api/export/data.json", params=params)
        assert reply.status == 200, reply.body
        return [orjson.loads(x) for x in reply.text.splitlines()]

    unsub = "emailUnSubscribe"
    assert [x["unsubSource"] for x in await export(dataTypeName=unsub, range="All")] == [
        "API", "ListAPI"]
    assert [x["emailListIds"] for x in await export(dataTypeName=unsub)] == [[lst]]  # Today
    assert len(await export(dataTypeName=unsub, range="Yesterday")) == 1
    assert len(await export(dataTypeName=unsub, range="BeforeToday")) == 1
    sub = await export(dataTypeName="emailSubscribe", range="All")
    assert sub[0]["signupSource"] == "ListAPI" and sub[0]["createdAt"] == (
        "2023-11-14 22:13:20 +00:00")
    window = {"dataTypeName": unsub, "startDateTime": "2023-11-14 23:13:20",
              "endDateTime": "2023-11-15 00:13:20"}
    assert [x["channelIds"] for x in await export(**window)] == [[MARKETING]]  # end exclusive
    assert await export(**{**window, "startDateTime": "2023-11-14 23:13:21 +00:00"}) == []
    only = await export(dataTypeName=unsub, range="All", onlyFields="email,createdAt")
    assert [set(x) for x in only] == [{"email", "createdAt"}] * 2
    repeated = await api.call("GET", "/api/export/data.json?dataTypeName=emailUnSubscribe"
                              "&range=All&onlyFields=email&onlyFields=unsubSource")
    assert {tuple(orjson.loads(x)) for x in repeated.text.splitlines()} == {
        ("email", "unsubSource")}
    assert len(await export(dataTypeName=unsub, range="All", campaignId="5")) == 1
    assert await export(dataTypeName="emailSend", range="All") == []
    for params in ({"range": "All"}, {"dataTypeName": "nope"},
                   {"dataTypeName": unsub, "range": "Week"},
                   {"dataTypeName": unsub, "startDateTime": "yesterday"}):
        reply = await api.call("GET", "/api/export/data.json", params=params)
        assert (reply.status, reply.body["code"]) == (400, "BadParams"), params
    api.emu.config.export_lag_s = 60.0
    assert len(await export(dataTypeName=unsub, range="All")) == 1  # the newest is not in yet
    wall.advance(60)
    assert len(await export(dataTypeName=unsub, range="All")) == 2
    api.emu.limits.restore()
    statuses = [(await api.call("GET", "/api/export/data.json",
                                params={"dataTypeName": unsub})).status for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


async def test_write_counters_show_what_changed(make_api: MakeApi) -> None:
    api = await make_api()
    await api.call("GET", "/api/channels")
    await api.call("GET", "/api/lists")
    await api.call("GET", "/api/export/data.json", params={"dataTypeName": "emailSubscribe"})
    assert await control(api, "GET", "/writes") == {"calls": {}, "changes": {}}
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [PUSH]})
    await api.call("POST", UPD, {"email": "a@example.com", "unsubscribedChannelIds": [PUSH]})
    await api.bulk([{"email": "b@example.com"}])
    writes = await control(api, "GET", "/writes")
    assert writes["calls"] == {f"POST {UPD}": 2, "POST /api/users/bulkUpdate": 1}
    assert writes["changes"] == {f"POST {UPD}": 1, "POST /api/users/bulkUpdate": 1}
    await control(api, "POST", "/reset")
    assert await control(api, "GET", "/writes") == {"calls": {}, "changes": {}}
    assert await consent_events(api) == []


async def test_consent_settings_change_over_the_control_api(make_api: MakeApi) -> None:
    api = await make_api()
    await control(api, "POST", "/settings", {"subscriptions_api": False,
                                             "max_subscription_requests": 1})
    closed = await api.call("PATCH", f"/api/subscriptions/messageType/{NEWSLETTER}/user/"
                            "a@example.com")
    assert closed.status == 404
    capped = await api.call("POST", BULK, {"updateSubscriptionsRequests": [
        {"email": "a@example.com"}, {"email": "b@example.com"}]})
    assert capped.body["code"] == "BatchTooLarge"
    bad = await api.session.post(api.emu.control_url + "/settings",
                                 json={"subscriptions_status": 201})
    assert bad.status == 400


async def test_an_export_polling_gap_loses_nothing(make_api: MakeApi) -> None:
    api = await make_api()
    await api.bulk([{"email": "a@example.com"}])
    await control(api, "POST", "/faults", {"kind": "status", "path": "/api/export/data.json",
                                           "status": 503, "times": 2})
    await control(api, "POST", "/click", {"email": "a@example.com", "messageTypeId": NEWSLETTER})
    params = {"dataTypeName": "emailUnSubscribe", "range": "All"}
    gaps = [(await api.call("GET", "/api/export/data.json", params=params)).status
            for _ in range(2)]
    assert gaps == [503, 503]
    after = await api.call("GET", "/api/export/data.json", params=params)
    assert [orjson.loads(x)["messageTypeIds"] for x in after.text.splitlines()] == [[NEWSLETTER]]
