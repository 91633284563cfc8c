"""Bad-input corpus at the runtime level: poison among good input never crashes nor blocks.

The pure parsers have their own corpora (tests/core/test_events.py, test_mapping.py,
test_soql.py, tests/test_config.py). Here the same kinds of input go through the running parts,
real HTTP and a real SQLite store: ingest's `handle_message` with a stream of good CDC messages
and poison between them, the sync pipeline and the flusher with unmappable records, SOQL
injection through queued ids and backfill filters, garbage replies from both emulators, and bad
configs handed to `streamsync run`. Each poison item gets a clear error or a dead letter with a
reason, and every good item around it is still stored and synced.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamsync import cli
from streamsync.adapters.cometd import CometdSubscriber
from streamsync.adapters.http import UsageCounter, make_session
from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import Store
from streamsync.adapters.store.types import QueueInput
from streamsync.config import Config
from streamsync.core.ids import to_18
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import BackfillError, RetriableError, StreamsyncError
from streamsync.runtime.backfill import BackfillOptions
from streamsync.runtime.ingest import Ingest, ReplayCallbacks
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler
from tests.conftest import Clients, SyncRig
from tests.core.test_events import MALFORMED

LEAD_CHANNEL = "/data/LeadChangeEvent"
Message = dict[str, Any]


# ------------------------------------------------------------------------ CDC messages


def cdc(entity: str, record_ids: list[Any], replay_id: int, change_type: str = "UPDATE",
        channel: str = LEAD_CHANNEL) -> Message:
    """A well-formed CDC message as the CometD layer hands it over."""
    header = {"entityName": entity, "recordIds": record_ids, "changeType": change_type,
              "changeOrigin": "", "transactionKey": str(uuid.uuid4()), "sequenceNumber": 1,
              "commitTimestamp": int(time.time() * 1000), "commitNumber": replay_id,
              "commitUser": "005000000000001AAA", "changedFields": ["FirstName"]}
    return {"channel": channel,
            "data": {"schema": "s", "payload": {"ChangeEventHeader": header},
                     "event": {"replayId": replay_id}}}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of a nested message (dict keys and list indexes)."""
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def truncations(message: Message) -> Iterator[Message]:
    """The message with each subtree cut off in turn, and with each value replaced by null."""
    for path in _paths(message):
        for cut in (True, False):
            out = copy.deepcopy(message)
            node: Any = out
            for key in path[:-1]:
                node = node[key]
            if cut:
                del node[path[-1]]
            else:
                node[path[-1]] = None
            yield out


@pytest.fixture
async def ingest(sf_emulator: SalesforceEmulator, config: Config, store: Store,
                 clients: Clients) -> AsyncIterator[Ingest]:
    """An Ingest on a real store; its subscriber is never polled (messages are handed in)."""
    callbacks = ReplayCallbacks(store)
    subscriber = CometdSubscriber(
        clients.session, instance_url=sf_emulator.instance_url,
        api_version=config.salesforce.api_version, get_token=clients.auth.access_token,
        invalidate_token=clients.auth.invalidate, channels=(LEAD_CHANNEL,),
        replay_from=callbacks.replay_from, on_replay_invalid=callbacks.on_replay_invalid,
        sleep=_no_sleep, min_handshake_interval_s=0.0, backoff_base_s=0.01,
        long_poll_timeout_s=2.0, request_timeout_s=2.0)
    metrics = Metrics()
    reconciler = Reconciler(config=config, store=store, salesforce=clients.salesforce,
                            metrics=metrics)
    opened = Ingest(config=config, store=store, subscriber=subscriber, reconciler=reconciler,
                    metrics=metrics, callbacks=callbacks)
    try:
        yield opened
    finally:
        await opened.aclose()


async def queued(store: Store) -> dict[str, str]:
    """record id -> object name of every queued row (left queued)."""
    leases = await store.lease("test", 100_000, 60.0, time.time() + 1)
    await store.release(leases)
    return {lease.record_id: lease.object_name for lease in leases}


