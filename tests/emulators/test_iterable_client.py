"""The third-party `iterable-api` client (PyPI), pointed at the emulator, works unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from iterable import Iterable
from iterable.exceptions import AuthorizationError, InvalidParameters
from iterable.helpers import bulk_update

from tests.emulators.test_iterable_support import MakeApi, api_factory


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


def client_session(base_url: str, api_key: str) -> dict[str, Any]:
    """Runs in a worker thread: the client is synchronous (requests)."""
    client = Iterable(api_key, base_uri=base_url)
    out: dict[str, Any] = {}
    users = [
        {"email": f"Person{i}@Example.com", "userId": f"u{i}",
         "dataFields": {"firstName": f"P{i}", "score": i, "vip": i % 2 == 0}}
        for i in range(120)
    ]
    out["bulk"] = [r.data for r in bulk_update(client, [
        {"email": u["email"], "user_id": u["userId"], "data_fields": u["dataFields"]}
        for u in users
    ])]
    out["direct_bulk"] = client.users.bulk_update(
        [{"email": "bad-address", "dataFields": {}}, {"email": "x@example.com", "dataFields": {}}]
    ).data
    out["get"] = client.users.get(email="person7@example.com").data
    out["get_by_id"] = client.users.get(user_id="u8").data
    out["get_missing"] = client.users.get(email="ghost@example.com").data
    out["update"] = client.users.update(
        email="person7@example.com", data_fields={"score": 700}
    ).data
    out["after_update"] = client.users.get(email="person7@example.com").data
    out["update_email"] = client.users.update_email(
        "person9@example.com", "renamed9@example.com"
    ).data
    out["fields"] = client.users.get_fields().data
    out["delete"] = client.users.delete(email="person7@example.com").data
    out["delete_by_id"] = client.users.delete(user_id="u8").data
    out["after_delete"] = client.users.get(email="person7@example.com").data
    try:
        client.users.update(email="not an email")
    except InvalidParameters as exc:
        out["invalid"] = exc.args[0]
    try:
        Iterable("wrong-key", base_uri=base_url).users.get_fields()
    except AuthorizationError as exc:
        out["unauthorized"] = exc.args[0]
    return out


async def test_iterable_api_client_bulk_updates_reads_and_deletes(make_api: MakeApi) -> None:
    api = await make_api(project_type="email")
    out = await asyncio.to_thread(client_session, api.emu.base_url, api.emu.api_key)
    assert [b["successCount"] for b in out["bulk"]] == [50, 50, 20]
    assert all(b["failCount"] == 0 for b in out["bulk"])
    assert out["direct_bulk"]["failedUpdates"]["invalidEmails"] == ["bad-address"]
    assert out["get"]["user"]["email"] == "person7@example.com"
    assert out["get"]["user"]["dataFields"]["firstName"] == "P7"
    assert out["get_by_id"]["user"]["userId"] == "u8"
    assert out["get_missing"] == {}
    assert out["update"] == {"msg": "", "code": "Success", "params": None}
    assert out["after_update"]["user"]["dataFields"]["score"] == 700
    assert out["update_email"]["code"] == "Success"
    assert out["fields"]["fields"]["score"] == "long"
    assert out["fields"]["fields"]["vip"] == "boolean"
    assert out["delete"]["code"] == "Success" and out["delete_by_id"]["code"] == "Success"
    assert out["after_delete"] == {}
    assert out["invalid"]["code"] == "InvalidEmailAddressError"
    assert out["unauthorized"]["code"] == "BadApiKey"
    snapshot = api.emu.state.snapshot()
    assert "renamed9@example.com" in snapshot and "person9@example.com" not in snapshot
    assert "person8@example.com" not in snapshot
    assert len(snapshot) == 120 - 2 + 1  # two deleted, plus x@example.com
