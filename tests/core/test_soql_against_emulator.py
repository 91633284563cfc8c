"""The query builders and the mapper against the Salesforce emulator's SOQL over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from streamsync.config import parse_config
from streamsync.core import soql
from streamsync.core.describe_check import DescribeChecker
from streamsync.core.mapping import CompiledMapping
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.errors import RecordError
from streamsync.runtime.mappings import compile_mappings
from tests.conftest import emulator_describes

ENV = {"STREAMSYNC_SF_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nx\n",
       "STREAMSYNC_ITERABLE_API_KEY": "k-1234"}
PATH = "/services/data/v66.0/query"


@pytest.fixture
async def query() -> AsyncIterator[Any]:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=300, seed_contacts=60,
                                                      seed_accounts=10))
    await emu.start(host="127.0.0.1", port=0)
    headers = {"Authorization": f"Bearer {emu.issue_token()}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def run(text: str) -> dict[str, Any]:
            async with session.get(emu.instance_url + PATH, params={"q": text}) as resp:
                body: Any = await resp.json(content_type=None)
                assert resp.status == 200, (text[:200], body)
                assert isinstance(body, dict)
                return body

        yield run
    await emu.stop()


async def test_builders_are_understood_by_the_emulator(query: Any) -> None:
    cfg = parse_config({"salesforce": {"client_id": "ck", "username": "u"}}, ENV)
    lead = compile_mappings(cfg, emulator_describes())["Lead"]
    page = await query(soql.keyset_page("Lead", lead.soql_fields(), limit=200))
    ids = [r["Id"] for r in page["records"]]
    assert len(ids) == 200 and ids == sorted(ids)
    nxt = await query(soql.keyset_page("Lead", ["Id"], ids[-1], limit=200))
    assert len(nxt["records"]) == 100 and nxt["records"][0]["Id"] > ids[-1]

    where = "IsConverted = false AND NOT (Status = 'x' OR LeadSource IN ('O\\'Brien', 'a;b'))"
    chunks = soql.select_by_ids_chunked("Lead", lead.soql_fields(), ids, PATH + "?q=",
                                        where=where, max_uri=4000)
    assert len(chunks) > 1
    got = [r["Id"] for c in chunks for r in (await query(c))["records"]]
    assert sorted(got) == ids

    window = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert len((await query(soql.keyset_page("Lead", ["Id"], window=window)))["records"]) == 300
    since = datetime.now(UTC) - timedelta(days=36500)
    assert len((await query(soql.modified_since("Lead", since)))["records"]) == 300
    assert (await query(soql.count("Lead", "IsConverted = false")))["totalSize"] == 300

    mapped = [lead.map_or_error(r) for r in page["records"]]
    errors = [m for m in mapped if isinstance(m, RecordError)]
    assert {e.reason for e in errors} <= {"missing_email", "invalid_email"}
    assert len(errors) < len(mapped) // 4


async def test_relationships_and_compound_fields_map(query: Any) -> None:
    mapping = {"Account.Name": "dataFields.company", "MailingAddress.city": "dataFields.city",
               "CreatedDate": "dataFields.created", "Owner.IsActive": "dataFields.ownerActive"}
    types = DescribeChecker(emulator_describes()).source_types("Contact", mapping)
    assert types == {"Account.Name": "string", "MailingAddress.city": "string",
                     "CreatedDate": "datetime", "Owner.IsActive": "boolean"}
    m = CompiledMapping("Contact", mapping, source_types=types)
    body = await query(soql.keyset_page("Contact", m.soql_fields("AccountId"), limit=5))
    user = m.map(body["records"][0])
    data = user.payload["dataFields"]
    assert isinstance(data["company"], str) and isinstance(data["city"], str)
    assert data["created"].endswith(" +00:00") and isinstance(data["ownerActive"], bool)
    parents = {r["AccountId"] for r in body["records"] if r.get("AccountId")}
    children = await query(soql.select_children("Contact", "AccountId", sorted(parents)))
    assert children["records"]
