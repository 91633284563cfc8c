"""Benchmark the shared Iterable rate budget: the service under load and a backfill, as separate
processes on one store, against the Iterable emulator's real limits (bulkUpdate 5 requests/s).

Both emulators run in this process (Salesforce with every Contact and Lead seeded, Iterable with
its documented limits and `--iterable-latency-ms` per call); every Contact is queued in the store
as the service's backlog; `python -m streamsync run` drains it while
`python -m streamsync.backfill --objects Lead` loads the Leads beside it. The measurement window
runs from the backfill's first Lead write to its last (the service must still have Contacts to
sync when it ends); in it, every bulkUpdate Iterable answered (both processes) against the
ceiling, the 429s, and each process's share (told apart by the users in each request: mostly
Leads is the backfill's, mostly Contacts the service's). `budgets_in_use()` is sampled from the
store midway.

    .venv/bin/python scripts/bench_shared_budget.py [--quick] [--leads 3000] [--contacts 12000]
        [--batch 50]

The store is the SQLite file the two processes share (the PostgreSQL budget has the same
semantics and its own tests: tests/adapters/test_store_budget.py, test_shared_ratelimit.py).

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.adapters.store import QueueInput, Store  # noqa: E402
from streamsync.emulators.iterable import (  # noqa: E402
    IterableEmulator,
    IterableEmulatorConfig,
)
from streamsync.emulators.salesforce import (  # noqa: E402
    SalesforceEmulator,
    SalesforceEmulatorConfig,
)

BULK = "POST /api/users/bulkUpdate"
CEILING = 5.0


def log(text: str) -> None:
    sys.stderr.write(f"[bench_shared_budget] {text}\n")
    sys.stderr.flush()


def config_text(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path, batch: int) -> str:
    return f"""
[salesforce]
login_url = "{sf.instance_url}"
auth = "client_credentials"
client_id = "{sf.client_id}"
api_version = "{sf.config.api_version}"
timeout_s = 60

[iterable]
base_url = "{it.base_url}"
project_type = "email"
rate_limit_per_s = {CEILING}
batch_max_users = {batch}
timeout_s = 60

[queue]
path = "{workdir / 'streamsync.db'}"

[backfill]
parallel = 4
page_size = 2000

[health]
enabled = false

[logging]
level = "WARNING"

