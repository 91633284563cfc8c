"""IterableClient against the Iterable emulator over real HTTP: bulk results, errors, users."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from streamsync.adapters.http import HttpResponse, UsageCounter, make_session, status_error
from streamsync.adapters.iterable import (
    IterableClient,
    UserFailure,
    error_for,
    mismatched_fields,
    parse_bulk_result,
)
from streamsync.adapters.iterable_lists import IterableLists
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig
from streamsync.errors import (
    AuthError,
    BatchError,
    BatchRejected,
    BatchTooLarge,
    RateLimited,
    RecordError,
    TransientError,
    UnexpectedStatus,
)
from streamsync.retry import Policy


@contextlib.asynccontextmanager
async def _emulator(**kw: Any) -> AsyncIterator[IterableEmulator]:
    kw.setdefault("latency_ms", 0.0)
    emu = IterableEmulator(IterableEmulatorConfig(**kw))
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def emu() -> AsyncIterator[IterableEmulator]:
    async with _emulator() as e:
        yield e


def _body(*users: dict[str, Any]) -> bytes:
    return orjson.dumps({"users": list(users)})


@pytest.fixture
async def client(emu: IterableEmulator) -> AsyncIterator[IterableClient]:
    async with make_session(5.0) as session:
        yield IterableClient(session, emu.base_url, emu.api_key, UsageCounter())


async def test_bulk_update_applies_users(emu: IterableEmulator, client: IterableClient) -> None:
    result = await client.bulk_update(_body(
        {"email": "a@example.com", "dataFields": {"firstName": "Ann", "score": 3}},
        {"email": "b@example.com", "dataFields": {"firstName": "Bo"}},
    ))
    assert (result.success_count, result.fail_count, result.failures) == (2, 0, ())
    emu.flush()
    user = await client.get_user(email="a@example.com")
    assert user is not None and user["dataFields"]["firstName"] == "Ann"
    assert client.counter.by_status("iterable", "bulkUpdate") == {"200": 1}


async def test_partial_failures_are_attributed_per_user(client: IterableClient) -> None:
    result = await client.bulk_update(_body(
        {"email": "good@example.com", "dataFields": {"n": 1}},
        {"email": "not an email", "dataFields": {"n": 2}},
        {"email": "Other@Example.com", "dataFields": {"n": 3}},
    ))
    assert result.success_count == 2 and result.fail_count == 1
    assert result.failures == (UserFailure("not an email", "email", "invalid_email"),)
    assert result.reason_for(email="not an email") == "invalid_email"
    assert result.reason_for(email="good@example.com") is None
    assert result.reason_for(email="Other@Example.com") is None


async def test_type_conflict_per_user_is_invalid_data(client: IterableClient) -> None:
    await client.bulk_update(_body({"email": "a@example.com", "dataFields": {"age": 30}}))
    result = await client.bulk_update(_body(
        {"email": "b@example.com", "dataFields": {"age": "thirty"}},
        {"email": "c@example.com", "dataFields": {"age": 41}},
    ))
    assert result.success_count == 1
    assert result.reason_for(email="b@example.com") == "invalid_data"
    assert result.reason_for(email="c@example.com") is None


async def test_whole_batch_type_mismatch_is_batch_rejected_with_fields() -> None:
    async with _emulator(type_mismatch="batch") as emu:
        async with make_session(5.0) as session:
            client = IterableClient(session, emu.base_url, emu.api_key)
            await client.bulk_update(_body({"email": "a@example.com", "dataFields": {"age": 30}}))
            with pytest.raises(BatchRejected) as info:
                await client.bulk_update(_body(
                    {"email": "b@example.com", "dataFields": {"age": "thirty"}},
                    {"email": "c@example.com", "dataFields": {"age": 41}},
                ))
            assert set(info.value.fields) == {"age"}
            assert info.value.fields["age"].get("expectedType") == "long"
            assert info.value.status == 400 and info.value.code == "RequestFieldsTypesMismatched"
            emu.flush()
            assert await client.get_user(email="c@example.com") is None  # nothing applied


@pytest.mark.parametrize(
    "body", [b'{"users": 5}', b'{"users": [', b'["not", "an", "object"]']
)
async def test_bad_bodies_are_batch_errors(client: IterableClient, body: bytes) -> None:
    with pytest.raises(BatchError) as info:
        await client.bulk_update(body)
    assert not isinstance(info.value, BatchRejected | BatchTooLarge)
    assert info.value.code == "BadJsonBody" and info.value.status == 400


async def test_oversized_bodies_are_batch_too_large() -> None:
    users = [{"email": f"u{i}@example.com", "dataFields": {"pad": "x" * 100}} for i in range(20)]
    async with _emulator(max_body_bytes=1000) as emu:
        async with make_session(5.0) as session:
            with pytest.raises(BatchTooLarge) as info:
                await IterableClient(session, emu.base_url, emu.api_key).bulk_update(
                    _body(*users)
                )
            assert info.value.status == 413
    async with _emulator(max_body_bytes=1000, oversize_status=400) as emu:
        async with make_session(5.0) as session:
            with pytest.raises(BatchTooLarge) as info:
                await IterableClient(session, emu.base_url, emu.api_key).bulk_update(
                    _body(*users)
                )
            assert info.value.status == 400 and info.value.code == "BatchTooLarge"
    async with _emulator(max_users_per_request=5) as emu:
        async with make_session(5.0) as session:
            with pytest.raises(BatchTooLarge):
                await IterableClient(session, emu.base_url, emu.api_key).bulk_update(
                    _body(*users)
                )


async def test_429_is_rate_limited_with_retry_after() -> None:
    async with _emulator(retry_after="auto") as emu:
        async with make_session(5.0) as session:
            client = IterableClient(session, emu.base_url, emu.api_key)
            body = _body({"email": "a@example.com", "dataFields": {"n": 1}})
            results = await asyncio.gather(
                *(client.bulk_update(body) for _ in range(8)), return_exceptions=True
            )
            limited = [r for r in results if isinstance(r, RateLimited)]
            assert len(limited) >= 2  # the server's bucket holds 5 (one may refill meanwhile)
            assert all(r.retry_after_s is not None and r.retry_after_s >= 1 for r in limited)
            assert client.counter.by_status("iterable", "bulkUpdate") == {
                "200": 8 - len(limited), "429": len(limited)
            }


async def test_the_shared_limiter_runs_at_the_rate_without_429s() -> None:
    async with _emulator() as emu:
        emu.limits.set_limit("bulkUpdate", 20.0)
        limiter = RateLimiter(20.0, max_in_flight=4)
        async with make_session(5.0) as session:
            client = IterableClient(session, emu.base_url, emu.api_key, bulk_limiter=limiter)
            body = _body({"email": "a@example.com", "dataFields": {"n": 1}})
            started = time.monotonic()
            await asyncio.gather(*(client.bulk_update(body) for _ in range(41)))
            elapsed = time.monotonic() - started
        assert client.counter.by_status("iterable", "bulkUpdate") == {"200": 41}
        assert elapsed >= 1.9  # 40 intervals of 50 ms: never faster than the rate


async def test_a_429_slows_the_shared_limiter_down(emu: IterableEmulator) -> None:
    limiter = RateLimiter(5.0, max_in_flight=2)
    async with make_session(5.0) as session:
        client = IterableClient(session, emu.base_url, emu.api_key, bulk_limiter=limiter)
        emu.faults.fail_next(
            "/api/users/bulkUpdate", status=429, headers={"Retry-After": "1"},
            body={"msg": "Exceeded rate limit", "code": "RateLimitExceeded", "params": {}},
        )
        with pytest.raises(RateLimited):
            await client.bulk_update(_body({"email": "a@example.com"}))
    assert limiter.rate_limited_total == 1
    assert limiter.current_rate_per_s() < 5.0
    assert limiter.in_flight == 0


@pytest.mark.parametrize("endpoint", ["trackBulk", "subscriptions", "getUsers"])
async def test_a_429_slows_every_paced_endpoint_s_limiter_down(emu: IterableEmulator,
                                                               endpoint: str) -> None:
    limiter = RateLimiter(5.0, max_in_flight=2)
    path = {"trackBulk": "/api/events/trackBulk", "subscriptions": "/api/subscriptions/emailList/7",
            "getUsers": "/api/lists/getUsers"}[endpoint]
    emu.faults.fail_next(path, status=429, headers={"Retry-After": "1"},
                         body={"msg": "Exceeded rate limit", "code": "RateLimitExceeded"})
    async with make_session(5.0) as session:
        client = IterableClient(session, emu.base_url, emu.api_key,
                                subscription_limiter=limiter)
        with pytest.raises(RateLimited):
            if endpoint == "trackBulk":
                await client.track_bulk(orjson.dumps({"events": []}), limiter)
            elif endpoint == "subscriptions":
                await client.update_subscription_group("emailList", 7, subscribe=False,
                                                       emails=["a@example.com"])
            else:
                await IterableLists(client, RateLimiter(5.0), reads=limiter).users(7)
    assert limiter.rate_limited_total == 1
    assert limiter.current_rate_per_s() < 5.0
    assert limiter.in_flight == 0


@pytest.mark.usefixtures("no_retry_waits")
async def test_server_errors_drops_and_hangs_are_transient(emu: IterableEmulator) -> None:
    async with make_session(5.0) as session:
        client = IterableClient(session, emu.base_url, emu.api_key, timeout_s=0.3)
        body = _body({"email": "a@example.com"})
        emu.faults.fail_next("/api/users/bulkUpdate", status=503)
        with pytest.raises(TransientError, match="503"):
            await client.bulk_update(body)
        emu.faults.drop_next("/api/users/bulkUpdate")
        with pytest.raises(TransientError, match="network failure"):
            await client.bulk_update(body)
        emu.faults.hang_next("/api/users/bulkUpdate")
        with pytest.raises(TransientError, match="no reply in time"):
            await client.bulk_update(body)
        emu.faults.fail_next("/api/users/bulkUpdate", times=2, status=500)
        retry = Policy(attempts=3)
        result = await retry.call(lambda: client.bulk_update(body))
        assert result.success_count == 1



async def test_a_bad_key_is_an_auth_error_and_the_key_never_shows(
    emu: IterableEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_session(5.0) as session:
        client = IterableClient(session, emu.base_url, "wrong-key-0123456789")
        with pytest.raises(AuthError, match="BadApiKey") as info:
            await client.bulk_update(_body({"email": "a@example.com"}))
        good = IterableClient(session, emu.base_url, lambda: emu.api_key)
        await good.get_fields()
    assert "wrong-key-0123456789" not in str(info.value)
    assert "wrong-key-0123456789" not in repr(client) and emu.api_key not in repr(good)
    assert emu.api_key not in caplog.text and "wrong-key-0123456789" not in caplog.text


async def test_single_user_calls(emu: IterableEmulator, client: IterableClient) -> None:
    await client.update_user({"email": "old@example.com", "dataFields": {"plan": "pro"}})
    emu.flush()
    await client.update_email("new@example.com", current_email="old@example.com")
    emu.flush()
    assert await client.get_user(email="old@example.com") is None
    moved = await client.get_user(email="new@example.com")
    assert moved is not None and moved["dataFields"]["plan"] == "pro"
    await client.update_user({"email": "taken@example.com"})
    emu.flush()
    with pytest.raises(RecordError) as conflict:
        await client.update_email("taken@example.com", current_email="new@example.com")
    assert conflict.value.reason == "conflict"
    with pytest.raises(RecordError) as unknown:
        await client.update_email("x@example.com", current_email="nobody@example.com")
    assert unknown.value.reason == "not_found"
    with pytest.raises(RecordError) as invalid:
        await client.update_user({"email": "nope", "dataFields": {}})
    assert invalid.value.reason == "invalid_email"
    fields = await client.get_fields()
    assert fields.get("plan") == "string"


async def test_user_id_lookups_and_idempotent_deletes(
    emu: IterableEmulator, client: IterableClient
) -> None:
    await client.bulk_update(_body(
        {"email": "a@example.com", "dataFields": {"userId": "003AAA"}},
        {"email": "b@example.com"},
    ))
    emu.flush()
    assert await client.get_user(email="nobody@example.com") is None
    assert await client.get_user(user_id="nobody") is None
    assert await client.delete_user(email="b@example.com") is True
    emu.flush()
    assert await client.delete_user(email="b@example.com") is False
    assert await client.delete_user(user_id="never-seen") is False
    with pytest.raises(ValueError):
        await client.delete_user()


async def test_a_wrong_base_url_is_fatal_not_a_batch_problem(emu: IterableEmulator) -> None:
    async with make_session(5.0) as session:
        client = IterableClient(session, emu.base_url + "/v2", emu.api_key)
        with pytest.raises(UnexpectedStatus) as info:
            await client.bulk_update(_body({"email": "a@example.com"}))
        assert info.value.status == 404
        with pytest.raises(UnexpectedStatus):
            await client.delete_user(email="a@example.com")


def test_parse_bulk_result_merges_deprecated_lists_without_duplicates() -> None:
    result = parse_bulk_result({
        "successCount": 1, "failCount": 4,
        "invalidEmails": ["Bad@x"], "invalidUserIds": [],
        "createdFields": ["score"], "filteredOutFields": ["junk"],
        "failedUpdates": {
            "invalidEmails": ["Bad@x"], "forgottenEmails": ["gone@x.com"],
            "conflictUserIds": ["003X"], "invalidDataEmails": ["typed@x.com"],
            "notFoundEmails": [], "noOpEmails": ["same@x.com"],
        },
    })
    assert result.fail_count == 4
    assert sorted((f.key, f.kind, f.reason) for f in result.failures) == [
        ("003X", "userId", "conflict"),
        ("Bad@x", "email", "invalid_email"),
        ("gone@x.com", "email", "forgotten"),
        ("typed@x.com", "email", "invalid_data"),
    ]
    assert result.reason_for(email="bad@X") == "invalid_email"
    assert result.reason_for(email="same@x.com") is None
    assert result.reason_for(user_id="003X") == "conflict"
    assert result.created_fields == ("score",) and result.filtered_out_fields == ("junk",)


def test_parse_bulk_result_rejects_a_reply_without_counts() -> None:
    with pytest.raises(TransientError):
        parse_bulk_result({"msg": "", "code": "Success"})


def _reply(status: int, body: Any, **headers: str) -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status, CIMultiDictProxy(CIMultiDict(headers)), raw, "iterable", "x")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, {"msg": "Exceeded rate limit.", "code": "RateLimitExceeded"}, RateLimited),
        (401, {"msg": "Invalid API key", "code": "BadApiKey", "params": {}}, AuthError),
        (401, {"msg": "Invalid API key", "code": "Success"}, AuthError),
        (403, {"msg": "no", "code": "Forbidden"}, AuthError),
        (400, {"msg": "bad", "code": "BadParams"}, BatchError),
        (400, {"msg": "x", "code": "RequestFieldsTypesMismatched", "params": {}}, BatchRejected),
        (400, {"msg": "big", "code": "BatchTooLarge"}, BatchTooLarge),
        (413, b"<html>Request Entity Too Large</html>", BatchTooLarge),
        (500, {"msg": "db", "code": "DatabaseError"}, TransientError),
        (502, b"<html>Bad Gateway</html>", TransientError),
        (504, b"", TransientError),
        (404, b"<html>Action not found</html>", UnexpectedStatus),
    ],
)
def test_iterable_error_mapping(status: int, body: Any, error: type[Exception]) -> None:
    assert type(error_for(_reply(status, body))) is error


def test_retry_after_reaches_the_rate_limited_error() -> None:
    mapped = status_error(_reply(429, {"msg": "slow", "code": "RateLimitExceeded"}, **{
        "Retry-After": "2"
    }), error_for)
    assert isinstance(mapped, RateLimited) and mapped.retry_after_s == 2.0
    assert (mapped.api, mapped.endpoint, mapped.status) == ("iterable", mapped.endpoint, 429)


def test_mismatched_fields_strip_the_project_prefix() -> None:
    params = {"validationErrors": {"my_project_etl:::soc_signup_at": {
        "incomingTypes": ["string", "keyword"], "expectedType": "date",
        "offendingValue": "2020-04-13 14:04:09.000", "_type": "UnexpectedType",
    }}}
    fields = mismatched_fields(params)
    assert list(fields) == ["soc_signup_at"] and fields["soc_signup_at"]["expectedType"] == "date"
    assert mismatched_fields(None) == {}
