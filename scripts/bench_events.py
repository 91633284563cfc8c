"""Benchmark issue 14's real-time paths end to end: both emulators and the service as processes.

Phases (`--phases`, default all of them; each adds its keys to the one JSON line):

- `events`: one [[events]] rule (every change of a Lead's Title is a custom event on the Lead's
  profile, with two data fields); the Leads are backfilled first (trackBulk creates no users).
  Changes come from the Salesforce emulator's `POST /__emulator__/burst`, so each event travels
  CDC → ingest (the candidate stored with the replay id) → decide (SOQL read) → trackBulk,
  under Iterable's real trackBulk limits (10 requests/s, 1,000 events per request).
  1. latency: `--rate` (100) qualifying changes/s for `--duration` (30) s, one transaction
     each; `event_latency_p50_s`/`_p99_s` from the change's CDC `commitTimestamp` (the
     emulator's event log) to when the Iterable emulator stored its event (found by its
     deterministic id).
  2. burst: `--burst` (20,000) qualifying changes in transactions of `--burst-tx-size` (1,000)
     records (merged CDC events), committed by the emulator as fast as it can. Against the
     ceiling (trackBulk's rate x 1,000 events, 10,000 events/s), over the Leads with an email
     (those without are changes no profile can take an event for):
     - `event_burst_ratio`: the events over the time from the burst's first commit to the
       last event stored (issue 14 item 6 as written);
     - `event_burst_sustained_ratio`: the events after the first 1,000 over the time from the
       first event stored to the last (the rate while sending);
     - `event_burst_ratio_bound`: the best `event_burst_ratio` this run's commit -> first
       event latency (`event_burst_first_event_s`) leaves: were every call after the first
       full and at the ceiling's pace, the last event would arrive (calls - 1) / rate later;
     - `event_burst_commit_s` (first to last commit), `event_burst_s` (first commit to last
       event), `event_burst_changes`;
     - `event_burst_service_cpu_s`, `event_burst_salesforce_emulator_cpu_s`,
       `event_burst_iterable_emulator_cpu_s`: CPU each process used from just before the
       burst until Iterable's event counter reached it (on 2 cores, what bounds the burst).
  3. long burst, with `--long-burst N` (e.g. 100,000; none by default): N changes the same
     way after the burst (each Lead changed several times, in separate transactions), with the
     same keys under `event_long_burst_`: `event_long_burst_ratio` counted from the first
     commit, as `event_burst_ratio`. Its backlog raises the service's `peak_rss_mb`, so that
     key covers the long burst too when one runs.
  Events stored are found through Iterable's event counter (`/writes`), then read once.
  `duplicate_events`: events stored beyond one per qualifying change (a second id for a
  change, or an event no change qualifies for); `missing_events`; `resent_events` (resends of
  one id, which Iterable upserts).

- `lists`: CampaignMember inserts into Campaigns mapped by [lists], made the way a marketer
  imports members: one Bulk API 2.0 ingest job each (the emulator commits 200 records per
  transaction, one CDC CREATE event per member). Every insert travels CDC → ingest → queue →
  queryAll → lists/subscribe. The Iterable emulator enforces the assumed ceiling of
  lists/subscribe (docs/iterable.md §13: Iterable documents none; 5 requests/s, set through its
  control API, x 1,000 subscribers per call, its cap), so going faster shows as 429s.
  1. live: `--members` (20,000) inserts while the service runs; `list_live_seconds` from the
     upload to Iterable holding the last one, `list_live_ratio` that rate over the ceiling. The
     single-threaded emulator commits the inserts at roughly the ceiling's pace itself and
     answers the service's reads slowly meanwhile, so this is bounded by the emulator.
  2. backlog (the burst): the service is stopped, `--members` inserts into a second Campaign are
     committed, the service starts and drains them from its stored replay id.
     `list_burst_ratio` = subscribers Iterable received after the first one it received (the
     first call is the zero point) over the time from that first to the last, against the
     ceiling: whether the service keeps the endpoint at its ceiling while a burst drains.
     `list_first_subscribe_after_start_s` and `list_backlog_drained_after_start_s` time it from
     the process start. Iterable's subscribe counter is polled every 20 ms.

Salesforce emulator `--latency-ms 150` per API call, Iterable emulator `--latency-ms 100` (as
scripts/bench_stream.py). Peak RSS of the service process is sampled every 50 ms.

    .venv/bin/python scripts/bench_events.py [--phases events,lists] [--members 20000]
        [--rate 100] [--duration 30] [--burst 20000] [--long-burst 0]
        [--burst-tx-size 1000]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamsync.core.ids import to_18  # noqa: E402

PYTHON = sys.executable
LIST_RATE_PER_S = 5.0  # the assumed lists/subscribe ceiling (docs/iterable.md §13)
LIST_CALL_CAP = 1000  # subscribers per call: the emulator's max_list_subscribers
SUBSCRIBE = "POST /api/lists/subscribe"
LIVE, BACKLOG = "Bench live", "Bench backlog"  # the two Campaigns, each mapped to a list
CEILING = LIST_RATE_PER_S * LIST_CALL_CAP
POLL_S = 0.02
RULE = "lead-title"
EVENT_NAME = "leadTitleChanged"
EVENT_RULE = f"""
[[events]]
name = "{RULE}"
object = "Lead"
trigger = "update"
changed_fields = ["Title"]
event_name = "{EVENT_NAME}"
[events.mapping]
"Title" = "dataFields.title"
"Company" = "dataFields.company"
"""
TRACK_BULK_BATCH = 1000
TRACK_BULK = "POST /api/events/trackBulk"
EVENT_WAIT_S = 300.0


class BenchError(Exception):
    """The benchmark could not run or its result is not a measurement."""


def log(text: str) -> None:
    print(f"[bench_events {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A child process that printed one JSON line describing itself."""

    proc: asyncio.subprocess.Process
    info: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(argv: list[str], log_path: Path, env: dict[str, str], *,
                json_line: bool = True) -> Proc:
    with log_path.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE if json_line else asyncio.subprocess.DEVNULL,
            stderr=err, env=env, cwd=ROOT)
    if not json_line:
        return Proc(proc)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if not line:
        raise BenchError(f"{argv[2]} printed nothing (see {log_path})")
    return Proc(proc, orjson.loads(line))


