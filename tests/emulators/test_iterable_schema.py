"""Every reply shape of the Iterable emulator, validated against the swagger response schemas."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest

from tests.emulators.test_iterable_support import Api, FakeClock, MakeApi, Reply, api_factory

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "iterable-openapi.json"


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = orjson.loads(SPEC_PATH.read_bytes())
    spec = copy.deepcopy(spec)
    # Real replies carry "params": null (recorded traffic); swagger 2.0 cannot say "nullable".
    params = spec["definitions"]["IterableApiResponse"]["properties"]["params"]
    params["type"] = ["object", "null"]
    return spec


SPEC = load_spec()


def validator_for(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator whose `#/definitions/...` refs resolve inside the swagger document."""
    return jsonschema.Draft4Validator({**schema, "definitions": SPEC["definitions"]})


def schema_for(method: str, template: str, status: int) -> dict[str, Any]:
    """The swagger schema of a reply; error replies use the IterableApiResponse envelope."""
    responses = SPEC["paths"][template][method.lower()]["responses"]
    documented = responses.get(str(status), {}).get("schema")
    if status == 200:
        assert documented is not None, (method, template)
        return dict(documented)
    return {"$ref": "#/definitions/IterableApiResponse"}


class Recorder:
    """Makes calls through an Api and keeps (method, swagger path, status, body)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: list[tuple[str, str, int, Any]] = []

    async def __call__(
        self, method: str, template: str, path: str, body: Any = None, **kw: Any
    ) -> Reply:
        reply = await self.api.call(method, path, body, **kw)
        self.seen.append((method, template, reply.status, reply.body))
        return reply


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


def test_the_swagger_file_has_every_endpoint_the_emulator_serves() -> None:
    for template, method in [
        ("/api/users/bulkUpdate", "post"), ("/api/users/update", "post"),
        ("/api/users/{email}", "get"), ("/api/users/getByEmail", "get"),
        ("/api/users/byUserId/{userId}", "get"), ("/api/users/byUserId", "get"),
        ("/api/users/{email}", "delete"), ("/api/users/byUserId/{userId}", "delete"),
        ("/api/users/updateEmail", "post"), ("/api/users/getFields", "get"),
        ("/api/users/forget", "post"),
        ("/api/users/updateSubscriptions", "post"), ("/api/users/bulkUpdateSubscriptions", "post"),
        ("/api/channels", "get"), ("/api/messageTypes", "get"), ("/api/lists", "get"),
        ("/api/lists", "post"), ("/api/lists/{listId}", "delete"), ("/api/lists/subscribe", "post"),
        ("/api/lists/unsubscribe", "post"), ("/api/lists/{listId}/size", "get"),
        ("/api/lists/getUsers", "get"), ("/api/events/track", "post"),
        ("/api/events/trackBulk", "post"), ("/api/events/{email}", "get"),
        ("/api/events/byUserId/{userId}", "get"), ("/api/export/data.json", "get"),
        ("/api/webhooks", "get"), ("/api/webhooks", "post"),
        ("/api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}", "put"),
        ("/api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}/user/{userEmail}", "patch"),
        ("/api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}/byUserId/{userId}",
         "delete"),
    ]:
        assert "200" in SPEC["paths"][template][method]["responses"]


def test_the_validator_rejects_a_reply_missing_required_counts() -> None:
    v = validator_for({"$ref": "#/definitions/UserBulkUpdateListResponse"})
    assert not v.is_valid({"failCount": 0})
    wrong_list = {"invalidEmails": 1}
    assert not v.is_valid({"successCount": 1, "failCount": 0, "failedUpdates": wrong_list})
    assert v.is_valid({"successCount": 1, "failCount": 0})


async def test_every_reply_shape_matches_the_swagger(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(project_type="email", rate_limits=True, clock=clock)
    rec = Recorder(api)
    bulk, upd = "/api/users/bulkUpdate", "/api/users/update"
    # bulkUpdate: success with every kind of per-user failure, and the request-level errors.
    await rec("POST", bulk, bulk, {"users": [
        {"email": "a@example.com", "userId": "ua", "dataFields": {"n": 1, "o": {"x": "y"}}},
        {"email": "bad"}, {"email": "b@example.com", "userId": " "},
        {"userId": "ghost"}, {"email": "c@example.com", "dataFields": {"n": "x"}},
    ]})
    await rec("POST", "/api/users/forget", "/api/users/forget", {"email": "f@example.com"})
    await rec("POST", bulk, bulk, {"users": [{"email": "f@example.com"}]}, )
    await rec("POST", bulk, bulk, {"users": [{"email": "n@example.com", "dataFields": {"z": 1}}],
                                   "createNewFields": False})
    await rec("POST", bulk, bulk, raw=b"{not json")
    await rec("POST", bulk, bulk, {"users": [{"preferUserId": 1}]})
    await rec("POST", bulk, bulk, {"users": []}, key="wrong")
    for _ in range(3):
        await rec("POST", bulk, bulk, {"users": []})
    clock.advance(1.0)
    api.emu.config.type_mismatch = "batch"
    await rec("POST", bulk, bulk, {"users": [{"email": "a@example.com", "dataFields": {"n": "s"}}]})
    api.emu.config.max_fields = len(api.emu.project.fields)
    await rec("POST", bulk, bulk, {"users": [{"email": "a@example.com", "dataFields": {"q": 1}}]})
    api.emu.config.max_users_per_request = 1
    await rec("POST", bulk, bulk, {"users": [{"email": "a@example.com"}] * 2})
    api.emu.config.oversize_status = 400
    api.emu.config.max_body_bytes = 10
    await rec("POST", bulk, bulk, {"users": [{"email": "a@example.com"}]})
    api.emu.config.max_body_bytes = 4 * 1024 * 1024
    # Single-user endpoints.
    await rec("POST", upd, upd, {"email": "a@example.com", "dataFields": {"n": 2}})
    await rec("POST", upd, upd, {"email": "nope"})
    await rec("POST", upd, upd, {"email": "f@example.com"})
    await rec("POST", upd, upd, {"userId": "ghost"})
    await rec("POST", upd, upd, {"email": "a@example.com", "dataFields": {"n": "s"}})
    ue = "/api/users/updateEmail"
    await rec("POST", ue, ue, {"currentEmail": "a@example.com", "newEmail": "a2@example.com"})
    await rec("POST", ue, ue, {"currentEmail": "sayan", "newEmail": "x@example.com"})
    await rec("POST", ue, ue, {"currentEmail": "a2@example.com", "newEmail": "f@example.com"})
    await rec("POST", ue, ue, {"currentEmail": "zz@example.com", "newEmail": "x@example.com"})
    # Reads.
    await rec("GET", "/api/users/{email}", "/api/users/a2@example.com")
    await rec("GET", "/api/users/{email}", "/api/users/none@example.com")
    await rec("GET", "/api/users/getByEmail", "/api/users/getByEmail",
              params={"email": "a2@example.com"})
    await rec("GET", "/api/users/getByEmail", "/api/users/getByEmail")
    await rec("GET", "/api/users/byUserId/{userId}", "/api/users/byUserId/ua")
    await rec("GET", "/api/users/byUserId", "/api/users/byUserId", params={"userId": "ua"})
    await rec("GET", "/api/users/byUserId", "/api/users/byUserId", params={"userId": "nobody"})
    await rec("GET", "/api/users/getFields", "/api/users/getFields")
    for _ in range(3):
        await rec("GET", "/api/users/getFields", "/api/users/getFields")
    # Deletes and forget.
    await rec("DELETE", "/api/users/{email}", "/api/users/a2@example.com")
    await rec("DELETE", "/api/users/{email}", "/api/users/a2@example.com")
    await rec("POST", bulk, bulk, {"users": [{"email": "d@example.com", "userId": "ud"}]})
    await rec("DELETE", "/api/users/byUserId/{userId}", "/api/users/byUserId/ud")
    await rec("POST", "/api/users/forget", "/api/users/forget", {"userId": "ud"})
    await rec("POST", "/api/users/forget", "/api/users/forget", {"email": "not valid"})

    statuses = {(m, t, s) for m, t, s, _ in rec.seen}
    for expected in [
        ("POST", bulk, 200), ("POST", bulk, 400), ("POST", bulk, 401), ("POST", bulk, 429),
        ("POST", upd, 200), ("POST", upd, 400), ("POST", upd, 409),
        ("POST", ue, 200), ("POST", ue, 400), ("POST", ue, 409),
        ("GET", "/api/users/getFields", 429), ("DELETE", "/api/users/{email}", 404),
    ]:
        assert expected in statuses, expected
    codes = {body["code"] for _, _, s, body in rec.seen if s != 200}
    assert codes >= {
        "BadJsonBody", "BadParams", "BadApiKey", "RateLimitExceeded", "BatchTooLarge",
        "RequestFieldsTypesMismatched", "UniqueFieldsLimitExceeded", "InvalidEmailAddressError",
        "ForgottenUserError", "UnknownUserIdError", "UnknownEmailError", "NotFound",
    }
    for method, template, status, body in rec.seen:
        validator = validator_for(schema_for(method, template, status))
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (method, template, status, body)
    bulk_200 = [b for m, t, s, b in rec.seen if t == bulk and s == 200]
    for body in bulk_200:
        assert set(body["failedUpdates"]) == {
            "invalidEmails", "invalidUserIds", "notFoundEmails", "notFoundUserIds",
            "invalidDataEmails", "invalidDataUserIds", "conflictEmails", "conflictUserIds",
            "forgottenEmails", "forgottenUserIds",
        }
    first = bulk_200[0]
    assert (first["successCount"], first["failCount"]) == (1, 4)


async def test_hybrid_and_user_id_project_reply_shapes(make_api: MakeApi) -> None:
    for project_type in ("hybrid", "userId"):
        api = await make_api(project_type=project_type)
        rec = Recorder(api)
        bulk = "/api/users/bulkUpdate"
        await rec("POST", bulk, bulk, {"users": [
            {"email": "a@example.com", "userId": "ua"}, {"email": "b@example.com", "userId": "ub"},
            {"userId": "ua", "dataFields": {"email": "b@example.com"}},
            {"userId": "ua", "dataFields": {"userId": "ub"}}, {"email": "only@example.com"},
        ]})
        await rec("GET", "/api/users/byUserId/{userId}", "/api/users/byUserId/ua")
        await rec("DELETE", "/api/users/byUserId/{userId}", "/api/users/byUserId/ub")
        for method, template, status, body in rec.seen:
            validator = validator_for(schema_for(method, template, status))
            assert [e.message for e in validator.iter_errors(body)] == [], (project_type, body)


async def test_user_without_email_is_the_one_documented_departure(make_api: MakeApi) -> None:
    """ApiResponseUser requires `email`, which a userID-based user without one cannot have."""
    api = await make_api(project_type="userId")
    await api.update(userId="no-email", dataFields={"a": 1})
    user = (await api.get_user_id("no-email")).body["user"]
    assert "email" not in user and user["userId"] == "no-email"
    validator = validator_for(schema_for("GET", "/api/users/byUserId/{userId}", 200))
    assert [e.validator for e in validator.iter_errors({"user": user})] == ["required"]


async def test_subscription_list_event_export_replies_match_the_swagger(
    make_api: MakeApi,
) -> None:
    """Every JSON reply of the consent, list, event, export and webhook endpoints."""
    clock = FakeClock()
    api = await make_api(project_type="email", rate_limits=True, clock=clock)
    rec = Recorder(api)
    subs = "/api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
    one = subs + "/user/{userEmail}"
    by_uid = subs + "/byUserId/{userId}"
    upd, bulk = "/api/users/updateSubscriptions", "/api/users/bulkUpdateSubscriptions"
    lists, sub, unsub = "/api/lists", "/api/lists/subscribe", "/api/lists/unsubscribe"
    track, track_bulk = "/api/events/track", "/api/events/trackBulk"
    await rec("GET", "/api/channels", "/api/channels")
    await rec("GET", "/api/messageTypes", "/api/messageTypes")
    created = await rec("POST", lists, lists, {"name": "L", "description": "d"})
    lid = created.body["listId"]
    await rec("POST", lists, lists, {"description": "no name"})
    await rec("GET", lists, lists)
    await rec("POST", upd, upd, {"email": "a@example.com", "emailListIds": [lid],
                                 "unsubscribedChannelIds": [39581]})
    await rec("POST", upd, upd, {"email": "bad", "emailListIds": []})
    await rec("POST", upd, upd, {"email": "a@example.com", "emailListIds": [1]})
    await rec("POST", bulk, bulk, {"updateSubscriptionsRequests": [
        {"email": "a@example.com", "unsubscribedMessageTypeIds": [48921]}, {"email": "bad"},
        {"userId": "ghost", "emailListIds": []}]})
    await rec("POST", bulk, bulk, {"updateSubscriptionsRequests": "x"})
    await rec("PATCH", one, f"/api/subscriptions/emailList/{lid}/user/b@example.com")
    await rec("DELETE", by_uid, "/api/subscriptions/messageType/48922/byUserId/ghost")
    await rec("DELETE", one, "/api/subscriptions/channel/1/user/b@example.com")
    await rec("PUT", subs, "/api/subscriptions/messageChannel/39581", {
        "users": ["a@example.com"], "usersByUserId": ["ghost"]}, params={"action": "subscribe"})
    api.emu.config.subscriptions_status = 202
    await rec("PATCH", one, "/api/subscriptions/messageChannel/39581/user/c@example.com")
    api.emu.config.subscriptions_api = False
    await rec("PATCH", one, "/api/subscriptions/messageChannel/39581/user/c@example.com")
    await rec("POST", sub, sub, {"listId": lid, "subscribers": [
        {"email": "d@example.com", "dataFields": {"x": 1}}, {"email": "bad"}]})
    await rec("POST", sub, sub, {"listId": 5, "subscribers": []})
    await rec("POST", unsub, unsub, {"listId": lid, "subscribers": [
        {"email": "d@example.com"}, {"email": "zz@example.com"}]})
    await rec("POST", track, track, {"email": "a@example.com", "eventName": "e", "id": "i-1"})
    await rec("POST", track, track, {"email": "bad", "eventName": "e"})
    await rec("POST", track_bulk, track_bulk, {"events": [
        {"email": "a@example.com", "eventName": "e", "dataFields": {"f": 1}},
        {"email": "bad", "eventName": "e"}, {"email": "zz@example.com", "eventName": "e"}]})
    await rec("POST", track_bulk, track_bulk, {"events": [{"eventName": 1}]})
    await rec("GET", "/api/events/{email}", "/api/events/a@example.com")
    await rec("GET", "/api/events/{email}", "/api/events/a@example.com", params={"limit": "0"})
    await rec("GET", "/api/events/byUserId/{userId}", "/api/events/byUserId/nobody")
    await rec("GET", "/api/webhooks", "/api/webhooks")
    await rec("POST", "/api/webhooks", "/api/webhooks", {"id": 1, "enabled": True})
    await rec("POST", "/api/webhooks", "/api/webhooks", {"id": 2})
    await rec("DELETE", "/api/lists/{listId}", f"/api/lists/{lid}")
    export = "/api/export/data.json"
    for _ in range(5):
        await rec("GET", export, export, params={"dataTypeName": "emailSubscribe"})
    await rec("GET", "/api/lists/{listId}/size", "/api/lists/77/size")

    statuses = {(m, t, s) for m, t, s, _ in rec.seen}
    for expected in [("POST", upd, 400), ("PATCH", one, 202), ("PATCH", one, 404),
                     ("GET", export, 429), ("POST", track_bulk, 400), ("POST", sub, 400)]:
        assert expected in statuses, expected
    checked = 0
    for method, template, status, body in rec.seen:
        if body is None:  # text/plain or x-json-stream replies are strings in the swagger
            continue
        validator = validator_for(schema_for(method, template, status))
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (method, template, status, body)
        checked += 1
    assert checked >= 30
