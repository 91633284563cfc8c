"""Iterable emulator faults, write lag and queue ordering, observability and the control API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from streamsync.emulators.iterable import FaultPlan
from tests.emulators.test_iterable_support import FakeClock, MakeApi, api_factory


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_next_n_calls_fail_with_status_then_recover(make_api: MakeApi, status: int) -> None:
    api = await make_api()
    api.emu.faults.fail_next("/api/users/bulkUpdate", times=2, status=status)
    users = [{"email": "a@example.com"}]
    first, second, third = [await api.bulk(users) for _ in range(3)]
    assert (first.status, second.status, third.status) == (status, status, 200)
    assert isinstance(first.body["code"], str) and "msg" in first.body
    assert third.body["successCount"] == 1
    assert api.emu.state.count("POST /api/users/bulkUpdate", status) == 2
    # The failed calls did not write anything: only the third was applied.
    assert len(api.emu.state.history("a@example.com")) == 1


async def test_fault_body_headers_method_and_prefix_matching(make_api: MakeApi) -> None:
    api = await make_api()
    api.emu.faults.fail_next(
        "/api/users/*", status=503, body="upstream down", headers={"Retry-After": "7"},
        method="GET",
    )
    assert (await api.update(email="a@example.com")).status == 200
    reply = await api.get_email("a@example.com")
    assert (reply.status, reply.text, reply.headers["Retry-After"]) == (503, "upstream down", "7")
    assert (await api.get_email("a@example.com")).status == 200
    assert api.emu.faults.triggered == [
        {"kind": "status", "method": "GET", "path": "/api/users/a@example.com"}
    ]


def test_fault_plan_validates_its_input() -> None:
    plan = FaultPlan()
    with pytest.raises(ValueError, match="unknown fault kind"):
        plan.add("explode", "*")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        plan.fail_next(times=0)
    with pytest.raises(ValueError, match="4xx/5xx"):
        plan.fail_next(status=200)
    plan.fail_next("/a", times=2)
    assert plan.take("POST", "/b") is None
    assert plan.take("POST", "/a") is not None and plan.pending()[0]["remaining"] == 1
    assert plan.take("POST", "/a") is not None and plan.pending() == []


async def test_hang_outlasts_the_client_timeout(make_api: MakeApi) -> None:
    api = await make_api()
    api.emu.faults.hang_next("/api/users/update", delay_s=30.0)
    timeout = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with api.session.post(
            api.emu.base_url + "/api/users/update", json={"email": "h@example.com"},
            headers={"Api-Key": api.key}, timeout=timeout,
        ) as resp:
            await resp.read()
    assert (await api.update(email="h@example.com")).status == 200


async def test_drop_closes_the_connection_without_an_answer(make_api: MakeApi) -> None:
    api = await make_api()
    api.emu.faults.drop_next("/api/users/bulkUpdate")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.bulk([{"email": "x@example.com"}])
    assert api.emu.state.count("POST /api/users/bulkUpdate", 0) == 1
    assert api.emu.state.snapshot() == {}
    assert (await api.bulk([{"email": "x@example.com"}])).status == 200


async def test_slow_answers_late_but_correctly(make_api: MakeApi) -> None:
    api = await make_api()
    api.emu.faults.slow_next("/api/users/getFields", delay_s=0.3)
    t0 = time.perf_counter()
    reply = await api.call("GET", "/api/users/getFields")
    assert reply.status == 200 and time.perf_counter() - t0 >= 0.3


async def test_faults_through_the_control_api(make_api: MakeApi) -> None:
    api = await make_api()
    body = {"kind": "status", "path": "/api/users/bulkUpdate", "times": 1, "status": 502}
    armed = await api.call("POST", "/__emulator__/faults", body)
    assert armed.status == 200 and armed.body["remaining"] == 1
    listed = await api.call("GET", "/__emulator__/faults")
    assert listed.body["pending"][0]["status"] == 502
    assert (await api.bulk([])).status == 502
    await api.call("POST", "/__emulator__/faults", {"kind": "drop", "path": "*", "times": 5})
    assert (await api.call("DELETE", "/__emulator__/faults")).body == {"pending": []}
    assert (await api.bulk([])).status == 200
    bad = await api.call("POST", "/__emulator__/faults", {"kind": "nope"})
    assert bad.status == 400


async def test_writes_apply_after_the_configured_lag(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(lag_s=2.0, clock=clock)
    reply = await api.bulk([{"email": "l@example.com", "dataFields": {"v": 1}}])
    assert reply.body["successCount"] == 1
    assert (await api.get_email("l@example.com")).body == {}
    assert api.emu.state.pending() == {"bulk": 1, "single": 0}
    clock.advance(1.0)
    assert api.emu.apply_due() == 0
    clock.advance(1.0)
    assert api.emu.apply_due() == 1
    assert (await api.get_email("l@example.com")).body["user"]["dataFields"]["v"] == 1
    (entry,) = api.emu.state.history("l@example.com")
    assert entry["applied_mono"] - entry["received_mono"] == pytest.approx(2.0)
    assert entry["queue"] == "bulk" and entry["outcome"] == "created"
    assert entry["received_wall"] > 1e9


async def test_bulk_and_single_queues_reproduce_the_ordering_caveat(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(bulk_lag_s=5.0, single_lag_s=0.0, clock=clock)
    await api.update(email="o@example.com", dataFields={"v": "created"})
    await api.bulk([{"email": "o@example.com", "dataFields": {"v": "from-bulk"}}])
    clock.advance(1.0)
    await api.update(email="o@example.com", dataFields={"v": "from-single"})
    assert (await api.get_email("o@example.com")).body["user"]["dataFields"]["v"] == "from-single"
    clock.advance(5.0)
    api.emu.apply_due()
    # The later single-user write lost to the earlier bulk write that was applied after it.
    assert (await api.get_email("o@example.com")).body["user"]["dataFields"]["v"] == "from-bulk"
    history = api.emu.state.history("o@example.com")
    assert [h["dataFields"]["v"] for h in history] == ["created", "from-single", "from-bulk"]
    assert history[1]["received_mono"] > history[2]["received_mono"]
    assert history[1]["applied_mono"] < history[2]["applied_mono"]


async def test_background_runner_applies_due_writes(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(lag_s=1.0, clock=clock)
    await api.bulk([{"email": "r@example.com"}])
    clock.advance(1.0)
    api.emu.state.wakeup.set()
    for _ in range(20):
        if api.emu.state.pending()["bulk"] == 0:
            break
        await asyncio.sleep(0)
    assert api.emu.state.pending()["bulk"] == 0
    assert "r@example.com" in api.emu.state.snapshot()


async def test_flush_and_lag_settings_over_the_control_api(make_api: MakeApi) -> None:
    clock = FakeClock()
    api = await make_api(clock=clock)
    settings = {"bulk_lag_s": 30, "single_lag_s": 30, "type_mismatch": "batch"}
    assert (await api.call("POST", "/__emulator__/settings", settings)).status == 200
    await api.bulk([{"email": "q@example.com", "dataFields": {"n": 1}}])
    await api.call("DELETE", "/api/users/q@example.com")  # not visible yet: 404
    assert (await api.call("GET", "/__emulator__/state")).body["pending_writes"]["bulk"] == 1
    assert (await api.call("POST", "/__emulator__/flush")).body == {"applied": 1}
    assert "q@example.com" in api.emu.state.snapshot()
    reply = await api.bulk([{"email": "q@example.com", "dataFields": {"n": "s"}}])
    assert reply.status == 400
    bad = await api.call("POST", "/__emulator__/settings", {"type_mismatch": "sometimes"})
    assert bad.status == 400


async def test_counts_snapshot_and_history_via_python_and_control_api(make_api: MakeApi) -> None:
    api = await make_api(project_type="hybrid")
    await api.bulk([{"email": "s@example.com", "userId": "us", "dataFields": {"a": 1}},
                    {"email": "bad"}])
    await api.update(userId="us", dataFields={"b": True})
    await api.get_email("s@example.com")
    await api.call("GET", "/api/users/getFields", key="bad-key")
    counts = (await api.call("GET", "/__emulator__/counts")).body
    assert counts["POST /api/users/bulkUpdate"] == {"200": 1}
    assert counts["POST /api/users/update"] == {"200": 1}
    assert counts["GET /api/users/{email}"] == {"200": 1}
    assert counts["GET /api/users/getFields"] == {"401": 1}
    assert counts == api.emu.state.counts()
    snap = (await api.call("GET", "/__emulator__/snapshot")).body
    assert snap == api.emu.state.snapshot() == {
        "s@example.com": {"email": "s@example.com", "userId": "us",
                          "dataFields": {"a": 1, "b": True}},
    }
    history = (await api.call("GET", "/__emulator__/history", params={"key": "us"})).body
    assert [h["endpoint"] for h in history] == [
        "POST /api/users/bulkUpdate", "POST /api/users/update"
    ]
    assert history[0]["received_mono"] <= history[1]["received_mono"]
    assert history[0]["received_wall"] <= history[1]["received_wall"]
    refused = api.emu.state.history("bad")
    assert refused[0]["outcome"] == "rejected: invalidEmails"
    assert (await api.call("GET", "/__emulator__/history")).status == 400


async def test_control_api_projects_keys_and_reset(make_api: MakeApi) -> None:
    api = await make_api()
    created = (await api.call("POST", "/__emulator__/projects", {"project_type": "userId"})).body
    key = created["api_key"]
    assert (await api.call("POST", "/api/users/update", {"userId": "u1"}, key=key)).status == 200
    project = {"project": created["project_id"]}
    snap = await api.call("GET", "/__emulator__/snapshot", params=project)
    assert set(snap.body) == {"u1"}
    extra = (await api.call("POST", "/__emulator__/keys", {"kind": "read_only"})).body["api_key"]
    assert (await api.call("GET", "/api/users/getFields", key=extra)).status == 200
    await api.call("POST", "/__emulator__/keys/disable", {"api_key": extra})
    assert (await api.call("GET", "/api/users/getFields", key=extra)).status == 401
    assert (await api.call("POST", "/__emulator__/reset")).status == 200
    assert api.emu.state.snapshot(created["project_id"]) == {}
    assert api.emu.state.counts() == {}
