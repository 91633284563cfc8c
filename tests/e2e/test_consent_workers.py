"""Consent Iterable → Salesforce with two `streamsync run` processes on one PostgreSQL store,
both with `[consent_inbound]`: every worker runs a receiver, but only the holder of the
consent/inbound lease polls the export and drains; an unsubscribe delivered to the other
worker's receiver reaches Salesforce with one write; kill -9 of the poller hands polling to
the other worker within the lease + a few seconds (docs/design.md §7)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from streamsync.adapters.store.postgres import PostgresStore
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.consent_inbound import LEASE
from tests.e2e.harness import until
from tests.e2e.process import ServiceProcess, service_config_data, service_env, toml_dumps

LEASE_S = 3.0
HEARTBEAT_S = 1.0
MARKETING_EMAIL = 39581
SECRET = "e2e-webhook-secret-0123456789"
CONSENT = {"unsubscribe_channel_ids": [MARKETING_EMAIL]}
EXPORT = "/api/export/data.json"

pytestmark = [
    pytest.mark.salesforce(long_poll_s=0.5, seed_accounts=1, seed_contacts=2, seed_leads=6),
    pytest.mark.timeout(120),
]


def _export_calls(it: IterableEmulator) -> int:
    return sum(n for endpoint, by_status in it.state.counts().items() if EXPORT in endpoint
               for n in by_status.values())


def _webhook_port(proc: ServiceProcess) -> int | None:
    for line in proc.log_text().splitlines():
        if '"consent.webhook_listening"' in line:
            return int(json.loads(line)["port"])
    return None


def _lead(sf: SalesforceEmulator, n: int) -> tuple[str, str]:
    ids = sf.select_ids("Lead", "IsDeleted = false AND Email != null AND "
                        "HasOptedOutOfEmail = false AND IsConverted = false", 100)
    record = sf.state.record("Lead", ids[n])
    assert record is not None
    return ids[n], str(record["Email"]).lower()


def _opted_out(sf: SalesforceEmulator, record_id: str) -> bool:
    record = sf.state.record("Lead", record_id)
    return record is not None and record["HasOptedOutOfEmail"] is True


def _our_writes(sf: SalesforceEmulator, record_id: str) -> int:
    """CDC events of our own writes to this record (changeOrigin names streamsync)."""
    return sum(1 for e in sf.state.event_log
               if e["ChangeEventHeader"]["changeOrigin"].endswith("client=streamsync")
               and record_id in e["ChangeEventHeader"]["recordIds"])


async def _holder_pid(store: PostgresStore) -> int | None:
    now = time.time()
    for lease in await store.channel_leases():
        if lease.channel == LEASE and (holder := lease.held_by(now)):
            return int(holder.split("/")[1])
    return None


async def _drained(store: PostgresStore) -> bool:
    return "pending" not in await store.consent_inbox_counts()


async def test_one_worker_polls_and_drains_and_the_other_takes_over_polling_after_a_kill(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_url: str) -> None:
    sf, it = sf_emulator, iterable_emulator
    data = service_config_data(
        sf, it, tmp_path, store={"url": pg_url},
        workers={"lease_s": LEASE_S, "heartbeat_s": HEARTBEAT_S},
        objects={"Lead": {"consent": CONSENT}, "Contact": {"consent": CONSENT}},
        consent_inbound={"webhook": {"port": 0}, "poll": {"interval_s": 30.0}})
    config = tmp_path / "config.toml"
    config.write_text(toml_dumps(data), encoding="utf-8")
    env = {**service_env(sf, it), "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET}
    procs = [ServiceProcess(config, env, tmp_path / f"worker{n}.log") for n in range(2)]
    store: PostgresStore | None = None
    try:
        for proc in procs:
            await proc.start()
        for proc in procs:
            await until(lambda p=proc: p.saw("service.ready"), "every worker ready", 45.0)
            await until(lambda p=proc: _webhook_port(p) is not None, "every receiver bound")
        store = await PostgresStore.open(pg_url)
        opened = store
        await until(lambda: _holder_pid(opened), "the consent/inbound lease held")
        holder_pid = await _holder_pid(opened)
        holder = next(p for p in procs if p.pid == holder_pid)
        other = next(p for p in procs if p.pid != holder_pid)
        await until(lambda: _export_calls(it) >= 2, "the first poll")
        await asyncio.sleep(3 * HEARTBEAT_S)  # both workers heartbeat and renew meanwhile
        assert _export_calls(it) == 2  # one poll (two data types), by one worker
        assert holder.saw("consent.inbound_leading") and not other.saw("consent.inbound_leading")

        # Iterable delivers to the receiver of the worker that does not drain.
        settings = it.webhooks.settings
        settings.url = f"http://127.0.0.1:{_webhook_port(other)}/iterable/webhook"
        settings.auth_type, settings.auth_token, settings.backoff_s = "Basic", SECRET, 0.05
        lead, email = _lead(sf, 0)
        sf.state.update("Lead", lead, {"FirstName": "Synced"})  # the person exists in Iterable
        await until(lambda: email in it.state.snapshot(), "the lead synced to Iterable")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{it.control_url}/click",
                                 json={"email": email, "channelId": MARKETING_EMAIL}) as resp:
                assert resp.status == 200, await resp.text()
        await until(lambda: _opted_out(sf, lead), "the unsubscribe to reach Salesforce")
        await it.webhooks.wait_idle()
        await until(lambda: _drained(opened), "the inbox drained")
        await asyncio.sleep(2.0)  # a second drain would have written by now
        assert _our_writes(sf, lead) == 1

        await holder.kill()
        killed_at = time.monotonic()
        await until(lambda: _export_calls(it) >= 4, "the other worker polls",
                     timeout_s=LEASE_S + 10)
        took_s = time.monotonic() - killed_at
        assert took_s <= LEASE_S + 5.0, took_s
        assert await _holder_pid(opened) == other.pid
        assert other.saw("consent.inbound_leading")
        code, _ = await other.terminate(30.0)
        assert code == 0, other.log_text()[-2000:]
    finally:
        for proc in procs:
            await proc.ensure_dead()
        if store is not None:
            await store.close()
