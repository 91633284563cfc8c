"""Requests the Iterable client sends conform to Iterable's own OpenAPI (swagger 2.0) spec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamsync.adapters.http import make_session
from streamsync.adapters.iterable import IterableClient

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "iterable-openapi.json"
SPEC: dict[str, Any] = orjson.loads(SPEC_PATH.read_bytes())
SUCCESS = {"msg": "", "code": "Success", "params": None}


def _template_for(path: str, method: str) -> dict[str, Any]:
    """The swagger operation for `path`: the matching template with the most literal segments
    (`/api/users/byUserId/{userId}` wins over `/api/users/{email}`)."""
    wanted = path.strip("/").split("/")
    best: tuple[int, dict[str, Any]] | None = None
    for template, item in SPEC["paths"].items():
        parts = template.strip("/").split("/")
        if len(parts) != len(wanted) or method.lower() not in item:
            continue
        pairs = list(zip(parts, wanted, strict=True))
        if all(p == w or (p.startswith("{") and p.endswith("}")) for p, w in pairs):
            literal = sum(p == w for p, w in pairs)
            if best is None or literal > best[0]:
                best = (literal, item[method.lower()])
    assert best is not None, f"{method} {path} is not in Iterable's API spec"
    return best[1]


def _check(method: str, path: str, query: dict[str, str], body: bytes) -> None:
    op = _template_for(path, method)
    for param in op.get("parameters", []):
        if param["in"] == "query" and param.get("required"):
            assert param["name"] in query, f"{path}: missing query parameter {param['name']}"
        if param["in"] == "body":
            schema = {"$ref": param["schema"]["$ref"], "definitions": SPEC["definitions"]}
            jsonschema.Draft4Validator(schema).validate(orjson.loads(body))


@pytest.fixture
async def captured() -> AsyncIterator[tuple[str, list[tuple[str, str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.headers.get("Api-Key") == "k" * 32
        seen.append((request.method, request.path, dict(request.query), await request.read()))
        if request.path.endswith("bulkUpdate"):
            return web.json_response({"successCount": 1, "failCount": 0})
        if request.path.endswith("getFields"):
            return web.json_response({"fields": {"email": "string"}})
        if request.method == "GET":
            return web.json_response({})
        return web.json_response(SUCCESS)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("")), seen
    finally:
        await server.close()


async def test_every_request_matches_the_spec(
    captured: tuple[str, list[tuple[str, str, dict[str, str], bytes]]],
) -> None:
    base_url, seen = captured
    async with make_session(5.0) as session:
        client = IterableClient(session, base_url, "k" * 32)
        await client.bulk_update(orjson.dumps({
            "users": [{"email": "a@example.com", "dataFields": {"n": 1}, "preferUserId": False}],
            "createNewFields": True,
        }))
        await client.update_user({"email": "a@example.com", "dataFields": {"plan": "pro"}})
        await client.update_email("b@example.com", current_email="a@example.com")
        await client.update_email("c@example.com", current_user_id="003AAA")
        await client.get_user(email="a+tag@example.com")
        await client.get_user(user_id="003AAA")
        await client.delete_user(email="a@example.com")
        await client.delete_user(user_id="003AAA")
        await client.get_fields()
    assert len(seen) == 9
    for method, path, query, body in seen:
        _check(method, path, query, body)
    assert seen[4][2] == {"email": "a+tag@example.com"}  # query values arrive unmangled