class RssSampler:
    """Peak RSS of one process, sampled every 50 ms in a thread-free asyncio task."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        return round(self.peak / 2**20, 1)


@dataclass
class Env:
    """Both emulators, the service, an HTTP session and a Salesforce token for the bench."""

    http: aiohttp.ClientSession
    sf: Proc
    it: Proc
    health: str
    token: str
    service_argv: list[str]
    service_log: Path
    service_env: dict[str, str]
    service: Proc | None = None
    peak_rss_mb: float = 0.0
    _rss: RssSampler | None = None

    async def start_service(self) -> None:
        """Start `streamsync run` and wait until it is ready; its RSS is sampled."""
        self.service = await spawn(self.service_argv, self.service_log, self.service_env,
                                   json_line=False)
        self._rss = RssSampler(self.service.proc.pid)
        self._rss.start()
        await wait_ready(self)

    async def stop_service(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._rss is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, await self._rss.stop())
            self._rss = None

    @property
    def data(self) -> str:
        return f"{self.sf.info['instance_url']}/services/data/v{self.sf.info['api_version']}"


async def call(http: aiohttp.ClientSession, method: str, url: str, *, json: Any = None,
               data: bytes | None = None, headers: dict[str, str] | None = None,
               params: dict[str, str] | None = None) -> Any:
    async with http.request(method, url, json=json, data=data, headers=headers,
                            params=params) as resp:
        body = await resp.read()
        if resp.status >= 300:
            raise BenchError(f"{method} {url} answered {resp.status}: {body[:300]!r}")
        return orjson.loads(body) if body else None


def write_config(path: Path, sf: dict[str, Any], it: dict[str, Any], health_port: int) -> None:
    path.write_text(f"""
