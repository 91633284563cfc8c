"""SalesforceClient against the Salesforce emulator over real HTTP: paging, errors, bulk, writes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from streamsync.adapters.http import HttpResponse, UsageCounter, make_session
from streamsync.adapters.salesforce import (
    SalesforceClient,
    _csv_rows,
    coerce_csv_value,
    error_for,
    parse_limit_info,
    split_complete_records,
)
from streamsync.adapters.salesforce_auth import SalesforceAuth
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.errors import (
    QueryError,
    RateLimited,
    SalesforceError,
    SessionExpired,
    TransientError,
)
from streamsync.retry import Policy

VERSION = "66.0"
DATA = f"/services/data/v{VERSION}"


@dataclass
class Rig:
    emu: SalesforceEmulator
    session: aiohttp.ClientSession
    auth: SalesforceAuth
    counter: UsageCounter
    sleeps: list[float]

    def client(self, **kw: object) -> SalesforceClient:
        async def sleep(delay_s: float) -> None:
            self.sleeps.append(delay_s)

        kw.setdefault("sleep", sleep)
        return SalesforceClient(
            self.session, self.auth, VERSION, self.counter, **kw  # type: ignore[arg-type]
        )


async def _rig(config: SalesforceEmulatorConfig) -> AsyncIterator[Rig]:
    emu = SalesforceEmulator(config)
    await emu.start("127.0.0.1", 0)
    counter = UsageCounter()
    try:
        async with make_session(10.0) as session:
            auth = SalesforceAuth(
                session, login_url=emu.instance_url, flow="client_credentials",
                client_id=emu.client_id, client_secret=emu.client_secret, counter=counter,
            )
            yield Rig(emu, session, auth, counter, [])
    finally:
        await emu.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in _rig(SalesforceEmulatorConfig(seed_leads=450, seed_accounts=5,
                                                 seed_contacts=30)):
        yield r


async def test_query_streams_pages_following_next_records_url(rig: Rig) -> None:
    client = rig.client(batch_size=200)
    pages = [page async for page in client.query("SELECT Id, Email FROM Lead ORDER BY Id")]
    assert [len(p.records) for p in pages] == [200, 200, 50]
    assert [p.done for p in pages] == [False, False, True]
    assert all(p.total_size == 450 for p in pages)
    ids = [r["Id"] for p in pages for r in p.records]
    assert ids == sorted(ids) and len(set(ids)) == 450
    assert rig.counter.total("salesforce", endpoint="query") == 1
    assert rig.counter.total("salesforce", endpoint="query/more") == 2
    used, allowed = rig.counter.usage("salesforce") or (0, 0)
    assert used == rig.emu.state.usage.used and allowed == 100_000


async def test_default_page_is_2000_and_records_flattens(rig: Rig) -> None:
    client = rig.client()
    pages = [p async for p in client.query("SELECT Id FROM Lead")]
    assert len(pages) == 1 and pages[0].done
    assert len([r async for r in client.records("SELECT Id FROM Lead")]) == 450


def _plain(value: object) -> object:
    """A REST record without its `attributes`, as Bulk rows are shaped."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "attributes"}
    return value


async def test_relationship_fields_come_nested(rig: Rig) -> None:
    client = rig.client()
    records = [r async for r in client.records("SELECT Id, Account.Name FROM Contact")]
    assert len(records) == 30
    assert any(isinstance(r["Account"], dict) and r["Account"]["Name"] for r in records)
    assert all(r["Account"] is None or r["Account"]["Name"] for r in records)


async def test_count_describe_limits(rig: Rig) -> None:
    client = rig.client()
    assert await client.count("SELECT COUNT() FROM Lead") == 450
    describe = await client.describe("Lead")
    assert "Email" in {f["name"] for f in describe["fields"]}
    limits = await client.limits()
    assert limits["DailyApiRequests"]["Max"] == 100_000


async def test_query_all_includes_deleted_records(rig: Rig) -> None:
    client = rig.client()
    victim = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.delete("Lead", victim)
    live = [r["Id"] async for r in client.records("SELECT Id FROM Lead")]
    every = [r["Id"] async for p in client.query_all("SELECT Id, IsDeleted FROM Lead")
             for r in p.records]
    assert victim not in live and len(live) == 449
    assert victim in every and len(every) == 450


