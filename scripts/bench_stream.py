"""Benchmark the real-time path end to end: both emulators and the service as separate processes.

Salesforce emulator (`--latency-ms 150` per API call), Iterable emulator (`--latency-ms 100`,
Iterable's real limits: bulkUpdate 5 requests/s, 4 MB bodies) and `python -m streamsync run`
with its default tunables, each its own process. The workload goes through the Salesforce
emulator's control API, so every change travels CDC → ingest → queue → SOQL → Iterable:

- stream: `POST /__emulator__/burst` changes `--rate` Leads per second for `--duration` s (one
  transaction per change, `FirstName` set to a value unique to that transaction);
- burst: `POST /__emulator__/mass-update` changes `--burst` Leads with an email, back to back in
  transactions of `--burst-tx-size` records (10,000, the Bulk API's batch cap: one transaction
  of 50,000 records exceeds 100,000 field changes and Salesforce sends GAP_OVERFLOW instead);
  each transaction's changes come as merged CDC events with many recordIds. The transactions
  start `--burst-tx-interval-s` (1 s) apart: the emulator is single-threaded and answers no
  query while it applies 10,000 updates (~0.3 s), so back-to-back transactions would stall the
  service's reads for over a second, an artefact of the emulator; 50,000 changes in ~4 s still
  arrive twice as fast as Iterable can take them, so the queue never runs dry.

Latency is commit-to-receipt per change: the CDC `commitTimestamp` of the change (from the
emulator's event log) to the moment Iterable received the write carrying that change, found in
the Iterable emulator's history of the Lead's email by the transaction's unique value. The burst
rate is the burst's users over the time from the first transaction's publication (its control
call returned) to the last burst write Iterable received, against the ceiling (the emulator's
bulkUpdate limit, 5 requests/s, x the batch size, 1,000 users). Peak RSS of the service process
is sampled with psutil every 50 ms; Salesforce API calls come from the emulator's counters,
reset once the service is subscribed (the bench's own reads come before that).

    .venv/bin/python scripts/bench_stream.py [--quick] [--rate 200] [--duration 60]
        [--burst 50000] [--burst-tx-size 10000] [--burst-tx-interval-s 1]
        [--set flush.concurrency=3 ...]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.core.ids import to_18  # noqa: E402

PY = sys.executable
BATCH_USERS = 1000
ITERABLE_RATE_PER_S = 5.0
BULK_ENDPOINT = "POST /api/users/bulkUpdate"
EMAIL_SHARE = 0.97
"""The share of seeded Leads the Salesforce emulator gives an email (see its seed module)."""
HISTORY_CONCURRENCY = 16
START_TIMEOUT_S = 120.0


def log(text: str) -> None:
    sys.stderr.write(f"[bench_stream {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class BenchError(RuntimeError):
    """The benchmark could not run or measure what it set out to."""


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process, its log file and (for emulators) the JSON line it printed."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def start_emulator(name: str, module: str, args: list[str], workdir: Path) -> Proc:
    """Start an emulator CLI and wait for the JSON line it prints once it serves."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            PY, "-m", module, *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=err)
    proc = Proc(name, process, log_path)
    assert process.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
            if not line:
                raise BenchError(f"{name} exited before serving:\n{proc.tail()}")
            if line.strip().startswith(b"{"):
                proc.info = orjson.loads(line)
                return proc
    except BaseException:
        await stop_process(proc)
        raise