[salesforce]
login_url = "{sf['instance_url']}"
auth = "client_credentials"
client_id = "{sf['client_id']}"
api_version = "{sf['api_version']}"

[iterable]
base_url = "{it['base_url']}"
project_type = "email"

[queue]
path = "{path.parent / 'streamsync.db'}"

[health]
host = "127.0.0.1"
port = {health_port}

[logging]
level = "WARNING"
format = "json"

{EVENT_RULE}
[[lists.campaigns]]
campaign_name = "{LIVE}"
create_missing = true

[[lists.campaigns]]
campaign_name = "{BACKLOG}"
create_missing = true
""")


async def wait_ready(env: Env, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if env.service is None or env.service.proc.returncode is not None:
            raise BenchError("the service exited during start-up")
        with contextlib.suppress(aiohttp.ClientError):
            async with env.http.get(f"{env.health}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise BenchError("the service did not become ready")


async def subscribed_so_far(env: Env) -> int:
    writes = await call(env.http, "GET", f"{env.it.info['control_url']}/writes")
    return int(writes["changes"].get(SUBSCRIBE, 0))


async def query_ids(env: Env, soql: str) -> list[str]:
    """The Ids a SOQL query returns, every page."""
    auth = {"Authorization": f"Bearer {env.token}"}
    page = await call(env.http, "GET", f"{env.data}/query", headers=auth, params={"q": soql})
    ids = [r["Id"] for r in page["records"]]
    while not page.get("done", True):
        page = await call(env.http, "GET", f"{env.sf.info['instance_url']}"
                                           f"{page['nextRecordsUrl']}", headers=auth)
        ids.extend(r["Id"] for r in page["records"])
    return ids


async def bulk_insert(env: Env, campaign: str, leads: list[str]) -> tuple[float, str]:
    """One Bulk API 2.0 insert job of CampaignMembers; (when the upload completed, job id)."""
    auth = {"Authorization": f"Bearer {env.token}"}
    job = await call(env.http, "POST", f"{env.data}/jobs/ingest", headers=auth, json={
        "object": "CampaignMember", "operation": "insert", "contentType": "CSV",
        "lineEnding": "LF"})
    csv = "CampaignId,LeadId,Status\n" + "".join(f"{campaign},{lead},Sent\n" for lead in leads)
    await call(env.http, "PUT", f"{env.data}/jobs/ingest/{job['id']}/batches",
               data=csv.encode(), headers={**auth, "Content-Type": "text/csv"})
    await call(env.http, "PATCH", f"{env.data}/jobs/ingest/{job['id']}", headers=auth,
               json={"state": "UploadComplete"})
    return time.monotonic(), str(job["id"])


async def job_done(env: Env, job_id: str, started: float) -> float:
    """Seconds from the upload until Salesforce committed the job's last record."""
    auth = {"Authorization": f"Bearer {env.token}"}
    while True:
        info = await call(env.http, "GET", f"{env.data}/jobs/ingest/{job_id}", headers=auth)
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            if info["state"] != "JobComplete":
                raise BenchError(f"the ingest job ended {info['state']}")
            return time.monotonic() - started
        await asyncio.sleep(POLL_S)


async def wait_subscribed(env: Env, before: int, members: int, deadline: float
                          ) -> tuple[float, int, float]:
    """Poll Iterable's subscribe counter until `members` more arrived: (time of the first
    poll that saw any, how many it saw, time of the poll that saw them all)."""
    first: tuple[float, int] | None = None
    while (done := await subscribed_so_far(env) - before) < members:
        if first is None and done > 0:
            first = (time.monotonic(), done)
        if time.monotonic() > deadline or env.service is None \
                or env.service.proc.returncode is not None:
            raise BenchError(f"only {done} of {members} members reached the list")
        await asyncio.sleep(POLL_S)
    last = time.monotonic()
    return (first or (last, members))[0], (first or (last, members))[1], last