async def test_writes_carry_the_call_options_client(rig: Rig) -> None:
    client = rig.client(call_options_client="streamsync-demo")
    lead_id = await client.sobject_create(
        "Lead", {"LastName": "Lovelace", "Company": "Engines", "Email": "ada@example.com"}
    )
    await client.sobject_update("Lead", lead_id, {"Email": "ada.l@example.com"})
    record = rig.emu.state.record("Lead", lead_id)
    assert record is not None and record["Email"] == "ada.l@example.com"
    await client.sobject_delete("Lead", lead_id)
    assert not [r async for r in client.records(f"SELECT Id FROM Lead WHERE Id = '{lead_id}'")]
    origins = [
        orjson.loads(e.data_json)["payload"]["ChangeEventHeader"]["changeOrigin"]
        for e in rig.emu.bus.events_after(0)
    ]
    assert len(origins) == 3
    assert all(o.endswith(";client=streamsync-demo") for o in origins)
    with pytest.raises(SalesforceError) as info:
        await client.sobject_delete("Lead", lead_id)
    assert info.value.error_code == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceError) as missing:
        await client.sobject_update("Lead", "00Q8W0000009999AAA", {"Email": "x@example.com"})
    assert missing.value.status in (400, 404)


async def test_expired_session_reauthenticates_once_transparently(rig: Rig) -> None:
    client = rig.client(batch_size=200)
    await client.count("SELECT COUNT() FROM Lead")
    rig.emu.sessions.expire_all()
    pages = [p async for p in client.query("SELECT Id FROM Lead")]
    assert sum(len(p.records) for p in pages) == 450
    assert rig.emu.token_endpoint.calls == {"client_credentials": 2}
    assert rig.counter.total("salesforce", status=401) == 1


async def test_a_session_rejected_twice_surfaces_as_session_expired(rig: Rig) -> None:
    body = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    rig.emu.faults.fail_next(f"{DATA}/query", 2, status=401, body=body)
    with pytest.raises(SessionExpired, match="INVALID_SESSION_ID"):
        await rig.client().count("SELECT COUNT() FROM Lead")
    assert rig.emu.token_endpoint.calls == {"client_credentials": 2}


async def test_request_limit_exceeded_is_rate_limited() -> None:
    async for rig in _rig(SalesforceEmulatorConfig(seed_leads=5, daily_api_max=2)):
        client = rig.client()
        await client.count("SELECT COUNT() FROM Lead")
        await client.count("SELECT COUNT() FROM Lead")
        with pytest.raises(RateLimited, match="REQUEST_LIMIT_EXCEEDED"):
            await client.count("SELECT COUNT() FROM Lead")


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELEC Id FROM Lead", "MALFORMED_QUERY"),
        ("SELECT Id, NoSuchField__c FROM Lead", "INVALID_FIELD"),
    ],
)
@pytest.mark.usefixtures("no_retry_waits")
async def test_bad_soql_is_a_non_retriable_query_error(rig: Rig, soql: str, code: str) -> None:
    client = rig.client(retry=Policy(attempts=5))
    with pytest.raises(QueryError) as info:
        await client.count(soql)
    assert info.value.error_code == code and info.value.status == 400
    assert rig.counter.total("salesforce", endpoint="query") == 1  # not retried


async def test_an_over_long_uri_is_a_query_error(rig: Rig) -> None:
    ids = ", ".join(f"'00Q8W{n:013d}'" for n in range(1200))
    with pytest.raises(QueryError) as info:
        await rig.client().count(f"SELECT COUNT() FROM Lead WHERE Id IN ({ids})")
    assert info.value.status == 414



@pytest.mark.usefixtures("no_retry_waits")
async def test_5xx_is_transient_and_a_declared_retry_recovers(rig: Rig) -> None:
    rig.emu.faults.fail_next(f"{DATA}/query", 1, status=503)
    with pytest.raises(TransientError, match="503"):
        await rig.client().count("SELECT COUNT() FROM Lead")
    rig.emu.faults.fail_next(f"{DATA}/query", 2, status=500)
    client = rig.client(retry=Policy(attempts=3))
    assert await client.count("SELECT COUNT() FROM Lead") == 450
    assert rig.counter.by_status("salesforce", "query") == {"503": 1, "500": 2, "200": 1}