async def test_poison_cdc_messages_between_good_ones_block_nothing(
    ingest: Ingest, store: Store, sf_emulator: SalesforceEmulator,
) -> None:
    leads = sf_emulator.select_ids("Lead", limit=400)
    contact = sf_emulator.select_ids("Contact", limit=1)[0]
    good_template = cdc("Lead", [leads[0]], 1)
    poison: list[tuple[str, Any]] = [(f"malformed: {what}", msg) for what, msg, _ in MALFORMED]
    poison += [(f"truncated #{i}", msg) for i, msg in enumerate(truncations(good_template))]
    poison += [
        ("unknown entity", cdc("Opportunity", [to_18("006000000000001")], 1,
                               channel="/data/ChangeEvents")),
        ("entity of another configured object on the lead channel",
         cdc("Contact", [leads[0]], 1)),
        ("id of another configured object", cdc("Lead", [contact], 1)),
        ("id of an unconfigured object", cdc("Lead", [to_18("006000000000009")], 1)),
        ("SOQL in an id", cdc("Lead", ["00Q000000000001' OR Name != '"], 1)),
        ("a thousand junk ids", cdc("Lead", [f"junk{i}" for i in range(1000)], 1)),
        ("non-ASCII and control characters", cdc("Lead", ["00Q\u00e9\x00\u202e"], 1)),
        ("deep nesting", {"channel": LEAD_CHANNEL, "data": {"event": {"replayId": 1},
                                                            "payload": [[[[[[[]]]]]]]}}),
        ("a huge string", {"channel": LEAD_CHANNEL, "data": "x" * 1_000_000}),
    ]
    replay = 1000
    expected: dict[str, str] = {}
    for i, (what, bad) in enumerate(poison):
        replay += 1
        poison_msg = copy.deepcopy(bad)
        if isinstance(poison_msg, dict) and isinstance(poison_msg.get("data"), dict) and \
                isinstance(poison_msg["data"].get("event"), dict) and \
                isinstance(poison_msg["data"]["event"].get("replayId"), int):
            poison_msg["data"]["event"]["replayId"] = replay
        await ingest.handle_message(poison_msg)
        replay += 1
        # Good messages around the poison: plain ids and 15-character ones.
        lead = leads[(i + 1) % len(leads)]
        good_ids = [lead[:15]] if i % 2 else [lead]
        await ingest.handle_message(cdc("Lead", good_ids, replay))
        expected[lead] = "Lead"
        assert await _stored_replay(store) == replay, f"after {what!r}"

    rows = await queued(store)
    assert {k: v for k, v in rows.items() if k in expected} == expected
    # A Contact id on the Lead channel is queued as a Contact; unknown objects are dropped.
    assert rows.get(contact) == "Contact"
    assert not [k for k in rows if not k.startswith(("00Q", "003"))]
    assert all(len(k) == 18 for k in rows)
    assert ingest.stats.malformed >= len(MALFORMED)
    assert ingest.stats.unexpected_entity >= 1 and ingest.stats.ids_dropped >= 1


async def _stored_replay(store: Store) -> Any:
    state = await store.get_replay(LEAD_CHANNEL)
    return None if state is None else state.replay_id


async def test_a_wildcard_among_good_messages_reconciles_and_keeps_them(
    ingest: Ingest, store: Store, sf_emulator: SalesforceEmulator,
) -> None:
    lead, other = sf_emulator.select_ids("Lead", limit=2)
    await ingest.handle_message(cdc("Lead", [lead], 10))
    sf_emulator.state.update("Lead", other, {"FirstName": "Wild"})
    await ingest.handle_message(cdc("Lead", ["00Q*"], 11, change_type="GAP_UPDATE"))
    await ingest.handle_message(cdc("Lead", ["*"], 12))
    await ingest.drain_reconciles()
    rows = await queued(store)
    assert rows.get(lead) == "Lead" and rows.get(other) == "Lead"
    assert await _stored_replay(store) == 12


