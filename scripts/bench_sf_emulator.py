"""Salesforce emulator benchmark: seed time for 1M records, REST query throughput, CometD delivery.

Prints one JSON object. Latency is off, so the figures are the emulator's own ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.emulators.salesforce import (  # noqa: E402
    SalesforceEmulator,
    SalesforceEmulatorConfig,
)

FIELDS = ("Id, FirstName, LastName, Email, Phone, Title, Company, Status, LeadSource, Industry, "
          "City, State, Country, CreatedDate, SystemModstamp, Owner.Email, Owner.Name")
V = "/services/data/v66.0"


async def _query_bench(emu: SalesforceEmulator, pages: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {emu.issue_token()}"}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(base_url=emu.instance_url, headers=headers) as s:
        # Keyset pagination, as the backfill does.
        last = "000000000000000000"
        records = 0
        t0 = time.perf_counter()
        for _ in range(pages):
            q = f"SELECT {FIELDS} FROM Lead WHERE Id > '{last}' ORDER BY Id LIMIT 2000"
            async with s.get(f"{V}/query", params={"q": q}) as r:
                body = await r.read()
                assert r.status == 200, body[:300]
            page = json.loads(body)
            if not page["records"]:
                break
            records += len(page["records"])
            last = page["records"][-1]["Id"]
        dt = time.perf_counter() - t0
        out["keyset_records"] = records
        out["keyset_records_per_s"] = round(records / dt)
        # Cursor paging through nextRecordsUrl.
        records = 0
        t0 = time.perf_counter()
        url: str | None = f"{V}/query?q=" + f"SELECT {FIELDS} FROM Lead".replace(" ", "+")
        n = 0
        while url and n < pages:
            async with s.get(url) as r:
                page = json.loads(await r.read())
            records += len(page["records"])
            url = page.get("nextRecordsUrl")
            n += 1
        dt = time.perf_counter() - t0
        out["cursor_records"] = records
        out["cursor_records_per_s"] = round(records / dt)
        # Id IN (...) reads, as the flusher does (chunked below the 16 KB URI cap).
        ids = emu.state.tables["Lead"].ids[::97][:5000]
        t0 = time.perf_counter()
        got = 0
        for k in range(0, len(ids), 600):
            chunk = "','".join(ids[k:k + 600])
            q = f"SELECT {FIELDS} FROM Lead WHERE Id IN ('{chunk}')"
            async with s.get(f"{V}/query", params={"q": q}) as r:
                got += len(json.loads(await r.read())["records"])
        dt = time.perf_counter() - t0
        out["id_in_records"] = got
        out["id_in_records_per_s"] = round(got / dt)
        # Account fan-out: Contacts of 200 changed Accounts per query.
        accounts = emu.state.tables["Account"].ids[::53][:2000]
        t0 = time.perf_counter()
        got = 0
        queries = 0
        for k in range(0, len(accounts), 200):
            chunk = "','".join(accounts[k:k + 200])
            q = ("SELECT Id, Email, Account.Name, Account.Industry FROM Contact "
                 f"WHERE AccountId IN ('{chunk}')")
            async with s.get(f"{V}/query", params={"q": q}) as r:
                got += len(json.loads(await r.read())["records"])
            queries += 1
        dt = time.perf_counter() - t0
        out["fanout_queries_per_s"] = round(queries / dt, 1)
        out["fanout_records_per_s"] = round(got / dt)
    return out


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    leads = args.records // 2
    contacts = args.records * 3 // 10
    accounts = args.records - leads - contacts
    gc.disable()
    t0 = time.perf_counter()
    emu = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=accounts, seed_contacts=contacts, seed_leads=leads,
        daily_api_max=10_000_000))
    result["seed_records"] = accounts + contacts + leads
    result["seed_s"] = round(time.perf_counter() - t0, 2)
    gc.enable()
    gc.freeze()
    await emu.start()
    try:
        result.update(await _query_bench(emu, args.pages))
    finally:
        await emu.stop()
    result["query_target_records_per_s"] = 40_000
    result["seed_target_s"] = 60
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to seed")
    parser.add_argument("--pages", type=int, default=100, help="query pages of 2,000 per mode")
    parser.add_argument("--cometd-events", type=int, default=50_000)
    parser.add_argument("--skip-cometd", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(_run(args))
    helper = ROOT / "scripts" / "_bench_sf_cometd.py"
    if not args.skip_cometd and helper.exists():
        spec = importlib.util.spec_from_file_location("_bench_sf_cometd", helper)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result["cometd"] = module.bench_cometd(events=args.cometd_events)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