async def live_insert(env: Env, members: int, leads: list[str]) -> dict[str, Any]:
    """Members inserted while the service runs: end to end, from the upload."""
    campaign = (await query_ids(env, f"SELECT Id FROM Campaign WHERE Name = '{LIVE}'"))[0]
    before = await subscribed_so_far(env)
    log(f"lists live: inserting {members} CampaignMembers with one Bulk API 2.0 job")
    started, job_id = await bulk_insert(env, campaign, leads)
    committed = asyncio.create_task(job_done(env, job_id, started))
    _, _, last = await wait_subscribed(env, before, members, started + 300)
    elapsed = last - started
    log(f"lists live: {members} subscribed {elapsed:.2f} s after the upload")
    return {"list_live_seconds": round(elapsed, 3),
            "list_live_insert_commit_s": round(await committed, 3),
            "list_live_ratio": round(members / elapsed / CEILING, 3)}


async def backlog(env: Env, members: int, leads: list[str]) -> dict[str, Any]:
    """Members inserted while the service is stopped: on its start they are a backlog the
    service drains; the rate from the first subscriber Iterable received to the last."""
    campaign = (await query_ids(env, f"SELECT Id FROM Campaign WHERE Name = '{BACKLOG}'"))[0]
    before = await subscribed_so_far(env)
    await env.stop_service()
    log(f"lists backlog: service stopped; inserting {members} CampaignMembers")
    started, job_id = await bulk_insert(env, campaign, leads)
    await job_done(env, job_id, started)
    calls_before = await call(env.http, "GET", f"{env.it.info['control_url']}/counts")
    emulators = {name: psutil.Process(proc.proc.pid) for name, proc in (("sf", env.sf),
                                                                       ("it", env.it))}
    cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in emulators.items()}
    t_start = time.monotonic()
    await env.start_service()
    assert env.service is not None
    process = psutil.Process(env.service.proc.pid)
    t_first, seen_first, t_last = await wait_subscribed(env, before, members, t_start + 300)
    cpu = process.cpu_times()
    emulator_cpu = {name: round(sum(p.cpu_times()[:2]) - cpu_before[name], 2)
                    for name, p in emulators.items()}
    calls = await call(env.http, "GET", f"{env.it.info['control_url']}/counts")
    rate = (members - seen_first) / max(t_last - t_first, 1e-9)
    log(f"lists backlog: {members - seen_first} after the first call in "
        f"{t_last - t_first:.2f} s ({rate:.0f}/s, ceiling {CEILING:.0f})")
    return {
        "list_members": members,
        "list_subscribers_per_s": round(rate, 1),
        "list_ceiling_per_s": CEILING,
        "list_burst_ratio": round(rate / CEILING, 3),
        "list_first_subscribe_after_start_s": round(t_first - t_start, 3),
        "list_backlog_drained_after_start_s": round(t_last - t_start, 3),
        # CPU the service process used from its start to the last subscriber (its start-up,
        # describes and list look-ups included): what a loaded machine takes away from it.
        "list_service_cpu_s": round(cpu.user + cpu.system, 2),
        "list_salesforce_emulator_cpu_s": emulator_cpu["sf"],
        "list_iterable_emulator_cpu_s": emulator_cpu["it"],
        "list_subscribe_calls": _count(calls, SUBSCRIBE) - _count(calls_before, SUBSCRIBE),
        "list_subscribe_429s": (_count(calls, SUBSCRIBE, "429")
                                - _count(calls_before, SUBSCRIBE, "429")),
    }


async def lists_phase(env: Env, members: int) -> dict[str, Any]:
    """The `lists` phase: see the module docstring."""
    leads = await query_ids(env, "SELECT Id FROM Lead WHERE Email != null AND IsConverted = "
                                 f"false ORDER BY Id LIMIT {members}")
    if len(leads) < members:
        raise BenchError(f"only {len(leads)} Leads with an email for {members} members")
    return {**await live_insert(env, members, leads), **await backlog(env, members, leads)}


