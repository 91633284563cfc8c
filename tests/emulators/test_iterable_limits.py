"""Iterable emulator limits: token buckets per project/endpoint, body size, user cap, bad JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from streamsync.emulators.iterable import DEFAULT_RATES, Limit, RateLimiter, TokenBucket
from tests.emulators.test_iterable_support import FakeClock, MakeApi, api_factory

RATE_429 = {"code": "RateLimitExceeded", "params": {}}


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


def test_documented_rates() -> None:
    assert DEFAULT_RATES == {
        "bulkUpdate": 5.0, "update": 500.0, "get": 100.0, "delete": 100.0,
        "getFields": 3.0, "forget": 3.0, "track": 2000.0, "trackBulk": 10.0, "getEvents": 100.0,
        "channels": 100.0, "messageTypes": 100.0, "getLists": 100.0,
        "exportData": 4.0 / 60.0, "listSize": 5.0 / 60.0, "listUsers": 5.0 / 60.0,
    }


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(Limit(rate_per_s=5, burst=5), now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(0.0) == pytest.approx(0.2)
    assert bucket.take(0.1) == pytest.approx(0.1)
    assert bucket.take(0.2) == 0.0
    assert bucket.take(10.0) == 0.0
    assert bucket.tokens == pytest.approx(4.0)  # refilled to the burst, not beyond


def test_limiter_is_per_project_and_per_group_and_can_change_or_lift() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(clock=clock, burst={"bulkUpdate": 2})
    assert [limiter.check("p1", "bulkUpdate") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.check("p1", "bulkUpdate") > 0
    assert limiter.check("p2", "bulkUpdate") == 0.0
    assert limiter.check("p1", "update") == 0.0
    assert limiter.check("p1", "updateEmail") == 0.0  # no documented limit
    clock.advance(0.2)
    assert limiter.check("p1", "bulkUpdate") == 0.0
    limiter.set_limit("bulkUpdate", 1, burst=1)
    assert limiter.check("p1", "bulkUpdate") == 0.0
    assert limiter.check("p1", "bulkUpdate") == pytest.approx(1.0)
    limiter.lift("bulkUpdate")
    assert all(limiter.check("p1", "bulkUpdate") == 0.0 for _ in range(100))
    limiter.restore()
    assert limiter.limits()["bulkUpdate"] == {"rate_per_s": 5.0, "burst": 2.0}
    limiter.lift()
    assert limiter.limits() == {}


def test_retry_after_header_modes() -> None:
    limiter = RateLimiter(clock=FakeClock())
    assert limiter.retry_after_header(0.2) is None
    limiter.retry_after = "auto"
    assert limiter.retry_after_header(0.2) == "1"
    assert limiter.retry_after_header(2.5) == "3"
    limiter.retry_after = 60
    assert limiter.retry_after_header(0.2) == "60"


def test_forget_daily_cap() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(clock=clock)
    limiter.forget_daily_cap = 2
    assert limiter.check_forget_cap("p") and limiter.check_forget_cap("p")
    assert not limiter.check_forget_cap("p")
    clock.advance(86_400.0)
    assert limiter.check_forget_cap("p")


async def test_bulk_update_429_after_five_per_second_in_observed_shape(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(rate_limits=True, clock=clock)
    statuses = [(await api.bulk([])).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    reply = await api.bulk([])
    assert reply.body == {
        "msg": f"Exceeded rate limit for endpoint: /api/users/bulkUpdate, "
               f"project: {api.emu.project.id} ",
        **RATE_429,
    }
    assert "Retry-After" not in reply.headers
    # A second project has its own bucket.
    _, other_key = api.emu.add_project()
    ok = await api.call("POST", "/api/users/bulkUpdate", {"users": []}, key=other_key)
    assert ok.status == 200
    # Single-user updates have their own (500/s) bucket.
    assert (await api.update(email="a@example.com")).status == 200
    clock.advance(0.2)
    assert (await api.bulk([])).status == 200
    assert (await api.bulk([])).status == 429
    assert api.emu.state.count("POST /api/users/bulkUpdate", 429) == 3


async def test_get_fields_three_per_second_and_retry_after_when_configured(
    make_api: MakeApi,
) -> None:
    clock = FakeClock()
    api = await make_api(rate_limits=True, clock=clock, retry_after="auto")
    statuses = [(await api.call("GET", "/api/users/getFields")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    reply = await api.call("GET", "/api/users/getFields")
    assert reply.headers["Retry-After"] == "1"


async def test_configurable_burst_and_lifting_over_http(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(rate_limits=True, clock=clock, burst={"bulkUpdate": 1})
    assert [(await api.bulk([])).status for _ in range(2)] == [200, 429]
    lift = await api.call("POST", "/__emulator__/limits/lift", {"group": "bulkUpdate"})
    assert lift.status == 200 and "bulkUpdate" not in lift.body["limits"]
    assert {(await api.bulk([])).status for _ in range(20)} == {200}
    body = {"group": "bulkUpdate", "rate_per_s": 2, "burst": 2}
    assert (await api.call("POST", "/__emulator__/limits", body)).status == 200
    assert [(await api.bulk([])).status for _ in range(3)] == [200, 200, 429]
    await api.call("POST", "/__emulator__/limits/retry-after", {"retry_after": 60})
    assert (await api.bulk([])).headers["Retry-After"] == "60"


def _big_body(min_bytes: int) -> bytes:
    user = {"email": "big@example.com", "dataFields": {"blob": "x" * 30_000}}
    return orjson.dumps({"users": [user] * (min_bytes // 30_000 + 1)})


async def test_body_over_4mb_is_413_or_400_batch_too_large(make_api: MakeApi) -> None:
    api = await make_api()
    raw = _big_body(4 * 1024 * 1024)
    reply = await api.call("POST", "/api/users/bulkUpdate", raw=raw)
    assert reply.status == 413 and "413 Request Entity Too Large" in reply.text
    assert api.emu.state.snapshot() == {}
    api.emu.config.oversize_status = 400
    reply = await api.call("POST", "/api/users/bulkUpdate", raw=raw)
    assert (reply.status, reply.body["code"]) == (400, "BatchTooLarge")
    just_under = _big_body(4 * 1024 * 1024 - 70_000)
    assert len(just_under) <= 4 * 1024 * 1024
    assert (await api.call("POST", "/api/users/bulkUpdate", raw=just_under)).status == 200


async def test_optional_cap_on_users_per_request(make_api: MakeApi) -> None:
    api = await make_api(max_users_per_request=3)
    users = [{"email": f"u{i}@example.com"} for i in range(4)]
    reply = await api.bulk(users)
    assert (reply.status, reply.body["code"]) == (400, "BatchTooLarge")
    assert (await api.bulk(users[:3])).body["successCount"] == 3


async def test_malformed_json_and_wrong_types_name_the_path(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.call("POST", "/api/users/bulkUpdate", raw=b'{"users": [')
    assert (reply.status, reply.body["code"]) == (400, "BadJsonBody")
    assert reply.body["msg"] == "[/api/users/bulkUpdate] Invalid JSON body"
    reply = await api.bulk([
        {"email": "a@example.com"},
        {"email": "b@example.com", "preferUserId": "yes"},
        {"email": 5, "dataFields": []},
    ])
    assert reply.status == 400
    assert reply.body == {
        "msg": "[/api/users/bulkUpdate] Invalid JSON body",
        "code": "BadJsonBody",
        "params": {
            "obj.users[1].preferUserId": "Boolean value expected",
            "obj.users[2].email": "String value expected",
            "obj.users[2].dataFields": "Object value expected",
        },
    }
    assert api.emu.state.snapshot() == {}
    reply = await api.call("POST", "/api/users/bulkUpdate", {"users": {"a": 1}})
    assert reply.body["params"] == {"obj.users": "Array value expected"}
    reply = await api.call("POST", "/api/users/bulkUpdate", {"createNewFields": 1})
    assert reply.body["params"] == {
        "obj.users": "Missing value", "obj.createNewFields": "Boolean value expected"
    }
    reply = await api.bulk([{"dataFields": {"a": 1}}])
    assert reply.status == 400 and reply.body["code"] == "BadParams"
    assert reply.body["params"] == {"obj.users[0]": "Either email or userId must be provided"}
    reply = await api.update(email="a@example.com", mergeNestedObjects="no")
    assert reply.body["params"] == {"obj.mergeNestedObjects": "Boolean value expected"}


async def test_chunked_body_over_the_limit_is_413_too(make_api: MakeApi) -> None:
    api = await make_api()
    raw = _big_body(4 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1 << 20):
            yield raw[start : start + (1 << 20)]

    async with api.session.post(
        api.emu.base_url + "/api/users/update", data=chunks(), headers={"Api-Key": api.key}
    ) as resp:
        assert resp.status == 413
    assert api.emu.state.count("POST /api/users/update", 413) == 1