async def stop_process(proc: Proc, timeout_s: float = 60.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
    if proc.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.process.wait(), timeout_s)
        except TimeoutError:
            log(f"{proc.name} ignored SIGTERM for {timeout_s:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
            await proc.process.wait()
    return proc.process.returncode


class RssSampler(threading.Thread):
    """Samples one process's RSS and CPU time every `every_s` until stopped or it exits."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = 0
        self.cpu_s = 0.0
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                with self.proc.oneshot():
                    self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                    times = self.proc.cpu_times()
                    self.cpu_s = times.user + times.system
                    self.samples += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                return
            self.halt.wait(self.every_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(text: str) -> str:
    """A --set value as TOML: numbers and booleans as they are, anything else quoted."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered
    try:
        float(text)
    except ValueError:
        return orjson.dumps(text).decode()
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """`section.key=value` strings → {section: {key: TOML value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key or "." in key:
            raise BenchError(f"--set expects section.key=value, got {item!r}")
        out.setdefault(section, {})[key] = toml_value(value.strip())
    return out


def write_config(path: Path, sf: dict[str, Any], it: dict[str, Any], health_port: int,
                 overrides: dict[str, dict[str, str]]) -> None:
    """The service's config.toml: production defaults except the endpoints (and --set)."""
    sections: dict[str, dict[str, str]] = {
        "salesforce": {"login_url": orjson.dumps(sf["instance_url"]).decode(),
                       "auth": '"client_credentials"',
                       "client_id": orjson.dumps(sf["client_id"]).decode(),
                       "api_version": orjson.dumps(sf["api_version"]).decode()},
        "iterable": {"base_url": orjson.dumps(it["base_url"]).decode(),
                     "project_type": '"email"'},
        "queue": {"path": orjson.dumps(str(path.parent / "streamsync.db")).decode()},
        "health": {"enabled": "true", "host": '"127.0.0.1"', "port": str(health_port)},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------- HTTP helpers


async def get_json(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params or None) as resp:
        body = await resp.read()
        if resp.status >= 400:
            raise BenchError(f"GET {url} answered {resp.status}: {body[:300]!r}")
        return orjson.loads(body) if body else None


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, data=orjson.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
        if resp.status >= 400:
            raise BenchError(f"POST {url} answered {resp.status}: {raw[:300]!r}")
        return orjson.loads(raw) if raw else None


async def lead_emails(http: aiohttp.ClientSession, sf: dict[str, Any]) -> dict[str, str | None]:
    """Every Lead's Id → Email, read through Salesforce's REST query API (before the counters
    are reset, so these calls are not charged to the service)."""
    async with http.post(sf["token_url"], data={
            "grant_type": "client_credentials", "client_id": sf["client_id"],
            "client_secret": sf["client_secret"]}) as resp:
        if resp.status != 200:
            raise BenchError(f"Salesforce token request answered {resp.status}")
        token = orjson.loads(await resp.read())
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    base = token.get("instance_url") or sf["instance_url"]
    url: str | None = (f"{base}/services/data/v{sf['api_version']}/query?q="
                       "SELECT+Id,+Email+FROM+Lead")
    out: dict[str, str | None] = {}
    while url is not None:
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise BenchError(f"Salesforce query answered {resp.status}")
            page = orjson.loads(await resp.read())
        for record in page["records"]:
            out[to_18(record["Id"])] = record.get("Email")
        nxt = page.get("nextRecordsUrl")
        url = f"{base}{nxt}" if nxt and not page.get("done") else None
    return out


class EventLog:
    """Collects the Salesforce emulator's CDC event log (it keeps only the newest 10,000)."""

    def __init__(self, http: aiohttp.ClientSession, control_url: str) -> None:
        self.http = http
        self.url = f"{control_url}/events"
        self.events: dict[tuple[int, int], dict[str, Any]] = {}

    async def poll(self, limit: int) -> int:
        """Fetch the newest `limit` events; returns how many were new."""
        fresh = 0
        for event in await get_json(self.http, self.url, limit=str(limit)):
            header = event["ChangeEventHeader"]
            key = (int(header["commitNumber"]), int(header["sequenceNumber"]))
            if key not in self.events:
                self.events[key] = event
                fresh += 1
        return fresh

    def lead_changes(self, marker: str) -> list[tuple[str, str, float]]:
        """(18-char Lead id, FirstName value, commit time s) of every Lead UPDATE whose new
        FirstName starts with `marker`."""
        out: list[tuple[str, str, float]] = []
        for event in self.events.values():
            header = event["ChangeEventHeader"]
            name = event.get("Name")
            value = name.get("FirstName") if isinstance(name, dict) else event.get("FirstName")
            if (header["entityName"] != "Lead" or header["changeType"] != "UPDATE"
                    or not isinstance(value, str) or not value.startswith(marker)):
                continue
            commit_s = int(header["commitTimestamp"]) / 1000.0
            out.extend((to_18(i), value, commit_s) for i in header["recordIds"])
        return out


async def histories(http: aiohttp.ClientSession, control_url: str,
                    emails: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The Iterable emulator's write history of each email (bounded concurrency)."""
    out: dict[str, list[dict[str, Any]]] = {}
    queue = list(emails)
    url = f"{control_url}/history"

    async def worker() -> None:
        while queue:
            email = queue.pop()
            out[email] = await get_json(http, url, key=email)

    await asyncio.gather(*(worker() for _ in range(HISTORY_CONCURRENCY)))
    return out


def receipts(changes: Sequence[tuple[str, str, float]], emails: dict[str, str | None],
             history: dict[str, list[dict[str, Any]]]
             ) -> tuple[list[float], dict[int, float], int, int]:
    """(latency s of each change that arrived, receipt wall time of each Iterable request that
    carried one by request number, changes to Leads without email, changes never seen)."""
    latencies: list[float] = []
    received: dict[int, float] = {}
    no_email = missing = 0
    for sf_id, value, commit_s in changes:
        email = emails.get(sf_id)
        if not email:
            no_email += 1
            continue
        hit = next((entry for entry in history.get(email.lower(), [])
                    if entry.get("applied_wall") is not None
                    and (entry.get("dataFields") or {}).get("firstName") == value), None)
        if hit is None:
            missing += 1
            continue
        received[int(hit["request_no"])] = float(hit["received_wall"])
        latencies.append(float(hit["received_wall"]) - commit_s)
    return latencies, received, no_email, missing


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------- the benchmark


@dataclass
class Env:
    """The running processes and what the phases need from them."""

    http: aiohttp.ClientSession
    sf: Proc
    it: Proc
    service: Proc
    emails: dict[str, str | None]
    events: EventLog


async def iterable_counts(env: Env) -> dict[str, int]:
    counts = await get_json(env.http, f"{env.it.info['control_url']}/counts")
    bulk = counts.get(BULK_ENDPOINT, {})
    state = await get_json(env.http, f"{env.it.info['control_url']}/state")
    return {"bulk_200": int(bulk.get("200", 0)), "bulk_429": int(bulk.get("429", 0)),
            "bulk_total": sum(int(n) for n in bulk.values()),
            "users_received": int(state["users_received"])}


async def sf_api_used(env: Env) -> tuple[int, dict[str, int]]:
    counters = await get_json(env.http, f"{env.sf.info['control_url']}/counters")
    return int(counters["api"]["used"]), dict(counters["api"]["by_kind"])


async def wait_delivered(env: Env, base_users: int, expected: int, timeout_s: float,
                         quiet_s: float = 5.0) -> None:
    """Until Iterable has received `expected` more users than `base_users`, or nothing new
    arrived for `quiet_s` (then the per-change check reports what is missing)."""
    deadline = time.monotonic() + timeout_s
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        if env.service.process.returncode is not None:
            raise BenchError(f"the service exited ({env.service.process.returncode}):\n"
                             f"{env.service.tail()}")
        got = (await iterable_counts(env))["users_received"] - base_users
        if got >= expected:
            return
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            log(f"delivery went quiet at {got}/{expected} users")
            return
        await asyncio.sleep(0.2)
    log(f"gave up waiting for delivery after {timeout_s:.0f} s")


async def stream_phase(env: Env, rate: float, duration_s: float) -> dict[str, Any]:
    """`rate` single-record Lead changes per second for `duration_s`; latency per change."""
    count = int(rate * duration_s)
    control = env.sf.info["control_url"]
    before = await iterable_counts(env)
    api_before, kinds_before = await sf_api_used(env)
    marker = "Burst "
    log(f"stream: {count} Lead changes at {rate:g}/s")
    await env.events.poll(10_000)
    await post_json(env.http, f"{control}/burst", {
        "sobject": "Lead", "count": count, "rate_per_s": rate, "per_transaction": 1,
        "field": "FirstName"})
    poll_limit = max(1000, int(rate * 3))
    while True:
        await asyncio.sleep(1.0)
        await env.events.poll(poll_limit)
        status = await get_json(env.http, f"{control}/burst")
        if not status.get("running"):
            break
    await env.events.poll(poll_limit)
    changes = env.events.lead_changes(marker)
    expected = sum(1 for sf_id, _, _ in changes if env.emails.get(sf_id))
    await wait_delivered(env, before["users_received"], expected, timeout_s=120.0)
    after = await iterable_counts(env)
    api_after, kinds_after = await sf_api_used(env)
    log(f"stream: reading {expected} Iterable histories")
    history = await histories(env.http, env.it.info["control_url"],
                              sorted({e.lower() for i, _, _ in changes
                                      if (e := env.emails.get(i))}))
    latencies, _, no_email, missing = receipts(changes, env.emails, history)
    if not latencies:
        raise BenchError("no stream change reached Iterable")
    return {
        "stream_changes": count,
        "stream_changes_seen_in_event_log": len(changes),
        "stream_burst_status": status,
        "stream_changes_without_email": no_email,
        "stream_changes_measured": len(latencies),
        "stream_changes_missing": missing,
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p90_s": round(percentile(latencies, 0.90), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "latency_max_s": round(max(latencies), 3),
        "stream_iterable_requests": after["bulk_total"] - before["bulk_total"],
        "stream_iterable_429s": after["bulk_429"] - before["bulk_429"],
        "stream_sf_api_calls": api_after - api_before,
        "stream_sf_api_calls_by_kind": _diff(kinds_after, kinds_before),
    }


async def burst_phase(env: Env, size: int, tx_size: int, tx_interval_s: float,
                      ceiling: float) -> dict[str, Any]:
    """A mass update of `size` Leads with an email, `tx_size` records per transaction (0: one
    transaction) started `tx_interval_s` apart; its drain rate against Iterable's ceiling."""
    control = env.sf.info["control_url"]
    before = await iterable_counts(env)
    api_before, kinds_before = await sf_api_used(env)
    marker = f"Mass {uuid.uuid4().hex[:8]}"
    ids = sorted(i for i, email in env.emails.items() if email)[:size]
    step = tx_size or size
    log(f"burst: mass update of {size} Leads, {step} per transaction")
    started = time.time()
    published: list[float] = []
    for n, start in enumerate(range(0, size, step)):
        chunk = ids[start:start + step]
        due = started + n * tx_interval_s
        if due > time.time():
            await asyncio.sleep(due - time.time())
        reply = await post_json(env.http, f"{control}/mass-update", {
            "sobject": "Lead", "ids": chunk, "values": {"FirstName": marker}})
        published.append(time.time())
        if int(reply["updated"]) != len(chunk):
            raise BenchError(f"the mass update changed {reply['updated']} Leads, "
                             f"not {len(chunk)}")
    await env.events.poll(10_000)  # the whole log: a mass update is many merged events
    changes = env.events.lead_changes(marker)
    if len(changes) != size:
        raise BenchError(f"the event log shows {len(changes)} burst changes, not {size} (a "
                         "transaction past 100,000 field changes becomes GAP_OVERFLOW)")
    commit_s = min(c for _, _, c in changes)
    await wait_delivered(env, before["users_received"], size, timeout_s=max(120.0, size / 500))
    after = await iterable_counts(env)
    api_after, kinds_after = await sf_api_used(env)
    log(f"burst: reading {size} Iterable histories")
    history = await histories(env.http, env.it.info["control_url"],
                              sorted({e.lower() for i, _, _ in changes
                                      if (e := env.emails.get(i))}))
    latencies, received, no_email, missing = receipts(changes, env.emails, history)
    if not received:
        raise BenchError("no burst change reached Iterable")
    last = max(received.values())
    drain_s = last - published[0]
    users_per_s = len(latencies) / drain_s
    return {
        "burst_changes": size,
        "burst_changes_without_email": no_email,
        "burst_changes_missing": missing,
        "burst_transactions": len(published),
        "burst_publish_span_s": round(published[-1] - published[0], 3),
        "burst_first_commit_to_publish_s": round(published[0] - commit_s, 3),
        "burst_first_receipt_s": round(min(received.values()) - published[0], 3),
        "burst_publish_offsets_s": [round(t - published[0], 2) for t in published],
        "burst_request_offsets_s": [round(t - published[0], 2)
                                    for t in sorted(received.values())],
        "burst_drain_s": round(drain_s, 3),
        "burst_drain_from_commit_s": round(last - commit_s, 3),
        "burst_drain_from_last_publish_s": round(last - published[-1], 3),
        "burst_users_per_s": round(users_per_s, 1),
        "ceiling_users_per_s": ceiling,
        "burst_ratio_to_ceiling": round(users_per_s / ceiling, 3),
        "burst_latency_p50_s": round(statistics.median(latencies), 3),
        "burst_latency_max_s": round(max(latencies), 3),
        "burst_iterable_requests": after["bulk_total"] - before["bulk_total"],
        "burst_iterable_429s": after["bulk_429"] - before["bulk_429"],
        "burst_sf_api_calls": api_after - api_before,
        "burst_sf_api_calls_by_kind": _diff(kinds_after, kinds_before),
    }


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def wait_ready(http: aiohttp.ClientSession, service: Proc, url: str) -> float:
    """Poll /readyz until 200; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if service.process.returncode is not None:
            raise BenchError(f"the service exited ({service.process.returncode}) before it "
                             f"was ready:\n{service.tail()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise BenchError(f"the service was not ready within {START_TIMEOUT_S:.0f} s:\n"
                     f"{service.tail()}")


async def start_service(config: Path, sf: dict[str, Any], it: dict[str, Any],
                        workdir: Path) -> Proc:
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf["client_secret"],
           "STREAMSYNC_ITERABLE_API_KEY": it["api_key"]}
    log_path = workdir / "service.log"
    with log_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            PY, "-m", "streamsync", "run", "--config", str(config), cwd=ROOT, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
    return Proc("service", process, log_path)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_overrides(args.set)
    stream_count = int(args.rate * args.duration)
    leads = max(args.burst, stream_count)
    seed_leads = math.ceil(leads / EMAIL_SHARE * 1.03) + 200
    out: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "rate_per_s": args.rate,
        "duration_s": args.duration, "burst": args.burst, "seed_leads": seed_leads,
        "burst_tx_size": args.burst_tx_size, "burst_tx_interval_s": args.burst_tx_interval_s,
        "sf_latency_ms": args.sf_latency_ms, "iterable_latency_ms": args.iterable_latency_ms,
        "overrides": {f"{s}.{k}": v for s, kv in overrides.items() for k, v in kv.items()},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        workdir = Path(tmp)
        procs: list[Proc] = []
        sampler: RssSampler | None = None
        try:
            sf = await start_emulator("salesforce", "streamsync.emulators.salesforce", [
                "--port", "0", "--seed-leads", str(seed_leads),
                "--latency-ms", str(args.sf_latency_ms)], workdir)
            procs.append(sf)
            it = await start_emulator("iterable", "streamsync.emulators.iterable", [
                "--port", "0", "--latency-ms", str(args.iterable_latency_ms)], workdir)
            procs.append(it)
            limits = (await _get(f"{it.info['control_url']}/limits"))["limits"]
            out["iterable_bulk_limit"] = limits.get("bulkUpdate")
            batch = int(overrides.get("iterable", {}).get("batch_max_users", BATCH_USERS))
            ceiling = float(limits.get("bulkUpdate", {}).get("rate_per_s",
                                                             ITERABLE_RATE_PER_S)) * batch
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=HISTORY_CONCURRENCY + 4),
                    timeout=aiohttp.ClientTimeout(total=300)) as http:
                emails = await lead_emails(http, sf.info)
                with_email = sum(1 for e in emails.values() if e)
                if with_email < args.burst:
                    raise BenchError(f"only {with_email} seeded Leads have an email; the burst "
                                     f"needs {args.burst}")
                health_port = free_port()
                config = workdir / "config.toml"
                write_config(config, sf.info, it.info, health_port, overrides)
                service = await start_service(config, sf.info, it.info, workdir)
                procs.append(service)
                sampler = RssSampler(service.process.pid)
                sampler.start()
                health = f"http://127.0.0.1:{health_port}"
                out["service_ready_s"] = round(await wait_ready(http, service,
                                                                f"{health}/readyz"), 2)
                await post_json(http, f"{sf.info['control_url']}/counters/reset", {})
                env = Env(http, sf, it, service, emails,
                          EventLog(http, sf.info["control_url"]))
                changes = 0
                if stream_count:
                    out.update(await stream_phase(env, args.rate, args.duration))
                    changes += stream_count
                if args.burst:
                    out.update(await burst_phase(env, args.burst, args.burst_tx_size,
                                                 args.burst_tx_interval_s, ceiling))
                    changes += args.burst
                counts = await iterable_counts(env)
                api_used, kinds = await sf_api_used(env)
                out["iterable_429s"] = counts["bulk_429"]
                out["iterable_bulk_requests"] = counts["bulk_total"]
                out["sf_api_calls"] = api_used
                out["sf_api_calls_by_kind"] = kinds
                out["sf_api_calls_per_1000_changes"] = (round(api_used * 1000 / changes, 2)
                                                        if changes else None)
                cpu_s = sampler.cpu_s
            code = await stop_process(service)
            sampler.halt.set()
            sampler.join()
            out["service_exit_code"] = code
            out["peak_rss_mb"] = round(sampler.peak_rss / 1e6, 1)
            out["rss_samples"] = sampler.samples
            out["service_cpu_s"] = round(cpu_s, 1)
            warnings = _log_events(service.log_path, ("WARNING", "ERROR", "warning", "error"))
            out["service_log_warnings"] = warnings
        finally:
            if sampler is not None:
                sampler.halt.set()
            for proc in reversed(procs):
                await stop_process(proc)
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    return out


def _log_events(path: Path, levels: tuple[str, ...]) -> dict[str, int]:
    """Counts of warning/error log events of the service, by event name."""
    counts: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return counts
    for line in text.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and str(record.get("level", "")) in levels:
            name = str(record.get("event", "?"))
            counts[name] = counts.get(name, 0) + 1
    return counts


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as http:
        return await get_json(http, url)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a shortened run (10 s stream, 10,000-change burst), < 1 minute")
    parser.add_argument("--rate", type=float, default=200.0, help="stream changes per second")
    parser.add_argument("--duration", type=float, default=None,
                        help="stream seconds (default 60; 10 with --quick)")
    parser.add_argument("--burst", type=int, default=None,
                        help="mass-update size (default 50000; 10000 with --quick)")
    parser.add_argument("--burst-tx-size", type=int, default=10_000,
                        help="records per mass-update transaction (the Bulk API's batch cap; "
                             "0 = one transaction, which the emulator, like Salesforce, turns "
                             "into GAP_OVERFLOW past 100,000 field changes)")
    parser.add_argument("--burst-tx-interval-s", type=float, default=1.0,
                        help="seconds between the starts of the mass-update transactions (the "
                             "single-threaded emulator answers no query while it applies one)")
    parser.add_argument("--sf-latency-ms", type=float, default=150.0)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a service config value (repeatable)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 10.0 if args.quick else 60.0
    if args.burst is None:
        args.burst = 10_000 if args.quick else 50_000
    if min(args.rate, args.duration, args.burst, args.burst_tx_size,
           args.burst_tx_interval_s) < 0:
        parser.error("--rate, --duration and --burst must not be negative")
    return args


def print_result(run_bench: Any, args: argparse.Namespace,
                 errors: tuple[type[Exception], ...] = (BenchError,)) -> int:
    """Run `run_bench(args)` and print its result as the last line of stdout, one JSON object
    (`{"error": ...}` and exit 1 when it fails with one of `errors`): every bench's ending."""
    try:
        result = asyncio.run(run_bench(args))
    except errors as exc:
        log(f"failed: {exc}")
        print(orjson.dumps({"error": str(exc)}).decode())
        return 1
    print(orjson.dumps(result).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return print_result(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