def _count(counts: dict[str, dict[str, int]], endpoint: str, status: str | None = None) -> int:
    """Calls of `endpoint` (of one status) in the Iterable emulator's /counts reply."""
    return sum(n for st, n in counts.get(endpoint, {}).items() if status in (None, st))


# ---------------------------------------------------------------- the events phase


async def lead_emails(env: Env) -> dict[str, str | None]:
    """Every Lead's 18-character Id → its Email."""
    auth = {"Authorization": f"Bearer {env.token}"}
    page = await call(env.http, "GET", f"{env.data}/query", headers=auth,
                      params={"q": "SELECT Id, Email FROM Lead"})
    rows = list(page["records"])
    while not page.get("done", True):
        page = await call(env.http, "GET", f"{env.sf.info['instance_url']}"
                                           f"{page['nextRecordsUrl']}", headers=auth)
        rows.extend(page["records"])
    return {to_18(r["Id"]): r.get("Email") for r in rows}


async def qualifying_changes(env: Env, emails: dict[str, str | None]) -> dict[str, float]:
    """Event id → commit time (s) of every change that set the Title of a Lead with an email
    (the rule's trigger; a Lead without one has no Iterable profile to land on)."""
    out: dict[str, float] = {}
    for body in await call(env.http, "GET", f"{env.sf.info['control_url']}/events",
                           params={"limit": "10000"}):
        header = body["ChangeEventHeader"]
        if header["entityName"] != "Lead" or header["changeType"] != "UPDATE" \
                or "Title" not in header["changedFields"]:
            continue
        for rid in header["recordIds"]:
            if emails.get(to_18(rid)):
                out[f"{RULE}-{to_18(rid)}-{header['transactionKey']}"] = \
                    int(header["commitTimestamp"]) / 1000.0
    return out


async def stored_events(env: Env) -> dict[str, dict[str, Any]]:
    """The Iterable emulator's custom events of the rule, by id."""
    records = await call(env.http, "GET", f"{env.it.info['control_url']}/custom-events")
    return {r["_id"]: r for r in records if r.get("eventName") == EVENT_NAME}


async def title_burst(env: Env, count: int, rate: float, per_tx: int) -> None:
    control = env.sf.info["control_url"]
    await call(env.http, "POST", f"{control}/burst", json={
        "sobject": "Lead", "count": count, "rate_per_s": rate, "per_transaction": per_tx,
        "field": "Title"})
    while (await call(env.http, "GET", f"{control}/burst"))["running"]:
        await asyncio.sleep(0.2)


async def tracked_so_far(env: Env) -> int:
    """Events Iterable's trackBulk stored (upserts included): a cheap counter to poll."""
    writes = await call(env.http, "GET", f"{env.it.info['control_url']}/writes")
    return int(writes["changes"].get(TRACK_BULK, 0))