async def test_rest_calls_in_flight_are_bounded(rig: Rig) -> None:
    rig.emu.faults.set_latency(30.0)
    client = rig.client(max_in_flight=3)
    counts = await asyncio.gather(*(client.count("SELECT COUNT() FROM Lead") for _ in range(12)))
    assert counts == [450] * 12
    assert client.peak_in_flight == 3 and client.in_flight == 0
    with pytest.raises(ValueError):
        rig.client(max_in_flight=0)


@pytest.mark.usefixtures("no_retry_waits")
async def test_a_failed_next_page_is_retried_without_restarting_the_query(rig: Rig) -> None:
    rig.emu.faults.fail_next(f"{DATA}/query/", 1, status=502)  # only nextRecordsUrl paths
    client = rig.client(batch_size=200, retry=Policy(attempts=3))
    ids = [r["Id"] async for r in client.records("SELECT Id FROM Lead")]
    assert len(set(ids)) == 450
    assert rig.counter.total("salesforce", endpoint="query") == 1
    assert rig.counter.by_status("salesforce", "query/more") == {"502": 1, "200": 2}


async def test_dropped_and_hanging_calls_are_transient(rig: Rig) -> None:
    client = rig.client(timeout_s=0.3)
    await client.count("SELECT COUNT() FROM Lead")
    # aiohttp itself resends a GET once when a kept-alive connection is dropped: drop twice.
    rig.emu.faults.drop_next(f"{DATA}/query", 2)
    with pytest.raises(TransientError, match="network failure"):
        await client.count("SELECT COUNT() FROM Lead")
    rig.emu.faults.hang_next(f"{DATA}/query")
    with pytest.raises(TransientError, match="no reply in time"):
        await client.count("SELECT COUNT() FROM Lead")
    assert await client.count("SELECT COUNT() FROM Lead") == 450


async def test_bulk_query_pages_by_locator_and_matches_rest() -> None:
    async for rig in _rig(SalesforceEmulatorConfig(seed_leads=1200, seed_accounts=4,
                                                   seed_contacts=20)):
        client = rig.client(bulk_max_records=500, bulk_poll_s=0.5)
        rows = [r async for r in client.bulk_query("SELECT Id, Email, Company FROM Lead")]
        rest = [r async for r in client.records("SELECT Id, Email, Company FROM Lead")]
        assert len(rows) == 1200
        assert {r["Id"]: (r["Email"], r["Company"]) for r in rows} == {
            r["Id"]: (r["Email"], r["Company"]) for r in rest
        }
        assert rig.counter.by_status("salesforce", "bulk_results") == {"200": 3}
        assert rig.counter.total("salesforce", endpoint="bulk_create") == 1
        assert rig.sleeps and rig.sleeps[0] == 0.5  # polled with the injected sleep

        soql = "SELECT Id, Email, Account.Name FROM Contact ORDER BY Id"
        contacts = [r async for r in client.bulk_query(soql)]
        assert len(contacts) == 20
        assert contacts == [_plain(r) async for r in client.records(soql)]
        assert any(c["Account"] is not None for c in contacts)


async def test_bulk_results_survive_a_session_expiry(rig: Rig) -> None:
    client = rig.client()
    job_id = await client.create_bulk_query_job("SELECT Id FROM Lead")
    info = await client.wait_bulk_query_job(job_id)
    assert info["state"] == "JobComplete"
    rig.emu.sessions.expire_all()
    rows = [r async for r in client.bulk_query_results(job_id)]
    assert len(rows) == 450


async def test_bulk_query_with_a_bad_field_is_a_query_error(rig: Rig) -> None:
    with pytest.raises(QueryError):
        [r async for r in rig.client().bulk_query("SELECT Id, Nope__c FROM Lead")]


def test_parse_limit_info() -> None:
    assert parse_limit_info("api-usage=10018/100000") == (10018, 100000)
    assert parse_limit_info("api-usage=3/15000, per-app-api-usage=1/100(appName=x)") == (3, 15000)
    assert parse_limit_info(None) is None
    assert parse_limit_info("nonsense") is None


def test_split_complete_records_keeps_quoted_newlines_together() -> None:
    text = '"Id","Note"\n"1","line one\nline two"\n"2","ok"\n"3","open\n'
    head, tail = split_complete_records(text)
    assert head == '"Id","Note"\n"1","line one\nline two"\n"2","ok"\n'
    assert tail == '"3","open\n'