# ------------------------------------------------------------------ records to Iterable


def _lead_body(tag: str, **values: Any) -> dict[str, Any]:
    return {"FirstName": "Good", "LastName": tag, "Company": "Acme",
            "Status": "Open - Not Contacted", "Email": f"{tag.lower()}@example.com", **values}


async def _records(rig: SyncRig, ids: list[str]) -> dict[str, dict[str, Any]]:
    mapping = rig.pipeline.mappings["Lead"]
    soql = (f"SELECT {', '.join(mapping.soql_fields())} FROM Lead WHERE Id IN "
            f"({', '.join(repr(i) for i in ids)})")
    return {str(r["Id"]): r async for r in rig.clients.salesforce.records(soql)}


DATES = [  # every form Salesforce sends a date or datetime in, and what Iterable must get
    ("2024-05-01", "2024-05-01 00:00:00 +00:00"),
    ("2024-05-01T12:34:56.000+0000", "2024-05-01 12:34:56 +00:00"),
    ("2024-05-01T12:34:56Z", "2024-05-01 12:34:56 +00:00"),
    ("2024-05-01T12:34:56.789Z", "2024-05-01 12:34:56 +00:00"),
    ("2024-05-01T14:34:56.000+0200", "2024-05-01 12:34:56 +00:00"),
    ("2024-12-31T23:30:00.000-0100", "2025-01-01 00:30:00 +00:00"),
]


@pytest.mark.sync_config(objects={"Lead": {"mapping": {
    "Email": "email", "Id": "dataFields.sfLeadId", "FirstName": "dataFields.firstName",
    "LastName": "dataFields.lastName", "Company": "dataFields.Company.Name",
    "CreatedDate": "dataFields.created"}}})
async def test_unmappable_records_are_dead_lettered_and_the_rest_synced(
    sync_rig: SyncRig,
) -> None:
    sf = sync_rig.sf.state
    good = [sf.create("Lead", _lead_body(f"Good{i}")) for i in range(len(DATES))]
    upper = sf.create("Lead", _lead_body("Upper", Email="Ada.UPPER@Example.COM"))
    odd = sf.create("Lead", _lead_body("Odd", FirstName="Zo\u00eb\x00\x1b[31m \u6771\u4eac"))
    missing = sf.create("Lead", _lead_body("Missing", Email=None))
    records = await _records(sync_rig, [*good, upper, odd, missing])
    # Values the emulator would refuse to store, as a Salesforce reply could still carry them.
    for record, (raw, _) in zip([records[i] for i in good], DATES, strict=True):
        record["CreatedDate"] = raw
    poison = {
        "too_long": {**records[good[0]], "Id": to_18("00Q00000000Zz01"),
                     "Email": "long@example.com", "Company": "x" * 40_000},
        "space": {**records[good[0]], "Id": to_18("00Q00000000Zz02"),
                  "Email": "ada lovelace@example.com"},
        "not_a_string": {**records[good[0]], "Id": to_18("00Q00000000Zz03"),
                         "Email": "nan@example.com", "FirstName": float("nan")},
        "bad_id": {**records[good[0]], "Id": "00Q' OR Name != '", "Email": "inj@example.com"},
    }
    batch = [records[good[0]], poison["too_long"], *[records[i] for i in good[1:]],
             poison["space"], records[upper], poison["not_a_string"], records[odd],
             records[missing], poison["bad_id"]]

    outcome = await sync_rig.pipeline.sync_records("Lead", batch, source="test")

    assert sorted(outcome.synced) == sorted([*good, upper, odd])
    reasons = {rid: reason for rid, (reason, _) in outcome.dead.items()}
    assert reasons[poison["too_long"]["Id"]] == "value_too_long"
    assert reasons[poison["space"]["Id"]] == "invalid_email"
    assert reasons[poison["not_a_string"]["Id"]] == "invalid_value"
    assert reasons[missing] == "missing_email"
    assert len(reasons) == 4 and all(detail for _, detail in outcome.dead.values())
    assert not outcome.retry
    # A reply row without a usable Id cannot be attributed to any queued id: it is skipped
    # (and logged), never written.
    assert poison["bad_id"]["Id"] not in [*outcome.synced, *outcome.skipped, *outcome.dead]

    profiles = sync_rig.profiles()
    for record_id, (_, iterable_date) in zip(good, DATES, strict=True):
        email = str(records[record_id]["Email"]).lower()
        assert profiles[email]["dataFields"]["created"] == iterable_date
    assert "ada.upper@example.com" in profiles
    assert profiles[f"{records[odd]['Email']}".lower()]["dataFields"]["firstName"] == \
        "Zo\u00eb[31m \u6771\u4eac"
    assert not any("long@" in k or "lovelace" in k or "inj@" in k for k in profiles)


