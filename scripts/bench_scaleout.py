"""Benchmark several workers on one PostgreSQL store: failover time, burst throughput with 1 and
3 workers, the store's own throughput on both backends, and memory per worker.

Everything runs on this machine as separate processes: a throwaway PostgreSQL server
(streamsync/testing/pg_server.py, tuned for throwaway data: fsync off), the Salesforce emulator
(`--sf-latency-ms` per call), the Iterable emulator with Iterable's real limits (bulkUpdate 5
requests/s, `--iterable-latency-ms`), and `python -m streamsync run` processes with the
production defaults except `[store] url` (and `--lease-s`, `--heartbeat-s`).

- store_records_per_s_{sqlite,postgres}: records per second through enqueue (batches of 1,000,
  one producer) and lease + ack (1,000 at a time, 4 concurrent loops as the service's
  flushers), in this process, `--store-records` records (`--store-only`: just these);
- burst_ratio_{1,3}_workers: a mass update of `--burst` Leads (scripts/bench_stream.py
  `burst_phase`: transactions of 10,000, 1 s apart) drained by 1, then 3 workers, in users/s
  against the ceiling (5 requests/s x 1,000 users); iterable_429s over both;
- failover_s_median: with 3 workers, `--failovers` times: kill -9 of the leader of the Lead
  channel, one Lead change at once, and the time until Iterable received that change (the new
  leader resumed the subscription from the stored replay id); the killed worker is replaced
  before the next round;
- peak_rss_mb_per_worker: the largest peak RSS of any worker process.

    .venv/bin/python scripts/bench_scaleout.py [--quick] [--burst 50000] [--failovers 5]
        [--workers 1,3] [--store-only]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_stream as bs  # noqa: E402

from streamsync.adapters.store import QueueInput, Store, StoreAPI  # noqa: E402
from streamsync.adapters.store.postgres import PostgresStore  # noqa: E402
from streamsync.testing.pg_server import PgServer  # noqa: E402

LEAD_CHANNEL = "/data/LeadChangeEvent"
FLUSH_LOOPS = 4
"""Concurrent lease + ack loops of the store measurement: `flush.concurrency`'s default."""


def log(text: str) -> None:
    sys.stderr.write(f"[bench_scaleout {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- the store alone


async def store_records_per_s(store: StoreAPI, records: int, loops: int = FLUSH_LOOPS) -> float:
    """Records per second through enqueue (one producer, as the ingest) and lease + ack
    (1,000 at a time, in `loops` concurrent loops, as the service's flushers)."""
    now = time.time()
    started = time.perf_counter()
    for start in range(0, records, 1000):
        await store.enqueue([QueueInput("Lead", f"00Q{n:015d}")
                             for n in range(start, min(records, start + 1000))], now, "cdc")

    async def flusher(name: str) -> int:
        done = 0
        while leases := await store.lease(name, 1000, 60.0, now):
            done += (await store.ack(leases)).deleted
        return done

    done = sum(await asyncio.gather(*(flusher(f"bench{n}") for n in range(loops))))
    elapsed = time.perf_counter() - started
    if done != records:
        raise bs.BenchError(f"the store drained {done} records, not {records}")
    return records / elapsed


# ---------------------------------------------------------------- the workers


class Workers:
    """`run` processes on one PostgreSQL database, each with its health port and RSS sampler."""

    def __init__(self, workdir: Path, sf: bs.Proc, it: bs.Proc, url: str,
                 workers: dict[str, str]) -> None:
        self.workdir = workdir
        self.sf, self.it, self.url = sf, it, url
        self.workers = workers
        self.procs: list[bs.Proc] = []
        self.samplers: list[bs.RssSampler] = []
        self.peak_rss = 0
        self.started = 0

    async def add(self, http: aiohttp.ClientSession) -> bs.Proc:
        """Start one more worker and wait until it is ready."""
        self.started += 1
        name = f"worker{self.started}"
        port = bs.free_port()
        config = self.workdir / f"{name}.toml"
        bs.write_config(config, self.sf.info, self.it.info, port, {
            "store": {"url": orjson.dumps(self.url).decode()}, "workers": self.workers})
        env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": self.sf.info["client_secret"],
               "STREAMSYNC_ITERABLE_API_KEY": self.it.info["api_key"]}
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                bs.PY, "-m", "streamsync", "run", "--config", str(config), cwd=ROOT, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
        proc = bs.Proc(name, process, log_path)
        self.procs.append(proc)
        sampler = bs.RssSampler(process.pid)
        sampler.start()
        self.samplers.append(sampler)
        await bs.wait_ready(http, proc, f"http://127.0.0.1:{port}/readyz")
        return proc

    def alive(self) -> list[bs.Proc]:
        return [p for p in self.procs if p.process.returncode is None]

    async def kill(self, pid: int) -> None:
        proc = next(p for p in self.procs if p.process.pid == pid)
        proc.process.send_signal(signal.SIGKILL)
        await proc.process.wait()

    async def stop(self) -> None:
        for proc in self.procs:
            await bs.stop_process(proc)
        for sampler in self.samplers:
            sampler.halt.set()
            sampler.join()
            self.peak_rss = max(self.peak_rss, sampler.peak_rss)