async def test_csv_rows_parse_across_tiny_chunks() -> None:
    body = (
        '"Id","Note","Owner.Email","Owner.Name"\n'
        '"1","say ""hi""\nthen, go","a@x.com","Ann"\n'
        '"2","","",""\n'
        '"3","ü, ß","b@x.com","Bo"'
    ).encode()

    async def chunks(size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i:i + size]

    for size in (1, 3, 7, 64, 4096):
        rows = [r async for r in _csv_rows(chunks(size))]
        assert [r["Id"] for r in rows] == ["1", "2", "3"], size
        assert rows[0]["Note"] == 'say "hi"\nthen, go'
        assert rows[2]["Note"] == "ü, ß"


async def test_bulk_rows_typed_by_describe_equal_rest_records(rig: Rig) -> None:
    client = rig.client()
    soql = (
        "SELECT Id, IsConverted, NumberOfEmployees, AnnualRevenue, Lead_Score__c, Email "
        "FROM Lead ORDER BY Id"
    )
    lead_id = rig.emu.select_ids("Lead", limit=1)[0]
    rig.emu.state.update(
        "Lead", lead_id, {"NumberOfEmployees": 12, "AnnualRevenue": 1500.5, "Lead_Score__c": 7.25}
    )
    describe = await client.describe("Lead")
    types = {f["name"]: f["type"] for f in describe["fields"]}
    rows = [r async for r in client.bulk_query(soql, field_types=types)]
    rest = [_plain(r) async for r in client.records(soql)]
    assert rows == rest
    typed = next(r for r in rows if r["Id"] == lead_id)
    assert (typed["NumberOfEmployees"], typed["AnnualRevenue"], typed["Lead_Score__c"]) == (
        12, 1500.5, 7.25
    )
    assert all(isinstance(r["IsConverted"], bool) for r in rows)


def test_coerce_csv_value() -> None:
    assert coerce_csv_value("boolean", "true") is True
    assert coerce_csv_value("boolean", "False") is False
    assert coerce_csv_value("int", "42") == 42
    assert coerce_csv_value("currency", "12.5") == 12.5
    assert coerce_csv_value("string", "007") == "007"
    with pytest.raises(ValueError):
        coerce_csv_value("boolean", "yes")


def _reply(status: int, body: bytes, **headers: str) -> HttpResponse:
    return HttpResponse(status, CIMultiDictProxy(CIMultiDict(headers)), body, "salesforce", "x")


def _sf_body(code: str, message: str = "m") -> bytes:
    return orjson.dumps([{"message": message, "errorCode": code}])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, _sf_body("INVALID_SESSION_ID"), SessionExpired),
        (403, _sf_body("REQUEST_LIMIT_EXCEEDED"), RateLimited),
        (403, _sf_body("INSUFFICIENT_ACCESS"), SalesforceError),
        (400, _sf_body("INVALID_QUERY_LOCATOR"), TransientError),
        (400, _sf_body("QUERY_TIMEOUT"), TransientError),
        (400, _sf_body("MALFORMED_ID"), QueryError),
        (404, _sf_body("NOT_FOUND"), SalesforceError),
        (409, _sf_body("API_VERSION_MISMATCH"), SalesforceError),
        (431, b"Request Header Fields Too Large", QueryError),
        (500, b"<html>Internal error</html>", TransientError),
        (503, b"", TransientError),
    ],
)
def test_salesforce_error_mapping(status: int, body: bytes, error: type[Exception]) -> None:
    assert type(error_for(_reply(status, body))) is error


async def test_tls_emulator_with_verification_on() -> None:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(seed_leads=3, tls=True))
    await emu.start("127.0.0.1", 0)
    try:
        assert emu.instance_url.startswith("https://") and emu.cert_path is not None
        for trusted in (False, True):
            context = ssl.create_default_context(cafile=str(emu.cert_path)) if trusted else True
            async with make_session(5.0, ssl=context) as session:
                auth = SalesforceAuth(
                    session, login_url=emu.instance_url, flow="client_credentials",
                    client_id=emu.client_id, client_secret=emu.client_secret,
                )
                client = SalesforceClient(session, auth, VERSION)
                if trusted:
                    assert await client.count("SELECT COUNT() FROM Lead") == 3
                else:  # the default context does not know the emulator's self-signed cert
                    with pytest.raises(TransientError, match="network failure"):
                        await client.count("SELECT COUNT() FROM Lead")
    finally:
        await emu.stop()
