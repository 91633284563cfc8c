"""Iterable emulator endpoints over HTTP: CLI, auth, reads, writes, deletes, updateEmail, forget."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.emulators.test_iterable_support import Api, MakeApi, api_factory

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "streamsync" / "emulators" / "iterable"
SUCCESS = {"msg": "", "code": "Success", "params": None}


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api(project_type="email")


def test_package_imports_nothing_from_the_rest_of_streamsync() -> None:
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("streamsync"), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("streamsync") for a in node.names), path.name


async def test_cli_prints_one_json_line_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamsync.emulators.iterable", "--host", "127.0.0.1",
        "--port", "0", "--project-type", "hybrid", "--latency-ms", "0", "--lag-s", "0",
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        info = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert info["base_url"].startswith("http://127.0.0.1:")
        assert not info["base_url"].endswith(":0") and len(info["api_key"]) == 32
        assert info["project_type"] == "hybrid"
        async with aiohttp.ClientSession() as s:
            url = info["base_url"] + "/api/users/getFields"
            async with s.get(url, headers={"Api-Key": info["api_key"]}) as resp:
                assert resp.status == 200
                assert (await resp.json())["fields"]["email"] == "string"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_unknown_user_is_200_empty_object_on_every_read_path(api: Api) -> None:
    for path in ("/api/users/nobody@example.com", "/api/users/byUserId/nobody"):
        reply = await api.call("GET", path)
        assert (reply.status, reply.body) == (200, {})
    reply = await api.call("GET", "/api/users/getByEmail", params={"email": "x@example.com"})
    assert (reply.status, reply.body) == (200, {})
    reply = await api.call("GET", "/api/users/byUserId", params={"userId": "u1"})
    assert (reply.status, reply.body) == (200, {})


async def test_written_user_is_readable_on_all_four_read_paths(api: Api) -> None:
    reply = await api.update(email="Ann@Example.com", userId="u-1", dataFields={"plan": "pro"})
    assert (reply.status, reply.body) == (200, SUCCESS)
    paths = [
        ("/api/users/ann@example.com", None),
        ("/api/users/getByEmail", {"email": "ANN@example.com"}),
        ("/api/users/byUserId/u-1", None),
        ("/api/users/byUserId", {"userId": "u-1"}),
    ]
    for path, params in paths:
        reply = await api.call("GET", path, params=params)
        assert reply.status == 200
        user = reply.body["user"]
        assert user["email"] == "ann@example.com" and user["userId"] == "u-1"
        assert user["dataFields"]["plan"] == "pro"
        assert user["dataFields"]["email"] == "ann@example.com"


async def test_api_key_header_and_underscore_variant_and_401_shape(api: Api) -> None:
    ok = await api.call("GET", "/api/users/getFields", headers={"Api-Key": "", "Api_Key": api.key})
    assert ok.status == 200
    bad = await api.call("GET", "/api/users/getFields", key="not-a-key")
    assert bad.status == 401
    assert bad.body == {
        "msg": "Invalid API key",
        "code": "BadApiKey",
        "params": {"ip": "127.0.0.1", "endpoint": "/api/users/getFields"},
    }


async def test_keys_map_to_separate_projects_and_disabled_or_read_only_keys_are_refused(
    api: Api,
) -> None:
    other_project, other_key = api.emu.add_project("userId")
    await api.update(email="a@example.com", dataFields={"x": 1})
    assert (await api.call("GET", "/api/users/a@example.com", key=other_key)).body == {}
    second_key = api.emu.add_key()
    assert (await api.call("GET", "/api/users/a@example.com", key=second_key)).body != {}
    read_only = api.emu.add_key(kind="read_only")
    assert (await api.call("GET", "/api/users/a@example.com", key=read_only)).status == 200
    refused = await api.call(
        "POST", "/api/users/update", {"email": "a@example.com"}, key=read_only
    )
    assert refused.status == 401
    assert refused.body["msg"] == "Disabled API key or insufficient privileges"
    assert refused.body["params"]["apiKeyType"] == "ReadOnly"
    assert refused.body["params"]["apiKeyIdentifier"] == read_only[-8:]
    api.emu.state.disable_key(second_key)
    disabled = await api.call("GET", "/api/users/getFields", key=second_key)
    assert (disabled.status, disabled.body["code"]) == (401, "BadApiKey")
    assert other_project in api.emu.state.projects


async def test_unknown_route_is_404_action_not_found_html(api: Api) -> None:
    reply = await api.call("GET", "/api/nothing/here")
    assert reply.status == 404 and "Action not found" in reply.text


async def test_delete_by_email_and_by_user_id(api: Api) -> None:
    await api.bulk([{"email": "a@example.com", "userId": "dup"}, {"email": "b@example.com"}])
    await api.update(email="c@example.com", dataFields={"userId": "dup"})
    reply = await api.call("DELETE", "/api/users/A@example.com")
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await api.get_email("a@example.com")).body == {}
    # Email-based projects do not enforce userId uniqueness; deleting by userId removes all.
    assert (await api.get_email("c@example.com")).body["user"]["userId"] == "dup"
    reply = await api.call("DELETE", "/api/users/byUserId/dup")
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await api.get_email("c@example.com")).body == {}
    assert (await api.get_email("b@example.com")).body != {}
    missing = await api.call("DELETE", "/api/users/ghost@example.com")
    assert (missing.status, missing.body["msg"]) == (404, "User does not exist")


async def test_delete_by_email_is_refused_in_user_id_projects(make_api: MakeApi) -> None:
    api = await make_api(project_type="userId")
    await api.update(userId="u1", email="a@example.com")
    reply = await api.call("DELETE", "/api/users/a@example.com")
    assert (reply.status, reply.body["code"]) == (400, "BadParams")
    assert (await api.call("DELETE", "/api/users/byUserId/u1")).status == 200


async def test_update_email_moves_the_profile_and_refuses_taken_or_forgotten_targets(
    api: Api,
) -> None:
    await api.bulk([
        {"email": "old@example.com", "dataFields": {"n": 1}},
        {"email": "taken@example.com"},
    ])
    body = {"currentEmail": "old@example.com", "newEmail": "New@Example.com"}
    reply = await api.call("POST", "/api/users/updateEmail", body)
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await api.get_email("old@example.com")).body == {}
    assert (await api.get_email("new@example.com")).body["user"]["dataFields"]["n"] == 1
    clash = {"currentEmail": "new@example.com", "newEmail": "taken@example.com"}
    reply = await api.call("POST", "/api/users/updateEmail", clash)
    assert (reply.status, reply.body["code"]) == (409, "EmailAlreadyExists")
    await api.call("POST", "/api/users/forget", {"email": "gone@example.com"})
    gone = {"currentEmail": "new@example.com", "newEmail": "gone@example.com"}
    reply = await api.call("POST", "/api/users/updateEmail", gone)
    assert (reply.status, reply.body["code"]) == (409, "ForgottenUserError")
    invalid = {"currentEmail": "sayan", "newEmail": "x@example.com"}
    reply = await api.call("POST", "/api/users/updateEmail", invalid)
    assert reply.status == 400
    assert reply.body == {
        "msg": "Invalid currentEmail sayan", "code": "InvalidEmailAddressError", "params": None
    }
    unknown = {"currentEmail": "who@example.com", "newEmail": "x@example.com"}
    assert (await api.call("POST", "/api/users/updateEmail", unknown)).status == 400


async def test_update_email_by_current_user_id(api: Api) -> None:
    await api.update(email="a@example.com", userId="u9")
    body = {"currentUserId": "u9", "newEmail": "b@example.com"}
    assert (await api.call("POST", "/api/users/updateEmail", body)).status == 200
    assert (await api.get_user_id("u9")).body["user"]["email"] == "b@example.com"


async def test_forget_deletes_and_blocks_future_writes(api: Api) -> None:
    await api.update(email="f@example.com", dataFields={"a": 1})
    reply = await api.call("POST", "/api/users/forget", {"email": "F@example.com"})
    assert (reply.status, reply.body) == (200, SUCCESS)
    assert (await api.get_email("f@example.com")).body == {}
    bulk = await api.bulk([{"email": "f@example.com", "dataFields": {"a": 2}}])
    assert bulk.body["failedUpdates"]["forgottenEmails"] == ["f@example.com"]
    assert (bulk.body["successCount"], bulk.body["failCount"]) == (0, 1)
    single = await api.update(email="f@example.com")
    assert (single.status, single.body["code"]) == (409, "ForgottenUserError")
    by_user_id = await api.call("POST", "/api/users/forget", {"userId": "u"})
    assert (by_user_id.status, by_user_id.body["code"]) == (400, "BadParams")
    await api.call("POST", "/api/users/unforget", {"email": "f@example.com"})
    assert (await api.update(email="f@example.com")).status == 200


async def test_get_fields_reports_types_with_dotted_nested_names(api: Api) -> None:
    await api.update(
        email="a@example.com",
        dataFields={"s": "x", "n": 1, "d": 1.5, "b": True, "when": "2024-01-31",
                    "addr": {"street": "Main", "geo": {"zip": 12345}}},
    )
    fields = (await api.call("GET", "/api/users/getFields")).body["fields"]
    assert {k: fields[k] for k in ("s", "n", "d", "b", "when", "addr", "addr.street")} == {
        "s": "string", "n": "long", "d": "double", "b": "boolean", "when": "date",
        "addr": "object", "addr.street": "string",
    }
    assert fields["addr.geo.zip"] == "long"