[objects.Lead]
[objects.Contact]
"""


def emails(sf: SalesforceEmulator, sobject: str) -> set[str]:
    out = set()
    for record_id in sf.state.table(sobject).ids:
        record = sf.state.record(sobject, record_id)
        if record and record.get("Email"):
            out.add(str(record["Email"]).lower())
    return out


def requests_by_process(it: IterableEmulator, leads: set[str], contacts: set[str]
                        ) -> dict[str, dict[int, float]]:
    """bulkUpdate requests (request_no → received time) per process: a request whose users are
    mostly Leads is the backfill's, mostly Contacts the service's (a person can be both)."""
    votes: dict[int, list[int]] = {}
    received: dict[int, float] = {}
    for side, keys in ((0, leads), (1, contacts)):
        for key in keys:
            for entry in it.state.history(key):
                number, at = entry.get("request_no"), entry.get("received_mono")
                if number is None or at is None or entry.get("endpoint") != BULK:
                    continue
                votes.setdefault(int(number), [0, 0])[side] += 1
                received[int(number)] = float(at)
    out: dict[str, dict[int, float]] = {"backfill": {}, "service": {}}
    for number, (lead_votes, contact_votes) in votes.items():
        owner = "backfill" if lead_votes >= contact_votes else "service"
        out[owner][number] = received[number]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sf = SalesforceEmulator(SalesforceEmulatorConfig(
        seed_accounts=20, seed_contacts=args.contacts, seed_leads=args.leads, latency_ms=20.0))
    it = IterableEmulator(IterableEmulatorConfig(project_type="email",
                                                 latency_ms=args.iterable_latency_ms))
    await sf.start("127.0.0.1", 0)
    await it.start("127.0.0.1", 0)
    calls: list[tuple[float, str, int]] = []
    record_call = it.state.record_call

    def recording(endpoint: str, status: int) -> None:
        calls.append((time.monotonic(), endpoint, status))
        record_call(endpoint, status)

    it.state.record_call = recording  # type: ignore[method-assign]
    service: asyncio.subprocess.Process | None = None
    backfill: asyncio.subprocess.Process | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
            workdir = Path(tmp)
            config = workdir / "config.toml"
            config.write_text(config_text(sf, it, workdir, args.batch))
            store = await Store.open(workdir / "streamsync.db")
            contacts = [QueueInput("Contact", i) for i in sf.state.table("Contact").ids]
            await store.enqueue(contacts, time.time(), source="reconcile")
            log(f"{len(contacts):,} Contacts queued; starting the service")
            env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
                   "STREAMSYNC_ITERABLE_API_KEY": it.api_key or "",
                   "PYTHONPATH": str(ROOT)}
            service = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streamsync", "run", "--config", str(config), env=env,
                cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            while not any(e == BULK for _t, e, _s in calls):
                if service.returncode is not None:
                    raise RuntimeError(f"the service exited {service.returncode}")
                await asyncio.sleep(0.1)
            log(f"the service writes; starting the backfill of {args.leads:,} Leads")
            backfill = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streamsync.backfill", "--config", str(config),
                "--objects", "Lead", "--json", env=env, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            communicate = asyncio.ensure_future(backfill.communicate())
            await asyncio.sleep(args.sample_after_s)
            use = [{"budget": u.budget_key.rsplit(":", 1)[-1], "ceiling_per_s": u.ceiling_per_s,
                    "drawing_per_s": round(u.drawing_per_s, 2),
                    "drawers": [{"kind": d.kind, "pid": d.pid,
                                 "rate_per_s": round(d.rate_per_s, 2)} for d in u.drawers]}
                   for u in await store.budgets_in_use()]
            out, err = await communicate
            if backfill.returncode != 0:
                raise RuntimeError(f"backfill exited {backfill.returncode}: "
                                   f"{err.decode()[-2000:]}")
            contact_emails = emails(sf, "Contact")
            synced = sum(1 for key in it.state.snapshot() if key in contact_emails)
            await store.close()
    finally:
        for proc in (backfill, service):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 20)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        await it.stop()
        await sf.stop()
    summary = orjson.loads(out.decode().splitlines()[-1])
    by_process = requests_by_process(it, emails(sf, "Lead"), contact_emails)
    lead_requests = by_process["backfill"]
    start, end = min(lead_requests.values()), max(lead_requests.values())
    window = [(t, s) for t, e, s in calls if e == BULK and start <= t <= end]
    answered = len(window)
    service_in_window = sum(1 for t in by_process["service"].values() if start <= t <= end)
    backfill_in_window = sum(1 for t in lead_requests.values() if start <= t <= end)
    classified = service_in_window + backfill_in_window
    ratio = (answered - 1) / (end - start) / CEILING
    return {
        "ceiling_per_s": CEILING,
        "window_s": round(end - start, 2),
        "bulk_requests_in_window": answered,
        "ratio": round(ratio, 3),
        "iterable_429s": sum(1 for _t, e, s in calls if e == BULK and s == 429),
        "service_share": round(service_in_window / max(1, classified), 3),
        "backfill_share": round(backfill_in_window / max(1, classified), 3),
        "service_contacts_left": len(contact_emails) - synced,
        "backfill_records_written": summary["records_written"],
        "budget_sample": use,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 600 Leads and 3,000 Contacts, batches of 50")
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--contacts", type=int, default=12000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    parser.add_argument("--sample-after-s", type=float, default=12.0,
                        help="when to sample budgets_in_use() after the backfill starts")
    args = parser.parse_args(argv)
    if args.quick:
        args.leads, args.contacts, args.batch = 600, 3000, 50
        args.sample_after_s = min(args.sample_after_s, 4.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if result["iterable_429s"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
