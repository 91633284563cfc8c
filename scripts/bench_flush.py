"""Benchmark: the real-time write path (queue → flusher → SOQL → pipeline → Iterable) on the
emulators with realistic latency and Iterable's real limits; prints JSON.

Two phases, both through `Flusher.run` with the production defaults (batches of 1,000 users,
5 bulkUpdate requests/s, 4 requests in flight, 4 flush loops of 2,000 ids):
- burst: `--burst` Contacts changed in one mass update and queued at once; reports the drain
  time from the commit (queueing included) and users/s against Iterable's ceiling of 5,000
  users/s (the emulator's own time to apply the mass update is reported apart).
- stream: `--rate` changes/s for `--duration` s, each queued with its commit time as ingest
  would; reports commit-to-receipt latency (Salesforce commit → Iterable received the write)
  p50/p99/max from the Iterable emulator's write history.

Both emulators run in this process (same event loop and core as the flusher), so the figures
are pessimistic about CPU.

    .venv/bin/python scripts/bench_flush.py [--burst 50000] [--rate 200] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.adapters.http import UsageCounter, make_session  # noqa: E402
from streamsync.adapters.iterable import IterableClient  # noqa: E402
from streamsync.adapters.ratelimit import RateLimiter  # noqa: E402
from streamsync.adapters.salesforce import SalesforceClient  # noqa: E402
from streamsync.adapters.salesforce_auth import SalesforceAuth  # noqa: E402
from streamsync.adapters.store import QueueInput, Store  # noqa: E402
from streamsync.config import Config, parse_config  # noqa: E402
from streamsync.core.ids import to_18  # noqa: E402
from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig  # noqa: E402
from streamsync.emulators.salesforce import (  # noqa: E402
    SalesforceEmulator,
    SalesforceEmulatorConfig,
)
from streamsync.runtime.describes import startup_mappings  # noqa: E402
from streamsync.runtime.flusher import Flusher  # noqa: E402
from streamsync.runtime.metrics import Metrics  # noqa: E402
from streamsync.runtime.pipeline import SyncPipeline  # noqa: E402


def _config(sf: SalesforceEmulator, it: IterableEmulator, db: Path) -> Config:
    data: dict[str, Any] = {
        "salesforce": {"login_url": sf.instance_url, "auth": "client_credentials",
                       "client_id": sf.client_id},
        "iterable": {"base_url": it.base_url, "project_type": "email"},
        "queue": {"path": str(db)},
        "health": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    env = {"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
           "STREAMSYNC_ITERABLE_API_KEY": it.api_key}
    return parse_config(data, env)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drained(store: Store, since: float) -> float:
    while (await store.queue_stats(time.time())).depth:
        await asyncio.sleep(0.05)
    return time.time() - since


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sf = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=max(1, args.burst // 50), seed_contacts=args.burst,
        latency_ms=args.sf_latency_ms))
    it = IterableEmulator(IterableEmulatorConfig(latency_ms=args.iterable_latency_ms,
                                                 rate_limits=True, record_history=True))
    await sf.start("127.0.0.1", 0)
    await it.start("127.0.0.1", 0)
    out: dict[str, Any] = {"burst": args.burst, "rate_per_s": args.rate,
                           "duration_s": args.duration, "sf_latency_ms": args.sf_latency_ms,
                           "iterable_latency_ms": args.iterable_latency_ms}
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(sf, it, Path(tmp) / "bench.db")
        store = await Store.open(config.queue.path, synchronous="NORMAL")
        try:
            async with make_session(30.0) as session:
                counter = UsageCounter()
                secret = config.secrets.sf_client_secret
                key = config.secrets.iterable_api_key
                assert secret is not None and key is not None
                auth = SalesforceAuth(session, login_url=config.salesforce.login_url,
                                      flow="client_credentials",
                                      client_id=config.salesforce.client_id,
                                      client_secret=secret.get_secret_value(), counter=counter)
                salesforce = SalesforceClient(session, auth, config.salesforce.api_version,
                                              counter, max_in_flight=8)
                limiter = RateLimiter(config.iterable.rate_limit_per_s,
                                      max_in_flight=config.iterable.max_in_flight)
                iterable = IterableClient(session, it.base_url, key.get_secret_value(), counter,
                                          bulk_limiter=limiter)
                metrics = Metrics()
                pipeline = SyncPipeline(config=config, store=store, iterable=iterable,
                                        metrics=metrics,
                                        mappings=await startup_mappings(config, salesforce))
                flusher = Flusher(config=config, store=store, salesforce=salesforce,
                                  pipeline=pipeline, metrics=metrics, owner="bench")
                stop = asyncio.Event()
                runner = asyncio.create_task(flusher.run(stop))
                ids = [to_18(i) for i in sf.select_ids("Contact", limit=args.burst)]
                if args.burst:
                    started = time.time()
                    sf.state.mass_update("Contact", ids, {"FirstName": "Burst"})
                    committed = time.time()
                    await store.enqueue([QueueInput("Contact", i) for i in ids], committed,
                                        "cdc", int(committed * 1000))
                    out["burst_commit_s"] = round(committed - started, 2)
                    out["burst_enqueue_s"] = round(time.time() - committed, 2)
                    drain_s = await _drained(store, committed)
                    out["burst_drain_s"] = round(drain_s, 2)
                    out["burst_users_per_s"] = round(len(ids) / drain_s, 1)
                    out["burst_vs_ceiling"] = round(len(ids) / drain_s / 5000.0, 3)
                    out["rate_limited"] = limiter.rate_limited_total
                if args.rate and args.duration:
                    out.update(await _stream(args, sf, it, store, ids))
                stop.set()
                await runner
                out["dead_letters"] = len(await store.dead_letters())
                out["iterable_calls"] = it.state.counts()
                out["salesforce_calls"] = counter.snapshot().get("salesforce", {})
        finally:
            await store.close()
            await sf.stop()
            await it.stop()
    return out


async def _stream(args: argparse.Namespace, sf: SalesforceEmulator, it: IterableEmulator,
                  store: Store, ids: list[str]) -> dict[str, Any]:
    """`rate` changes per second, each queued with its commit time; latencies from receipts."""
    rnd = random.Random(7)
    commits: dict[str, list[float]] = {}
    started = time.time()
    sent = 0
    while time.time() - started < args.duration:
        due = int((time.time() - started) * args.rate)
        while sent < due:
            sf_id = rnd.choice(ids)
            sent += 1
            value = f"v{sent}"
            commit = time.time()
            sf.state.update("Contact", sf_id, {"FirstName": value})
            await store.enqueue([QueueInput("Contact", sf_id)], commit, "cdc", int(commit * 1000))
            commits[value] = [commit]
        await asyncio.sleep(0.005)
    await _drained(store, started)
    latencies: list[float] = []
    seen: set[str] = set()
    for email in it.state.snapshot():
        for entry in it.state.history(email):
            title = (entry.get("dataFields") or {}).get("firstName")
            if title in commits and title not in seen:
                seen.add(title)
                latencies.append(entry["received_wall"] - commits[title][0])
    return {"stream_changes": sent, "stream_writes_seen": len(latencies),
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_p99_s": round(_percentile(latencies, 0.99), 3) if latencies else None,
            "latency_max_s": round(max(latencies), 3) if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--sf-latency-ms", type=float, default=150.0)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
