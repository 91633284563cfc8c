"""Throughput of the store: CDC events recorded, merged events, enqueue + lease + ack of a
burst; on SQLite (synchronous FULL and NORMAL) and, with `--backend postgres`, on a PostgreSQL
server it starts itself (streamsync/testing/pg_server.py) with fsync and synchronous commits
on, as in production. The last line is JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamsync.adapters.store import QueueInput, Store, StoreAPI  # noqa: E402
from streamsync.adapters.store.postgres import PostgresStore  # noqa: E402
from streamsync.testing.pg_server import PgServer  # noqa: E402

Opener = Callable[[], Awaitable[StoreAPI]]


async def _bench(open_store: Opener, events: int, burst: int,
                 drainers: int = 1) -> dict[str, Any]:
    store = await open_store()
    try:
        now = time.time()
        started = time.perf_counter()
        for n in range(events):
            await store.record_event(
                "/data/LeadChangeEvent", n, [QueueInput("Lead", f"00Q{n:015d}")], n, now
            )
        single_s = time.perf_counter() - started

        merged = [QueueInput("Contact", f"003{n:015d}") for n in range(2_000)]
        started = time.perf_counter()
        rounds = max(1, burst // 2_000)
        for n in range(rounds):
            await store.record_event("/data/ContactChangeEvent", n, merged, n, now)
        merged_s = (time.perf_counter() - started) / rounds

        while leases := await store.lease("bench", 1_000, 60.0, now):  # the events above
            await store.ack(leases)
        started = time.perf_counter()
        for start in range(0, burst, 2_000):  # as ingest and reconciliation enqueue: in pages
            await store.enqueue([QueueInput("Account", f"001{n:015d}")
                                 for n in range(start, min(burst, start + 2_000))],
                                now, "reconcile")
        enqueue_s = time.perf_counter() - started
        depth = (await store.queue_stats(now)).depth
        started = time.perf_counter()
        totals = {"drained": 0, "batches": 0, "lease_s": 0.0}

        async def drainer(name: str) -> None:  # as the service's flush loops do, concurrently
            while True:
                t = time.perf_counter()
                leases = await store.lease(name, 1_000, 60.0, now)
                totals["lease_s"] += time.perf_counter() - t
                if not leases:
                    return
                deleted = (await store.ack(leases)).deleted  # awaited before the sum is read
                totals["batches"] += 1
                totals["drained"] += deleted

        await asyncio.gather(*(drainer(f"bench-{n}") for n in range(drainers)))
        drain_s = time.perf_counter() - started
        drained, batches, lease_s_total = (int(totals["drained"]), int(totals["batches"]),
                                           totals["lease_s"])
        return {
            "single_id_events_per_s": round(events / single_s, 1),
            "merged_2000_event_ms": round(merged_s * 1000, 2),
            "drain_rows": drained,
            "queue_depth_before_drain": depth,
            "drain_rows_per_s": round(drained / drain_s, 1),
            "lease_1000_ms_avg": round(lease_s_total / max(1, batches) * 1000, 2),
            "records_per_s": round(burst / (enqueue_s + drain_s), 1),
        }
    finally:
        await store.close()


async def _postgres(events: int, burst: int, drainers: int) -> dict[str, Any]:
    server = await asyncio.to_thread(PgServer.start, durable=True)
    try:
        return await _bench(lambda: PostgresStore.open(server.url()), events, burst, drainers)
    finally:
        await asyncio.to_thread(server.destroy)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shortened run (a few seconds)")
    parser.add_argument("--events", type=int, default=2_000, help="single-id CDC events")
    parser.add_argument("--burst", type=int, default=50_000, help="rows queued, then drained")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--drainers", type=int, default=1,
                        help="concurrent lease+ack loops (the service runs flush.concurrency, 4)")
    args = parser.parse_args()
    events, burst = (300, 10_000) if args.quick else (args.events, args.burst)
    results: dict[str, Any] = {"events": events, "burst": burst, "drainers": args.drainers}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("FULL", "NORMAL"):
                path = Path(tmp) / f"bench-{mode.lower()}.db"

                async def sqlite(path: Path = path, mode: Any = mode) -> StoreAPI:
                    return await Store.open(path, synchronous=mode)

                figures = await _bench(sqlite, events, burst, args.drainers)
                print(f"sqlite synchronous={mode}: {figures}", flush=True)
                results.update({f"{key}_{mode.lower()}": value for key, value in figures.items()})
    if args.backend in ("postgres", "both"):
        figures = await _postgres(events, burst, args.drainers)
        print(f"postgres (fsync on): {figures}", flush=True)
        results.update({f"{key}_postgres": value for key, value in figures.items()})
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
