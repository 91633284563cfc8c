"""Benchmark: bulkUpdate users/s the Iterable emulator absorbs with limits lifted and no latency.

Runs the emulator as its own process (one event loop, i.e. one core) through its command line,
sends pre-encoded bulkUpdate bodies (1,000 users x ~15 fields) from this process and prints
JSON: users/s over wall time, and users per CPU-second of the emulator process (psutil).
It also times the request hot path in-process, without HTTP (orjson.loads of the body, per-user
checks, field-type registry, applying to profiles, encoding the reply), per user.

    .venv/bin/python scripts/bench_iterable_emulator.py [--requests 60] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig  # noqa: E402
from streamsync.emulators.iterable.updates import Receipt  # noqa: E402


def build_body(request_no: int, users: int, fields: int) -> bytes:
    """One bulkUpdate body with `users` users of `fields` data fields each."""
    batch: list[dict[str, Any]] = []
    for i in range(users):
        n = request_no * users + i
        data: dict[str, Any] = {
            "firstName": f"First{n}",
            "lastName": f"Last{n}",
            "company": f"Company {n % 977}",
            "title": "Director of Things",
            "leadSource": "Web",
            "status": "Open - Not Contacted",
            "annualRevenue": 1000.5 + n,
            "employees": n % 5000,
            "isConverted": n % 2 == 0,
            "createdDate": "2024-01-31 12:34:56 +00:00",
            "lastModified": "2024-02-01T08:00:00.000+0000",
            "city": "Springfield",
            "country": "US",
            "sfId": f"00Q{n:015d}",
            "score": n % 100,
        }
        trimmed = dict(list(data.items())[:fields])
        batch.append({"email": f"user{n}@example.com", "dataFields": trimmed})
    return orjson.dumps({"users": batch})


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the emulator, send the bodies, measure."""
    cmd = [
        sys.executable, "-m", "streamsync.emulators.iterable", "--port", "0",
        "--latency-ms", "0", "--no-rate-limits",
    ]
    if args.no_history:
        cmd.append("--no-history")
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        info = orjson.loads(await proc.stdout.readline())
        server = psutil.Process(proc.pid)
        bodies = [build_body(i, args.users, args.fields) for i in range(args.requests)]
        url = info["base_url"] + "/api/users/bulkUpdate"
        headers = {"Api-Key": info["api_key"], "Content-Type": "application/json"}
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        ok = 0
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=bodies[0], headers=headers) as warm:
                assert warm.status == 200, await warm.text()

            async def worker() -> None:
                nonlocal ok
                while not queue.empty():
                    body = queue.get_nowait()
                    async with session.post(url, data=body, headers=headers) as resp:
                        reply = await resp.json()
                        if resp.status != 200 or reply["failCount"]:
                            raise RuntimeError(f"unexpected reply {resp.status}: {reply}")
                        ok += reply["successCount"]

            cpu0 = server.cpu_times()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            wall = time.perf_counter() - t0
            cpu1 = server.cpu_times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return {
            "benchmark": "iterable_emulator_bulkUpdate",
            "requests": args.requests,
            "users_per_request": args.users,
            "fields_per_user": args.fields,
            "body_bytes_avg": sum(map(len, bodies)) // len(bodies),
            "users_applied": ok,
            "wall_s": round(wall, 3),
            "users_per_s_wall": round(ok / wall),
            "emulator_cpu_s": round(cpu, 3),
            "users_per_emulator_cpu_s": round(ok / cpu) if cpu > 0 else None,
            "history": not args.no_history,
            "target_users_per_s": 20_000,
            "meets_target": ok / wall >= 20_000,
        }
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def hot_path(bodies: list[bytes]) -> dict[str, Any]:
    """Time parse + check + apply + reply encoding of each body in this process, no HTTP."""
    emu = IterableEmulator(IterableEmulatorConfig(latency_ms=0, rate_limits=False))
    users = 0
    t0 = time.perf_counter()
    for i, raw in enumerate(bodies):
        receipt = Receipt("POST /api/users/bulkUpdate", "bulk", time.monotonic(), time.time(), i)
        result = emu.process_bulk(emu.project, orjson.loads(raw), receipt)
        orjson.dumps(result.body())
        users += result.success
    elapsed = time.perf_counter() - t0
    return {
        "hot_path_users": users,
        "hot_path_s": round(elapsed, 3),
        "hot_path_us_per_user": round(elapsed / users * 1e6, 2),
        "hot_path_users_per_s": round(users / elapsed),
    }


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--fields", type=int, default=15)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--no-history", action="store_true")
    args = p.parse_args()
    report = asyncio.run(run(args))
    report.update(hot_path([build_body(i, args.users, args.fields) for i in range(args.requests)]))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
