"""`status`, status.json and the status page list every worker: what it leads, its last
heartbeat, live / stale / stopped; each channel names its leader; and the shared Iterable rate
budget in use with the processes drawing from it."""

from __future__ import annotations

import time

from streamsync.adapters.store import Store, WorkerInfo
from streamsync.adapters.store.budget import DrawerIdentity
from streamsync.adapters.store.budget_plan import ClaimRequest
from streamsync.cli.status import render_status
from streamsync.config import Config
from streamsync.runtime.health import Readiness
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.status import read_status
from streamsync.runtime.statuspage.data import PageData
from streamsync.runtime.statuspage.render import page_html, sections

NOW = 1_800_000_000.0
LEAD = "/data/LeadChangeEvent"
CONTACT = "/data/ContactChangeEvent"


async def test_every_worker_with_what_it_leads_and_whether_it_is_alive(
        store: Store, config: Config) -> None:
    heartbeat_s = config.workers.heartbeat_s
    await store.register_worker(WorkerInfo("host-a/11/aa", "host-a", 11, NOW - 600, NOW - 1))
    await store.register_worker(WorkerInfo("host-b/22/bb", "host-b", 22, NOW - 600, NOW - 2))
    await store.register_worker(WorkerInfo("host-c/33/cc", "host-c", 33, NOW - 900,
                                           NOW - 4 * heartbeat_s))
    await store.register_worker(WorkerInfo("host-d/44/dd", "host-d", 44, NOW - 990, NOW - 980))
    await store.worker_stopped("host-d/44/dd", NOW - 970)
    assert await store.acquire_channel(LEAD, "host-a/11/aa", 15.0, NOW - 1) is not None
    assert await store.acquire_channel(CONTACT, "host-a/11/aa", 15.0, NOW - 1) is not None

    data = await read_status(store, config, NOW)
    workers = {w["worker_id"]: w for w in data["workers"]}
    assert workers["host-a/11/aa"]["leads"] == sorted([LEAD, CONTACT])
    assert workers["host-a/11/aa"]["state"] == "live"
    assert workers["host-a/11/aa"]["heartbeat_age_s"] == 1.0
    assert (workers["host-b/22/bb"]["leads"], workers["host-b/22/bb"]["state"]) == ([], "live")
    assert workers["host-b/22/bb"]["host"] == "host-b" and workers["host-b/22/bb"]["pid"] == 22
    assert workers["host-c/33/cc"]["state"] == "stale"
    assert workers["host-d/44/dd"]["state"] == "stopped"
    leaders = {c["channel"]: c["leader"] for c in data["channels"]}
    assert leaders[LEAD] == leaders[CONTACT] == "host-a/11/aa"

    text = render_status(data)
    workers_part = text.split("Workers:")[1]
    assert "host-b/22/bb" in workers_part and "(following)" in workers_part
    assert "stale" in workers_part and "stopped" in workers_part
    page = PageData(config, Metrics(), lambda: Readiness(True), clock=lambda: NOW)
    page.attach(store, None)
    page_data = await page.read()
    assert [w["worker_id"] for w in page_data["workers"]] == [w["worker_id"]
                                                              for w in data["workers"]]
    html = sections(page_data)["workers"]
    assert "host-a/11/aa" in html and "(following)" in html
    assert '<div id="workers">' in page_html(page_data)


async def test_a_store_no_worker_ran_on_says_so(store: Store, config: Config) -> None:
    data = await read_status(store, config, NOW)
    assert data["workers"] == []
    assert all(c["leader"] is None for c in data["channels"])
    assert "(none has run on this store)" in render_status(data)


async def test_the_shared_rate_budget_in_use_and_who_draws_from_it(
        store: Store, config: Config) -> None:
    key = "iterable:0123456789ab:bulkUpdate"
    service = DrawerIdentity("host-a/11/aa:bulk", "service", 11, "host-a")
    backfill = DrawerIdentity("host-b/22/bb:bulk", "backfill", 22, "host-b")
    await store.claim_slots(key, service, ClaimRequest("service", 3, 5.0))
    await store.claim_slots(key, backfill, ClaimRequest("backfill", 2, 5.0))
    now = time.time()
    data = await read_status(store, config, now)
    [budget] = data["rate_budgets"]
    assert budget["budget"] == key and budget["ceiling_per_s"] == 5.0
    assert {d["kind"] for d in budget["drawers"]} == {"service", "backfill"}
    assert {d["pid"] for d in budget["drawers"]} == {11, 22}
    text = render_status(data)
    assert "Iterable rate budget (shared" in text and "host-b/22/bb:bulk" in text
    page = PageData(config, Metrics(), lambda: Readiness(True), clock=lambda: now)
    page.attach(store, None)
    assert "host-a/11/aa:bulk" in sections(await page.read())["iterable"]