async def wait_events(env: Env, wanted: set[str], tracked_before: int
                      ) -> dict[str, dict[str, Any]]:
    """The stored events once every wanted one is there. Iterable's event counter is polled
    until it could be, and only then the events themselves: reading every stored event while
    the burst runs took half of the Iterable emulator's CPU from the trackBulk calls measured."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        if await tracked_so_far(env) - tracked_before >= len(wanted):
            stored = await stored_events(env)
            if wanted <= set(stored):
                return stored
        if time.monotonic() > deadline:
            stored = await stored_events(env)
            raise BenchError(f"{len(wanted - set(stored))} of {len(wanted)} events never "
                             "reached Iterable")
        await asyncio.sleep(0.25)


async def event_latency(env: Env, emails: dict[str, str | None], rate: float,
                        duration: float) -> dict[str, Any]:
    before = set(await qualifying_changes(env, emails))
    tracked = await tracked_so_far(env)
    log(f"events latency: {rate:g} qualifying changes/s for {duration:g} s")
    await title_burst(env, int(rate * duration), rate, 1)
    changes = {k: v for k, v in (await qualifying_changes(env, emails)).items()
               if k not in before}
    stored = await wait_events(env, set(changes), tracked)
    latencies = sorted(stored[i]["receivedWall"] - changes[i] for i in changes)
    return {"event_latency_changes": len(changes),
            "event_latency_p50_s": round(statistics.median(latencies), 3),
            "event_latency_p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3)}


def cpu_seconds(env: Env) -> dict[str, float]:
    """CPU (user + system) each process has used so far."""
    assert env.service is not None
    procs = {"service": env.service, "salesforce_emulator": env.sf, "iterable_emulator": env.it}
    return {name: sum(psutil.Process(p.proc.pid).cpu_times()[:2]) for name, p in procs.items()}


async def event_burst(env: Env, emails: dict[str, str | None], count: int,
                      per_tx: int, prefix: str = "event_burst") -> dict[str, Any]:
    """One burst of `count` qualifying changes; its keys start with `prefix`."""
    limits = (await call(env.http, "GET", f"{env.it.info['control_url']}/limits"))["limits"]
    rate = float(limits["trackBulk"]["rate_per_s"])
    ceiling = rate * TRACK_BULK_BATCH
    before = set(await qualifying_changes(env, emails))
    tracked = await tracked_so_far(env)
    log(f"{prefix}: {count} qualifying changes in transactions of {per_tx}")
    cpu_before = cpu_seconds(env)
    await title_burst(env, count, 1e6, per_tx)
    changes = {k: v for k, v in (await qualifying_changes(env, emails)).items()
               if k not in before}
    deadline = time.monotonic() + EVENT_WAIT_S
    while await tracked_so_far(env) - tracked < len(changes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    cpu = {name: round(used - cpu_before[name], 2) for name, used in cpu_seconds(env).items()}
    stored = await wait_events(env, set(changes), tracked)
    first_commit, last_commit = min(changes.values()), max(changes.values())
    received = sorted(stored[i]["receivedWall"] for i in changes)
    n = len(received)
    span = max(received[-1] - first_commit, 1e-6)
    sustained = (n - TRACK_BULK_BATCH) / max(received[-1] - received[0], 1e-6)
    # Were every trackBulk call after the first one full and sent at the ceiling's pace, the
    # last event would arrive (calls - 1) / rate after the first: the best ratio this run's
    # commit -> first event latency leaves.
    bound = n / (received[0] - first_commit + (-(-n // TRACK_BULK_BATCH) - 1) / rate)
    log(f"{prefix}: {n} events {span:.2f} s after the first commit, the first after "
        f"{received[0] - first_commit:.2f} s (ceiling {ceiling:.0f}/s)")
    return {f"{prefix}_changes": n, "event_ceiling_per_s": ceiling,
            f"{prefix}_commit_s": round(last_commit - first_commit, 2),
            f"{prefix}_s": round(span, 2),
            f"{prefix}_first_event_s": round(received[0] - first_commit, 2),
            f"{prefix}_ratio": round(n / span / ceiling, 3),
            f"{prefix}_sustained_ratio": round(sustained / ceiling, 3),
            f"{prefix}_ratio_bound": round(bound / ceiling, 3),
            **{f"{prefix}_{name}_cpu_s": used for name, used in cpu.items()}}


async def backfill_leads(env: Env) -> None:
    """`streamsync backfill --objects Lead` (trackBulk creates no users: profiles first)."""
    await env.stop_service()
    proc = await asyncio.create_subprocess_exec(
        *env.service_argv[:3], "backfill", *env.service_argv[4:], "--objects", "Lead",
        cwd=ROOT, env=env.service_env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"backfill failed ({proc.returncode}): {err.decode()[-2000:]}")
    await env.start_service()


async def events_phase(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    """The `events` phase: see the module docstring."""
    log("events: backfilling the Leads")
    await backfill_leads(env)
    emails = await lead_emails(env)
    out: dict[str, Any] = {}
    if args.rate and args.duration:
        out.update(await event_latency(env, emails, args.rate, args.duration))
    if args.burst:
        out.update(await event_burst(env, emails, args.burst, args.burst_tx_size))
    if args.long_burst:
        out.update(await event_burst(env, emails, args.long_burst, args.burst_tx_size,
                                     "event_long_burst"))
    await asyncio.sleep(2.0)  # anything resent late shows up too
    qualifying = await qualifying_changes(env, emails)
    stored = await stored_events(env)
    out.update({"event_qualifying_changes": len(qualifying), "events_stored": len(stored),
                "duplicate_events": len(set(stored) - set(qualifying)),
                "missing_events": len(set(qualifying) - set(stored)),
                "resent_events": sum(int(r["writes"]) - 1 for r in stored.values())})
    return out


PHASES: dict[str, Callable[[Env, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "events": events_phase,
    "lists": lambda env, args: lists_phase(env, args.members),
}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        work = Path(tmp)
        base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSYNC_")}
        sf = await spawn([PYTHON, "-m", "streamsync.emulators.salesforce", "--port", "0",
                          "--latency-ms", "150", "--seed-accounts", "1", "--seed-contacts", "0",
                          "--seed-leads", str(max(args.members, args.burst,
                                                  int(args.rate * args.duration))
                                              * 11 // 10 + 100)],
                         work / "sf.log", base)
        it = await spawn([PYTHON, "-m", "streamsync.emulators.iterable", "--port", "0",
                          "--latency-ms", "100"], work / "it.log", base)
        env: Env | None = None
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=120)) as http:
                await call(http, "POST", f"{it.info['control_url']}/limits", json={
                    "group": "listSubscribe", "rate_per_s": LIST_RATE_PER_S})
                for name in (LIVE, BACKLOG):
                    await call(http, "POST", f"{sf.info['control_url']}/records/Campaign",
                               json={"Name": name, "IsActive": True})
                token = (await call(http, "POST", sf.info["token_url"], data=(
                    f"grant_type=client_credentials&client_id={sf.info['client_id']}"
                    f"&client_secret={sf.info['client_secret']}").encode(), headers={
                    "Content-Type": "application/x-www-form-urlencoded"}))["access_token"]
                port = free_port()
                write_config(work / "config.toml", sf.info, it.info, port)
                env = Env(http, sf, it, f"http://127.0.0.1:{port}", token,
                          [PYTHON, "-m", "streamsync", "run", "--config",
                           str(work / "config.toml")], work / "service.log",
                          {**base, "STREAMSYNC_SF_CLIENT_SECRET": str(sf.info["client_secret"]),
                           "STREAMSYNC_ITERABLE_API_KEY": str(it.info["api_key"])})
                await env.start_service()
                result: dict[str, Any] = {}
                for name in args.phases:
                    result.update(await PHASES[name](env, args))
                await env.stop_service()
                result["peak_rss_mb"] = env.peak_rss_mb
                return result
        finally:
            if env is not None:
                await env.stop_service()
            for proc in (it, sf):
                await proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=lambda s: [p for p in s.split(",") if p],
                        default=list(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--members", type=int, default=20_000,
                        help="CampaignMember inserts of the lists phase (default 20,000)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="qualifying changes/s of the events latency step (default 100)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of the events latency step (default 30)")
    parser.add_argument("--burst", type=int, default=20_000,
                        help="qualifying changes of the events burst (default 20,000)")
    parser.add_argument("--long-burst", type=int, default=0,
                        help="qualifying changes of a second, long burst, e.g. 100,000 "
                             "(default 0: none); the Leads are changed several times each")
    parser.add_argument("--burst-tx-size", type=int, default=1000,
                        help="records per events burst transaction (one merged CDC event)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown or args.members < 1:
        parser.error(f"unknown phase {unknown[0]}" if unknown else "--members must be >= 1")
    try:
        result = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_events: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps({"phases": args.phases, **result}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