async def test_crafted_queued_ids_never_reach_soql_nor_block_the_batch(
    sync_rig: SyncRig,
) -> None:
    good = sync_rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null", limit=3)
    crafted = ["00Q000000000001' OR Name != '", "00Q000000000001AAA) OR (Id != null",
               "*", "00Q\u00e9", "00Q00000000000\x00"]
    foreign = to_18("006000000000001")  # a well-formed id of another object
    await sync_rig.store.enqueue([QueueInput("Lead", i) for i in [*crafted, foreign, *good]],
                                 sync_rig.clock(), "cdc", None)

    total = await sync_rig.drain()

    # Crafted ids are dead letters (invalid_id) before any SOQL is built; the foreign id is
    # looked up, not found, and skipped; the good ids around them are synced; no query failed.
    dead = {d.record_id: d for d in await sync_rig.store.dead_letters(limit=100)}
    assert set(dead) == set(crafted)
    assert {d.reason for d in dead.values()} == {"invalid_id"}
    assert total.synced == len(good) and total.skipped == 1 and total.retried == 0
    emails = {str(r["Email"]).lower() for r in (await _records(sync_rig, good)).values()}
    assert emails <= set(sync_rig.profiles())
    assert (await sync_rig.store.queue_stats(sync_rig.clock())).depth == 0


@pytest.mark.parametrize("where", [
    "Email != null) OR (Id != null",
    "Name = 'x' OR Name != 'x'; DELETE FROM Lead",
    "Id IN (SELECT Id FROM Contact)",
    "Name = 'unterminated",
    "Name = 'x' -- comment",
])
def test_backfill_filters_crafted_to_inject_soql_are_refused(where: str) -> None:
    with pytest.raises(BackfillError) as caught:
        BackfillOptions(objects=("Lead",), where=where)
    assert str(caught.value).startswith("--where:")


# --------------------------------------------------------------- garbage from the emulators

QUERY = "/services/data/"
BULK_UPDATE = "/api/users/bulkUpdate"
GARBAGE: list[tuple[str, Any, str]] = [  # (what, body, content type)
    ("html", "<html><body>Service Unavailable</body></html>", "text/html"),
    ("truncated JSON", '{"totalSize": 3, "done": true, "records": [{"Id": "00Q',
     "application/json"),
    ("a JSON string", '"records"', "application/json"),
    ("wrong shape", '{"records": "none", "done": "maybe"}', "application/json"),
    ("empty", "", "application/json"),
]