async def leader_pid(store: StoreAPI, channel: str, timeout_s: float = 120.0) -> int:
    """The pid of the worker leading `channel` (its worker id is host/pid/random)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.time()
        for lease in await store.channel_leases():
            holder = lease.held_by(now)
            if lease.channel == channel and holder is not None:
                return int(holder.split("/")[1])
        await asyncio.sleep(0.1)
    raise bs.BenchError(f"nobody leads {channel} after {timeout_s:.0f} s")


async def one_failover(env: bs.Env, workers: Workers, store: StoreAPI,
                       lead: tuple[str, str]) -> float:
    """kill -9 of the Lead channel's leader, one Lead change at once; seconds until Iterable
    received it."""
    sf_id, email = lead
    marker = f"Failover {uuid.uuid4().hex[:8]}"
    pid = await leader_pid(store, LEAD_CHANNEL)
    await workers.kill(pid)
    killed = time.time()
    await bs.post_json(env.http, f"{env.sf.info['control_url']}/mass-update", {
        "sobject": "Lead", "ids": [sf_id], "values": {"FirstName": marker}})
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        history = await bs.get_json(env.http, f"{env.it.info['control_url']}/history",
                                    key=email.lower())
        hit = next((h for h in history if (h.get("dataFields") or {}).get("firstName")
                    == marker and h.get("received_wall") is not None), None)
        if hit is not None:
            return float(hit["received_wall"]) - killed
        await asyncio.sleep(0.1)
    raise bs.BenchError(f"the change made after killing pid {pid} never reached Iterable")


def receipt_summary(offsets: Sequence[float]) -> dict[str, Any]:
    """Users received per instant (one request's users share it) and the gaps between."""
    sizes: dict[float, int] = {}
    for at in offsets:
        sizes[at] = sizes.get(at, 0) + 1
    times = sorted(sizes)
    gaps = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
    return {"instants": len(times), "under_1000": sum(1 for n in sizes.values() if n < 1000),
            "sizes": [sizes[t] for t in times], "times": times, "gaps_over_0_3_s":
            [g for g in gaps if g > 0.3]}


async def burst(env: bs.Env, args: argparse.Namespace, ceiling: float) -> dict[str, Any]:
    return await bs.burst_phase(env, args.burst, args.burst_tx_size, args.burst_tx_interval_s,
                                ceiling)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    seed_leads = math.ceil(args.burst / bs.EMAIL_SHARE * 1.03) + 200
    worker_conf = {"lease_s": str(args.lease_s), "heartbeat_s": str(args.heartbeat_s)}
    out: dict[str, Any] = {"burst": args.burst, "failovers": args.failovers,
                           "lease_s": args.lease_s, "heartbeat_s": args.heartbeat_s,
                           "store_records": args.store_records}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_scaleout_") as tmp:
        workdir = Path(tmp)
        server = await asyncio.to_thread(PgServer.start)
        procs: list[bs.Proc] = []
        groups: list[Workers] = []
        try:
            out.update(await _store_figures(workdir, server, args.store_records))
            if args.store_only:
                return out
            sf = await bs.start_emulator("salesforce", "streamsync.emulators.salesforce", [
                "--port", "0", "--seed-leads", str(seed_leads),
                "--latency-ms", str(args.sf_latency_ms)], workdir)
            procs.append(sf)
            it = await bs.start_emulator("iterable", "streamsync.emulators.iterable", [
                "--port", "0", "--latency-ms", str(args.iterable_latency_ms)], workdir)
            procs.append(it)
            limits = (await bs._get(f"{it.info['control_url']}/limits"))["limits"]
            ceiling = float(limits.get("bulkUpdate", {}).get(
                "rate_per_s", bs.ITERABLE_RATE_PER_S)) * bs.BATCH_USERS
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                emails = await bs.lead_emails(http, sf.info)
                # One database for both rounds: the second resumes from the stored replay ids
                # (a new one would first replay every retained event, the first burst too).
                url = await _database(server, "workers")
                for count in args.workers:
                    group = Workers(workdir, sf, it, url, worker_conf)
                    groups.append(group)
                    for _ in range(count):
                        await group.add(http)
                    log(f"{count} worker(s) ready")
                    env = bs.Env(http, sf, it, group.procs[0], emails,
                                 bs.EventLog(http, sf.info["control_url"]))
                    figures = await burst(env, args, ceiling)
                    log(f"burst with {count} worker(s): " + orjson.dumps({
                        k: v for k, v in figures.items()
                        if k not in ("burst_request_offsets_s",)}).decode())
                    log(f"burst with {count} worker(s), receipts: "
                        f"{receipt_summary(figures['burst_request_offsets_s'])}")
                    out[f"burst_ratio_{count}_worker{'s' if count > 1 else ''}"] = \
                        figures["burst_ratio_to_ceiling"]
                    out[f"burst_users_per_s_{count}"] = figures["burst_users_per_s"]
                    out[f"burst_429s_{count}"] = figures["burst_iterable_429s"]
                    if count == 3 and args.failovers:
                        out.update(await _failovers(env, group, url, emails, args.failovers,
                                                    http))
                    await group.stop()
                counts = await bs.iterable_counts(env)
                out["iterable_429s"] = counts["bulk_429"]
            out["peak_rss_mb_per_worker"] = round(max(g.peak_rss for g in groups) / 1e6, 1)
        finally:
            for group in groups:
                await group.stop()
            for proc in reversed(procs):
                await bs.stop_process(proc)
            await asyncio.to_thread(server.destroy)
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    return out


async def _store_figures(workdir: Path, server: PgServer, records: int) -> dict[str, Any]:
    sqlite = await Store.open(workdir / "store.db")
    try:
        sqlite_rate = await store_records_per_s(sqlite, records)
    finally:
        await sqlite.close()
    pg = await PostgresStore.open(await _database(server, "store_bench"))
    try:
        pg_rate = await store_records_per_s(pg, records)
    finally:
        await pg.close()
    log(f"store: sqlite {sqlite_rate:.0f}/s, postgres {pg_rate:.0f}/s")
    return {"store_records_per_s_sqlite": round(sqlite_rate, 1),
            "store_records_per_s_postgres": round(pg_rate, 1)}


async def _failovers(env: bs.Env, group: Workers, url: str, emails: dict[str, str | None],
                     rounds: int, http: aiohttp.ClientSession) -> dict[str, Any]:
    leads = [(i, e) for i, e in sorted(emails.items()) if e][-rounds:]
    store = await PostgresStore.open(url)
    times: list[float] = []
    try:
        for lead in leads:
            took = await one_failover(env, group, store, lead)
            times.append(took)
            log(f"failover: {took:.2f} s")
            await group.add(http)  # back to three workers
    finally:
        await store.close()
    return {"failover_s_median": round(statistics.median(times), 2),
            "failover_s_each": [round(t, 2) for t in times]}


async def _database(server: PgServer, name: str) -> str:
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url(name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10,000-change bursts, 3 failovers, 5,000 store records")
    parser.add_argument("--burst", type=int, default=None, help="mass-update size (50000)")
    parser.add_argument("--burst-tx-size", type=int, default=10_000)
    parser.add_argument("--burst-tx-interval-s", type=float, default=1.0)
    parser.add_argument("--failovers", type=int, default=None, help="leader kills (5)")
    parser.add_argument("--store-records", type=int, default=None,
                        help="records through enqueue + lease + ack per backend (50000)")
    parser.add_argument("--store-only", action="store_true",
                        help="only the store figures (no emulators, no workers)")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1, 3], help="worker counts to burst with, in order (1,3)")
    parser.add_argument("--lease-s", type=float, default=15.0, help="[workers] lease_s")
    parser.add_argument("--heartbeat-s", type=float, default=5.0, help="[workers] heartbeat_s")
    parser.add_argument("--sf-latency-ms", type=float, default=150.0)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.burst is None:
        args.burst = 10_000 if args.quick else 50_000
    if args.failovers is None:
        args.failovers = 3 if args.quick else 5
    if args.store_records is None:
        args.store_records = 5_000 if args.quick else 50_000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return bs.print_result(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
