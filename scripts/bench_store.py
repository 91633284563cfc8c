"""Throughput of the SQLite store: CDC events recorded, merged events, lease+ack drain; JSON out."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from streamsync.adapters.store import QueueInput, Store, Synchronous


async def _bench(root: Path, synchronous: Synchronous, events: int, burst: int) -> dict[str, Any]:
    store = await Store.open(root / f"bench-{synchronous.lower()}.db", synchronous=synchronous)
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

        await store.enqueue(
            [QueueInput("Account", f"001{n:015d}") for n in range(burst)], now, "reconcile"
        )
        depth = (await store.queue_stats(now)).depth
        started = time.perf_counter()
        drained = 0
        lease_s_total = 0.0
        batches = 0
        while True:
            t = time.perf_counter()
            leases = await store.lease("bench", 1_000, 60.0, now)
            lease_s_total += time.perf_counter() - t
            if not leases:
                break
            batches += 1
            drained += (await store.ack(leases)).deleted
        drain_s = time.perf_counter() - started
        return {
            "single_id_events_per_s": round(events / single_s, 1),
            "merged_2000_event_ms": round(merged_s * 1000, 2),
            "drain_rows": drained,
            "queue_depth_before_drain": depth,
            "drain_rows_per_s": round(drained / drain_s, 1),
            "lease_1000_ms_avg": round(lease_s_total / max(1, batches) * 1000, 2),
        }
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shortened run (a few seconds)")
    parser.add_argument("--events", type=int, default=2_000, help="single-id CDC events")
    parser.add_argument("--burst", type=int, default=50_000, help="rows queued, then drained")
    args = parser.parse_args()
    events, burst = (300, 10_000) if args.quick else (args.events, args.burst)
    results: dict[str, Any] = {"events": events, "burst": burst}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("FULL", "NORMAL"):
            figures = await _bench(Path(tmp), mode, events, burst)
            print(f"synchronous={mode}: {figures}", flush=True)
            results.update({f"{key}_{mode.lower()}": value for key, value in figures.items()})
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