@pytest.mark.parametrize(("what", "body", "content_type"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_garbage_salesforce_query_replies_are_retried_never_dead_lettered(
    sync_rig: SyncRig, what: str, body: str, content_type: str,
) -> None:
    good = sync_rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null", limit=3)
    await sync_rig.enqueue("Lead", good)
    await sync_rig.clients.auth.instance_url()
    sync_rig.sf.faults.fail_next(QUERY, 1, status=200, body=body, content_type=content_type)

    total = await sync_rig.drain()

    assert total.synced == len(good) and total.dead == 0, what
    assert total.retried >= 1 or total.released >= 1, what
    errors = [e.message for e in await sync_rig.store.recent_errors(20)]
    assert errors == [] or all("Traceback" not in e for e in errors)


@pytest.mark.parametrize("body", ["<html>502</html>", {"unexpected": True}, ["a", "list"], ""],
                         ids=["html", "object", "list", "empty"])
async def test_garbage_iterable_error_replies_are_retried_and_the_records_still_land(
    sync_rig: SyncRig, body: Any,
) -> None:
    good = sync_rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null", limit=4)
    await sync_rig.enqueue("Lead", good)
    sync_rig.it.faults.add("status", BULK_UPDATE, 4, status=502, body=body)

    total = await sync_rig.drain()

    assert total.dead == 0 and total.synced == len(good)
    assert total.retried >= 1
    emails = {str(r["Email"]).lower() for r in (await _records(sync_rig, good)).values()}
    assert emails <= set(sync_rig.profiles())


@pytest.fixture
async def garbage_server() -> AsyncIterator[tuple[TestServer, dict[str, Any]]]:
    """An HTTP server answering every call 200 with the body and content type set in `reply`."""
    reply: dict[str, Any] = {"body": b"", "content_type": "application/json"}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply["body"], status=200,
                            headers={"Content-Type": reply["content_type"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, reply
    finally:
        await server.close()


@pytest.mark.parametrize(("what", "body", "content_type"), [
    *GARBAGE, ("counts of the wrong type", '{"successCount": "3", "failCount": null}',
               "application/json"),
    ("failures of the wrong shape", '{"successCount": 1, "failCount": 1, '
                                    '"failedUpdates": {"invalidEmails": "a@b.c"}}',
     "application/json"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
async def test_garbage_200_replies_from_iterable_are_transient_errors(
    garbage_server: tuple[TestServer, dict[str, Any]], what: str, body: str, content_type: str,
) -> None:
    server, reply = garbage_server
    reply.update(body=body.encode(), content_type=content_type)
    async with make_session(5) as http:
        client = IterableClient(http, str(server.make_url("")).rstrip("/"), "k" * 32,
                                UsageCounter(), timeout_s=5)
        try:
            result = await client.bulk_update(b'{"users": [{"email": "a@example.com"}]}')
        except RetriableError as exc:
            assert "bulkUpdate" in str(exc) or "iterable" in str(exc).lower(), what
        else:  # a reply the client could read must not invent failures
            assert all(f.reason for f in result.failures), what


@pytest.mark.parametrize(("what", "body", "content_type"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_a_garbage_token_reply_is_a_clear_error(
    sync_rig: SyncRig, what: str, body: str, content_type: str,
) -> None:
    sync_rig.sf.faults.fail_next("/services/oauth2/token", 1, status=200, body=body,
                                 content_type=content_type)
    with pytest.raises(StreamsyncError) as caught:
        await sync_rig.clients.auth.instance_url()
    assert "token" in str(caught.value).lower() or "login" in str(caught.value).lower(), what
    # The next attempt works: nothing was cached from the garbage.
    assert await sync_rig.clients.auth.instance_url() == sync_rig.sf.instance_url


@pytest.mark.parametrize(("what", "body", "content_type"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_a_garbage_cometd_reply_is_a_retriable_error_then_the_stream_resumes(
    ingest: Ingest, sf_emulator: SalesforceEmulator, what: str, body: str, content_type: str,
) -> None:
    subscriber: CometdSubscriber = ingest._subscriber
    sf_emulator.faults.fail_next("/cometd/", 1, status=200, body=body,
                                 content_type=content_type)
    with pytest.raises(StreamsyncError):
        await subscriber.poll_once()
    for _ in range(5):  # handshake, subscribe, then an (empty) long poll
        try:
            await subscriber.poll_once()
        except StreamsyncError:
            continue
        if subscriber.subscribed_channels:
            break
    assert subscriber.subscribed_channels, what


async def _no_sleep(_seconds: float) -> None:
    return None


# ------------------------------------------------------------------------------ configs

VALID = """
[salesforce]
login_url = "http://127.0.0.1:9"
auth = "client_credentials"
client_id = "3MVG9x"

[iterable]
base_url = "http://127.0.0.1:9"
"""
BAD_CONFIGS: list[tuple[str, str, str]] = [  # (what, text appended to VALID, expected)
    ("TOML syntax", "[flush\nlinger_ms = 1\n", "TOML"),
    ("string for a number", '[flush]\nlinger_ms = "fast"\n', "flush.linger_ms"),
    ("list for a number", "[queue]\nmax_attempts = [1]\n", "queue.max_attempts"),
    ("boolean for a number", "[queue]\nmax_attempts = true\n", "queue.max_attempts"),
    ("quoted number", '[flush]\nlinger_ms = "50"\n', "flush.linger_ms"),
    ("float for an integer", "[health]\nport = 8080.5\n", "health.port"),
    ("word for a boolean", '[health]\nenabled = "yes"\n', "health.enabled"),
    ("negative", "[queue]\nlease_s = -1\n", "queue.lease_s"),
    ("list for a table", "mapping = [1, 2]\n", "mapping"),
    ("table for a string", "[objects.Lead]\nchannel = { a = 1 }\n", "objects.Lead.channel"),
    ("unknown top-level key", "[surprise]\nx = 1\n", "surprise"),
    ("unknown section key", "[health]\nbind = \"0.0.0.0\"\n", "health.bind"),
    ("unknown object key", "[objects.Lead]\nfilterz = \"x\"\n", "objects.Lead.filterz"),
    ("unknown mapping source", '[objects.Lead.mapping]\n"Email" = "email"\n'
                               '"Bad Field!" = "dataFields.x"\n', "Bad Field!"),
    ("injected filter", "[objects.Lead]\nfilter = \"Name = 'a' OR 1=1\"\n",
     "objects.Lead.filter"),
]


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMSYNC_SF_CLIENT_SECRET", "STREAMSYNC_ITERABLE_API_KEY",
                 "CREDENTIALS_DIRECTORY", "STREAMSYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMSYNC_SF_CLIENT_SECRET", "secret-value-1")
    monkeypatch.setenv("STREAMSYNC_ITERABLE_API_KEY", "secret-value-2")


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(("what", "extra", "expected"), BAD_CONFIGS,
                         ids=[b[0] for b in BAD_CONFIGS])
def test_run_refuses_a_bad_config_with_a_message_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, extra: str, expected: str,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(VALID + extra)
    assert cli.main(["run", "--config", str(path)]) == 2, what
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize("what", ["a directory", "missing", "empty", "not UTF-8"])
def test_run_refuses_an_unreadable_secret_naming_the_file_not_the_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(VALID)
    secret = tmp_path / "iterable.key"
    if what == "a directory":
        secret.mkdir()
    elif what == "empty":
        secret.write_text("")
    elif what == "not UTF-8":
        secret.write_bytes(b"\xff\xfe\x00secret-bytes")
    monkeypatch.delenv("STREAMSYNC_ITERABLE_API_KEY")
    monkeypatch.setenv("STREAMSYNC_ITERABLE_API_KEY_FILE", str(secret))
    assert cli.main(["run", "--config", str(path)]) == 2, what
    err = capsys.readouterr().err
    assert "STREAMSYNC_ITERABLE_API_KEY_FILE" in err and str(secret) in err, err
    assert "secret-bytes" not in err and "Traceback" not in err
