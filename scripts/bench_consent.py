"""Benchmark consent sync end to end: both emulators and the service as separate processes.

Salesforce emulator (`--sf-latency-ms 150` per API call), Iterable emulator (`--latency-ms 100`,
its real limits, and the subscription endpoints limited to the service's own
`consent.rate_limit_per_s`, 5 requests/s, since Iterable documents none), `python -m streamsync
run` with its default tunables and consent on Lead (an opt-out unsubscribes from the Marketing
Email channel, 39581). The Leads are backfilled into Iterable first; the phases start once the
service is ready and its start-up reconciliation is done (`start_reconcile_s`). Phases
(`--phases`, in order; each adds its keys to the result):

- `sf_stream`: `--rate` (50) Leads per second opt out in Salesforce for `--duration` s, each its
  own transaction through the emulator's control API. Latency per opt-out: its CDC
  `commitTimestamp` (from the emulator's event log) to the moment the bench received Iterable's
  `emailUnSubscribe` system webhook for that email and channel (the emulator POSTs one per event
  to the bench's receiver, so the figure includes that delivery: an upper bound).
  Keys `sf_to_iterable_p50_s`, `sf_to_iterable_p99_s`.
- `sf_burst`: `--burst` (10,000) Leads opt out in one mass update (one transaction, merged CDC
  events). Rate: the burst's users over the time from the update's publication to the moment
  Iterable's subscription endpoint had changed all of them (the emulator's per-endpoint change
  count, polled every 50 ms), against the endpoint's ceiling (`consent.rate_limit_per_s` x
  `consent.batch_max_users` = 5,000 users/s for one channel). Key `burst_ratio_to_ceiling`;
  `sf_burst_steady_ratio_to_ceiling` counts from the first change Iterable made instead (the
  drain once the pipeline is full: 10,000 users are only two seconds at the ceiling, so the
  first CDC delivery and Salesforce read weigh on the end-to-end figure). Webhooks are off
  during the burst (10,000 deliveries would load the emulator the calls are timed on).
  What bounds it: the 10 calls at 5/s start 1.8 s apart and the last one answers 0.1 s later,
  so the ratio is 2 s / (the commit to the first call's start + 1.9 s); 0.9 needs the first
  call within 0.32 s. Before it come the CDC delivery and queue commit (~0.1 s at idle), then on
  the consent fast path (docs/design.md §7: no Salesforce read, the opt-out is in the event) the
  store reads of the first 1,000 records and a send slot; the pipeline's path would add the
  Salesforce read (0.15 s emulated) and the mapping of its batch.
- `sf_burst_long` (optional, not in the default phases): the same with `--long-burst` (50,000)
  Leads, so the start weighs less against the drain: keys `long_burst_ratio_to_ceiling` (from
  the publication, as above) and `long_burst_steady_ratio_to_ceiling`, with the same `sf_burst_*`
  details under `long_burst_*`.

- `it_webhook`: `--it-rate` (20) Leads per second unsubscribe in Iterable for `--it-duration`
  s (a click through the emulator's control API, as a person would); the emulator's system
  webhook reaches the service's receiver (through the bench's receiver, which notes it and
  forwards it: one loopback hop more). Latency per unsubscribe: the moment the bench sent the
  click to the commit time of the service's Salesforce write of that Lead (its CDC event, whose
  `changeOrigin` names streamsync). Keys `iterable_to_sf_webhook_p50_s`,
  `iterable_to_sf_webhook_p99_s`.
- `it_poll`: the same with webhook deliveries switched off, so only the service's export
  poller (`consent_inbound.poll.interval_s`, 30 s: the least the export's 4 requests/minute
  allow) finds them; `--it-poll-count` (60) clicks spread over two intervals
  (`--it-poll-spread-s`). Keys
  `iterable_to_sf_poll_p99_s`, `poll_interval_s` (target: p99 within the interval + 3 s).
- `consistency` (last): every Lead a phase used has the same state on both sides (Salesforce
  opted out, Iterable unsubscribed from the channel): `mismatches`; and no write went back the
  other way: `loops` = the service's Salesforce writes of Leads opted out in Salesforce, plus
  its Salesforce writes beyond one per Lead unsubscribed in Iterable, plus the subscription
  changes it made in Iterable while only Iterable-side unsubscribes ran.

A phase is an `async def phase(env) -> dict` registered in `PHASES`.

    .venv/bin/python scripts/bench_consent.py [--quick] [--rate 50] [--duration 20]
        [--burst 10000] [--long-burst 50000] [--phases sf_stream,sf_burst,sf_burst_long]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_stream as bs  # noqa: E402

from streamsync.core.ids import to_18  # noqa: E402

CHANNEL = 39581  # the Iterable emulator's seeded Marketing Email channel
RATE_PER_S = 5.0  # consent.rate_limit_per_s (default)
BATCH_USERS = 1000  # consent.batch_max_users (default)
PUT_ENDPOINT = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
OPT_OUT = "HasOptedOutOfEmail"
START_TIMEOUT_S = 120.0
PATCH_CONCURRENCY = 32
CLIENT = "streamsync"  # salesforce.client_name (default): our writes' changeOrigin
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
POLL_INTERVAL_S = 30.0  # consent_inbound.poll.interval_s: the least 4 exports/minute allow


def log(text: str) -> None:
    sys.stderr.write(f"[bench_consent {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class BenchError(RuntimeError):
    """The benchmark could not run or measure what it set out to."""


# ---------------------------------------------------------------- the webhook receiver


@dataclass
class Webhooks:
    """A receiver for Iterable's system webhooks on 127.0.0.1: every body with its arrival
    time (time.time()), in arrival order."""

    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    forward_url: str | None = None  # the service's receiver (Iterable → Salesforce phases)
    forward_headers: dict[str, str] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        at = time.time()
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        if isinstance(body, dict):
            self.received.append((at, body))
        if self.forward_url is None:
            return web.Response(status=200)
        if self.session is None:
            self.session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", **self.forward_headers,
                   **({"Authorization": request.headers["Authorization"]}
                      if "Authorization" in request.headers else {})}
        try:
            async with self.session.post(self.forward_url, data=raw, headers=headers) as resp:
                await resp.read()
                return web.Response(status=resp.status)
        except aiohttp.ClientError:
            return web.Response(status=502)

    def unsubscribed(self, channel: int, since: float = 0.0) -> dict[str, float]:
        """Email → first arrival of an `emailUnSubscribe` naming `channel`, after `since`."""
        out: dict[str, float] = {}
        for at, body in self.received:
            data = body.get("dataFields") or {}
            if (at >= since and body.get("eventName") == "emailUnSubscribe"
                    and channel in (data.get("channelIds") or [])
                    and isinstance(body.get("email"), str)):
                out.setdefault(body["email"].lower(), at)
        return out


# ---------------------------------------------------------------- the environment


@dataclass
class Env:
    """The running processes, the Leads (id → email, opted-in ones only) and the receiver."""

    http: aiohttp.ClientSession
    sf: bs.Proc
    it: bs.Proc
    service: bs.Proc
    leads: dict[str, str]
    webhooks: Webhooks
    args: argparse.Namespace
    used: set[str] = field(default_factory=set)
    inbound_ids: set[str] = field(default_factory=set)  # unsubscribed in Iterable
    puts_during_inbound: int = 0

    def take(self, n: int) -> list[str]:
        """`n` opted-in Leads no phase has used yet (in Id order)."""
        free = [i for i in sorted(self.leads) if i not in self.used][:n]
        if len(free) < n:
            raise BenchError(f"only {len(free)} unused opted-in Leads left; {n} needed")
        self.used.update(free)
        return free


async def opted_in_leads(http: aiohttp.ClientSession, sf: dict[str, Any]) -> dict[str, str]:
    """Every Lead with an email that is not opted out: Id → email (through the REST API)."""
    async with http.post(sf["token_url"], data={
            "grant_type": "client_credentials", "client_id": sf["client_id"],
            "client_secret": sf["client_secret"]}) as resp:
        token = orjson.loads(await resp.read())
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    base = token.get("instance_url") or sf["instance_url"]
    url: str | None = (f"{base}/services/data/v{sf['api_version']}/query?q=SELECT+Id,+Email+"
                       f"FROM+Lead+WHERE+{OPT_OUT}+=+false+AND+Email+!=+null+AND+"
                       "IsConverted+=+false")
    out: dict[str, str] = {}
    while url is not None:
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise BenchError(f"Salesforce query answered {resp.status}")
            page = orjson.loads(await resp.read())
        out.update({to_18(r["Id"]): str(r["Email"]).lower() for r in page["records"]})
        nxt = page.get("nextRecordsUrl")
        url = f"{base}{nxt}" if nxt and not page.get("done") else None
    return out


async def opt_out_commits(env: Env, ids: set[str], limit: int) -> dict[str, float]:
    """Lead id → commit time (s) of the CDC event that set its opt-out, from the event log."""
    out: dict[str, float] = {}
    for event in await bs.get_json(env.http, f"{env.sf.info['control_url']}/events",
                                   limit=str(limit)):
        header = event["ChangeEventHeader"]
        if header["entityName"] != "Lead" or OPT_OUT not in (header.get("changedFields") or []):
            continue
        for raw in header["recordIds"]:
            sf_id = to_18(raw)
            if sf_id in ids:
                out.setdefault(sf_id, int(header["commitTimestamp"]) / 1000.0)
    return out


async def put_counts(env: Env) -> tuple[int, int, int]:
    """(users changed, 2xx calls, 429 calls) of the subscription PUT, from the emulator."""
    writes = await bs.get_json(env.http, f"{env.it.info['control_url']}/writes")
    counts = (await bs.get_json(env.http, f"{env.it.info['control_url']}/counts")
              ).get(PUT_ENDPOINT, {})
    return (int(writes["changes"].get(PUT_ENDPOINT, 0)), int(writes["calls"].get(PUT_ENDPOINT, 0)),
            int(counts.get("429", 0)))


# ---------------------------------------------------------------- phases


async def sf_stream(env: Env) -> dict[str, Any]:
    """Opt-outs at `--rate` per second; commit → Iterable unsubscribe latency per change."""
    rate, duration = env.args.rate, env.args.duration
    ids = env.take(int(rate * duration))
    url = f"{env.sf.info['control_url']}/records/Lead"
    log(f"sf_stream: {len(ids)} opt-outs at {rate:g}/s")
    gate = asyncio.Semaphore(PATCH_CONCURRENCY)
    started = time.time()

    async def opt_out(n: int, sf_id: str) -> None:
        delay = started + n / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate, env.http.patch(f"{url}/{sf_id}", json={OPT_OUT: True}) as resp:
            if resp.status >= 400:
                raise BenchError(f"opt-out of {sf_id} answered {resp.status}")

    await asyncio.gather(*(opt_out(n, i) for n, i in enumerate(ids)))
    emails = {env.leads[i] for i in ids}
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if emails <= set(env.webhooks.unsubscribed(CHANNEL, started)):
            break
        await asyncio.sleep(0.2)
    commits = await opt_out_commits(env, set(ids), 10_000)
    arrived = env.webhooks.unsubscribed(CHANNEL, started)
    latencies = [arrived[env.leads[i]] - commits[i] for i in ids
                 if i in commits and env.leads[i] in arrived]
    if not latencies:
        raise BenchError("no stream opt-out reached Iterable")
    return {
        "sf_stream_opt_outs": len(ids),
        "sf_stream_measured": len(latencies),
        "sf_stream_missing": len(ids) - len(latencies),
        "sf_stream_send_s": round(time.time() - started, 2),
        "sf_to_iterable_p50_s": round(statistics.median(latencies), 3),
        "sf_to_iterable_p90_s": round(bs.percentile(latencies, 0.90), 3),
        "sf_to_iterable_p99_s": round(bs.percentile(latencies, 0.99), 3),
        "sf_to_iterable_max_s": round(max(latencies), 3),
    }


async def sf_burst(env: Env) -> dict[str, Any]:
    """One mass update opts `--burst` Leads out; users per second against the ceiling."""
    return await _burst(env, env.args.burst)


async def sf_burst_long(env: Env) -> dict[str, Any]:
    """The same with `--long-burst` Leads; its keys are named `long_burst_*`."""
    out = await _burst(env, env.args.long_burst)
    return {("long_burst_" + k.removeprefix("sf_burst_").removeprefix("burst_")
             if k.startswith(("sf_burst_", "burst_")) else k): v for k, v in out.items()}


async def _burst(env: Env, size: int) -> dict[str, Any]:
    ids = env.take(size)
    ceiling = RATE_PER_S * BATCH_USERS
    # Webhooks off meanwhile: 10,000 deliveries would load the emulator the calls are timed on.
    hook = f"{env.it.info['control_url']}/webhook"
    await bs.post_json(env.http, hook, {"enabled": False})
    base, calls0, limited0 = await put_counts(env)
    log(f"sf_burst: mass opt-out of {len(ids)} Leads")
    reply = await bs.post_json(env.http, f"{env.sf.info['control_url']}/mass-update",
                               {"sobject": "Lead", "ids": ids, "values": {OPT_OUT: True}})
    published = time.time()
    log(f"sf_burst: published at {published:.3f}")
    if int(reply["updated"]) != len(ids):
        raise BenchError(f"the mass update changed {reply['updated']} Leads, not {len(ids)}")
    done_at: float | None = None
    first_at: float | None = None
    changed = first_changed = 0
    deadline = time.monotonic() + max(120.0, len(ids) / 200)
    while time.monotonic() < deadline:
        changed = (await put_counts(env))[0] - base
        if changed and first_at is None:
            first_at, first_changed = time.time(), changed
        if changed >= len(ids):
            done_at = time.time()
            break
        await asyncio.sleep(0.05)
    if done_at is None or first_at is None:
        raise BenchError(f"only {changed} of {len(ids)} burst users were unsubscribed")
    _, calls, limited = await put_counts(env)
    await bs.post_json(env.http, hook, {"enabled": True})
    drain_s = done_at - published
    users_per_s = len(ids) / drain_s
    steady = (len(ids) - first_changed) / max(done_at - first_at, 1e-3)
    return {
        "sf_burst_opt_outs": len(ids),
        "sf_burst_drain_s": round(drain_s, 3),
        "sf_burst_first_change_s": round(first_at - published, 3),
        "sf_burst_users_per_s": round(users_per_s, 1),
        "ceiling_users_per_s": ceiling,
        "burst_ratio_to_ceiling": round(users_per_s / ceiling, 3),
        "sf_burst_steady_ratio_to_ceiling": round(steady / ceiling, 3),
        "sf_burst_subscription_calls": calls - calls0,
        "sf_burst_subscription_429s": limited - limited0,
    }


# ---------------------------------------------------------------- Iterable → Salesforce


async def our_opt_out_writes(env: Env) -> dict[str, list[float]]:
    """Lead id → commit times (s) of the service's own writes of its opt-out field (CDC
    events whose changeOrigin names streamsync's client)."""
    out: dict[str, list[float]] = {}
    for event in await bs.get_json(env.http, f"{env.sf.info['control_url']}/events",
                                   limit="100000"):
        header = event["ChangeEventHeader"]
        if (header["entityName"] != "Lead" or OPT_OUT not in (header.get("changedFields") or [])
                or not str(header.get("changeOrigin", "")).endswith(f"client={CLIENT}")):
            continue
        for raw in header["recordIds"]:
            out.setdefault(to_18(raw), []).append(int(header["commitTimestamp"]) / 1000.0)
    return out


async def click_unsubscribes(env: Env, ids: list[str], rate: float) -> dict[str, float]:
    """Each Lead's person clicks "unsubscribe" (the channel) in Iterable, `rate` per second;
    Lead id → the moment its click was sent."""
    url = f"{env.it.info['control_url']}/click"
    gate = asyncio.Semaphore(PATCH_CONCURRENCY)
    sent: dict[str, float] = {}
    started = time.time()

    async def click(n: int, sf_id: str) -> None:
        delay = started + n / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            sent[sf_id] = time.time()
            await bs.post_json(env.http, url, {"email": env.leads[sf_id], "channelId": CHANNEL})

    await asyncio.gather(*(click(n, i) for n, i in enumerate(ids)))
    return sent


async def wait_written(env: Env, ids: list[str], timeout_s: float) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout_s
    while True:
        writes = await our_opt_out_writes(env)
        if all(i in writes for i in ids) or time.monotonic() > deadline:
            return writes
        await asyncio.sleep(0.25)


def _latencies(env: Env, sent: dict[str, float], writes: dict[str, list[float]]
               ) -> list[float]:
    return [min(writes[i]) - at for i, at in sent.items() if i in writes]


async def it_webhook(env: Env) -> dict[str, Any]:
    """Unsubscribes in Iterable at `--it-rate`; click → Salesforce write, by webhook."""
    rate, duration = env.args.it_rate, env.args.it_duration
    ids = env.take(int(rate * duration))
    env.inbound_ids.update(ids)
    puts_before = (await put_counts(env))[0]
    log(f"it_webhook: {len(ids)} Iterable unsubscribes at {rate:g}/s")
    sent = await click_unsubscribes(env, ids, rate)
    writes = await wait_written(env, ids, 60.0)
    latencies = _latencies(env, sent, writes)
    if not latencies:
        raise BenchError("no Iterable unsubscribe reached Salesforce")
    env.puts_during_inbound += (await put_counts(env))[0] - puts_before
    return {
        "it_webhook_unsubscribes": len(ids),
        "it_webhook_measured": len(latencies),
        "iterable_to_sf_webhook_p50_s": round(statistics.median(latencies), 3),
        "iterable_to_sf_webhook_p90_s": round(bs.percentile(latencies, 0.90), 3),
        "iterable_to_sf_webhook_p99_s": round(bs.percentile(latencies, 0.99), 3),
        "iterable_to_sf_webhook_max_s": round(max(latencies), 3),
    }


async def it_poll(env: Env) -> dict[str, Any]:
    """Unsubscribes in Iterable with the webhook off: the export poller alone carries them."""
    interval = POLL_INTERVAL_S
    ids = env.take(env.args.it_poll_count)
    env.inbound_ids.update(ids)
    control = env.it.info["control_url"]
    await bs.post_json(env.http, f"{control}/webhook", {"enabled": False})
    puts_before = (await put_counts(env))[0]
    spread = env.args.it_poll_spread_s
    log(f"it_poll: {len(ids)} Iterable unsubscribes over {spread:g} s, webhook off")
    try:
        sent = await click_unsubscribes(env, ids, len(ids) / spread)
        writes = await wait_written(env, ids, 3 * interval + 10)
    finally:
        await bs.post_json(env.http, f"{control}/webhook", {"enabled": True})
    latencies = _latencies(env, sent, writes)
    if not latencies:
        raise BenchError("no polled Iterable unsubscribe reached Salesforce")
    env.puts_during_inbound += (await put_counts(env))[0] - puts_before
    return {
        "it_poll_unsubscribes": len(ids),
        "it_poll_measured": len(latencies),
        "iterable_to_sf_poll_p50_s": round(statistics.median(latencies), 3),
        "iterable_to_sf_poll_p99_s": round(bs.percentile(latencies, 0.99), 3),
        "iterable_to_sf_poll_max_s": round(max(latencies), 3),
        "poll_interval_s": interval,
    }


async def consistency(env: Env) -> dict[str, Any]:
    """Both sides agree on every Lead a phase used, and nothing went back the other way."""
    await asyncio.sleep(3.0)  # the echoes of the last writes, through CDC and webhooks
    subs = await bs.get_json(env.http, f"{env.it.info['control_url']}/subscriptions")
    unsubscribed = {str(v.get("email", "")).lower() for v in subs.values()
                    if CHANNEL in (v.get("unsubscribedChannelIds") or [])}
    opted_out = await opted_out_ids(env, sorted(env.used))
    mismatches = sum(1 for i in env.used
                     if (i in opted_out) != (env.leads[i] in unsubscribed)
                     or i not in opted_out)
    writes = await our_opt_out_writes(env)
    outbound = env.used - env.inbound_ids
    loops = (sum(len(writes.get(i, [])) for i in outbound)
             + sum(max(0, len(writes.get(i, [])) - 1) for i in env.inbound_ids)
             + env.puts_during_inbound)
    return {"leads_checked": len(env.used), "mismatches": mismatches, "loops": loops}


async def opted_out_ids(env: Env, ids: list[str]) -> set[str]:
    """The Leads among `ids` opted out in Salesforce now (the emulator's records)."""
    out: set[str] = set()
    gate = asyncio.Semaphore(PATCH_CONCURRENCY)

    async def one(sf_id: str) -> None:
        async with gate:
            record = await bs.get_json(
                env.http, f"{env.sf.info['control_url']}/records/Lead/{sf_id}")
        if isinstance(record, dict) and record.get(OPT_OUT) is True:
            out.add(sf_id)

    await asyncio.gather(*(one(i) for i in ids))
    return out


Phase = Callable[[Env], Awaitable[dict[str, Any]]]
PHASES: dict[str, Phase] = {"sf_stream": sf_stream, "sf_burst": sf_burst,
                            "it_webhook": it_webhook, "it_poll": it_poll,
                            "consistency": consistency}
OPTIONAL_PHASES: dict[str, Phase] = {"sf_burst_long": sf_burst_long}


# ---------------------------------------------------------------- the run


def _overrides(level: str, webhook_port: int) -> dict[str, dict[str, str]]:
    return {
        "logging": {"level": f'"{level}"'},
        "objects.Lead.consent": {"unsubscribe_channel_ids": f"[{CHANNEL}]"},
        "consent": {"rate_limit_per_s": str(RATE_PER_S), "batch_max_users": str(BATCH_USERS)},
        "consent_inbound.webhook": {"port": str(webhook_port)},
        "consent_inbound.poll": {"interval_s": str(POLL_INTERVAL_S)},
    }


START_RECONCILED = b'"event":"reconcile.done","object":"Lead","trigger":"first_subscription"'


async def start_reconciled(service: bs.Proc, timeout_s: float = 60.0) -> float | None:
    """Wait until the service's start-up reconciliation is done (its log says so); the seconds
    waited after readiness, None if it did not say so in time. On its first subscription after
    the backfill the service re-reads the Leads changed since the backfill began
    (docs/design.md §1.4); a phase started meanwhile has its changes read by that too, and the
    consent fast path leaves an object with a reconciliation owed to the pipeline
    (docs/design.md §7): the phases measure the running service, not its start."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(OSError):
            if START_RECONCILED in service.log_path.read_bytes():
                return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.05)
    log("the service's start-up reconciliation was not seen done; measuring anyway")
    return None


async def backfill(config: Path, sf: dict[str, Any], it: dict[str, Any], workdir: Path) -> None:
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf["client_secret"],
           "STREAMSYNC_ITERABLE_API_KEY": it["api_key"]}
    with (workdir / "backfill.log").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            bs.PY, "-m", "streamsync.backfill", "--config", str(config), "--objects", "Lead",
            cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
        code = await asyncio.wait_for(proc.wait(), 600)
    if code != 0:
        raise BenchError(f"the backfill failed ({code}); see {workdir / 'backfill.log'}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    known = {**PHASES, **OPTIONAL_PHASES}
    unknown = [p for p in phases if p not in known]
    if unknown:
        raise BenchError(f"unknown phases {unknown}; known: {sorted(known)}")
    needed = (int(args.rate * args.duration) + args.burst
              + (args.long_burst if "sf_burst_long" in phases else 0)
              + int(args.it_rate * args.it_duration) + args.it_poll_count)
    seed_leads = math.ceil(needed / 0.97 / 0.94) + 300
    out: dict[str, Any] = {"mode": "quick" if args.quick else "full", "phases": phases,
                           "rate_per_s": args.rate, "duration_s": args.duration,
                           "burst": args.burst, "seed_leads": seed_leads,
                           "sf_latency_ms": args.sf_latency_ms,
                           "iterable_latency_ms": args.iterable_latency_ms}
    started = time.monotonic()
    webhooks = Webhooks()
    await webhooks.start()
    with tempfile.TemporaryDirectory(prefix="bench_consent_") as tmp:
        workdir = Path(args.workdir or tmp)
        procs: list[bs.Proc] = []
        try:
            sf = await bs.start_emulator("salesforce", "streamsync.emulators.salesforce", [
                "--port", "0", "--seed-leads", str(seed_leads), "--seed-contacts", "10",
                "--seed-accounts", "5", "--latency-ms", str(args.sf_latency_ms)], workdir)
            procs.append(sf)
            it = await bs.start_emulator("iterable", "streamsync.emulators.iterable", [
                "--port", "0", "--latency-ms", str(args.iterable_latency_ms),
                "--webhook-url", webhooks.url], workdir)
            procs.append(it)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                await bs.post_json(http, f"{it.info['control_url']}/limits",
                                   {"group": "subscriptions", "rate_per_s": RATE_PER_S})
                leads = await opted_in_leads(http, sf.info)
                config = workdir / "config.toml"
                health_port, webhook_port = bs.free_port(), bs.free_port()
                bs.write_config(config, sf.info, it.info, health_port,
                                _overrides(args.log_level, webhook_port))
                # Iterable's system webhook with Basic auth; the bench's receiver notes each
                # event and forwards it to the service's receiver.
                os.environ["STREAMSYNC_ITERABLE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
                await bs.post_json(http, f"{it.info['control_url']}/webhook", {
                    "auth_type": "Basic", "auth_token": WEBHOOK_SECRET, "backoff_s": 0.5})
                webhooks.forward_url = f"http://127.0.0.1:{webhook_port}/iterable/webhook"
                log(f"backfilling {len(leads)} opted-in Leads (of {seed_leads})")
                await backfill(config, sf.info, it.info, workdir)
                service = await bs.start_service(config, sf.info, it.info, workdir)
                procs.append(service)
                out["service_ready_s"] = round(await bs.wait_ready(
                    http, service, f"http://127.0.0.1:{health_port}/readyz"), 2)
                out["start_reconcile_s"] = await start_reconciled(service)
                env = Env(http, sf, it, service, leads, webhooks, args)
                for name in phases:
                    out.update(await known[name](env))
            out["service_exit_code"] = await bs.stop_process(service)
            out["service_log_warnings"] = bs._log_events(
                service.log_path, ("WARNING", "ERROR", "warning", "error"))
        finally:
            for proc in reversed(procs):
                await bs.stop_process(proc)
            await webhooks.stop()
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10 s stream instead of 20 s")
    parser.add_argument("--rate", type=float, default=50.0, help="opt-outs per second")
    parser.add_argument("--duration", type=float, default=None,
                        help="stream seconds (default 20; 10 with --quick)")
    parser.add_argument("--burst", type=int, default=10_000, help="mass opt-out size")
    parser.add_argument("--long-burst", type=int, default=50_000,
                        help="mass opt-out size of the optional sf_burst_long phase")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, in order (default: {','.join(PHASES)}; "
                        "optional: sf_burst_long)")
    parser.add_argument("--workdir", default=None,
                        help="keep the logs and the store here (default: a temporary directory)")
    parser.add_argument("--it-rate", type=float, default=20.0,
                        help="Iterable unsubscribes per second (it_webhook)")
    parser.add_argument("--it-duration", type=float, default=10.0,
                        help="seconds of Iterable unsubscribes (it_webhook)")
    parser.add_argument("--it-poll-count", type=int, default=60,
                        help="Iterable unsubscribes found by the poller alone (it_poll)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO"),
                        help="the service's log level (its log is in --workdir)")
    parser.add_argument("--it-poll-spread-s", type=float, default=2 * POLL_INTERVAL_S,
                        help="seconds the polled unsubscribes are spread over (it_poll)")
    parser.add_argument("--sf-latency-ms", type=float, default=150.0)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 10.0 if args.quick else 20.0
    if min(args.rate, args.duration, args.burst, args.long_burst) <= 0:
        parser.error("--rate, --duration, --burst and --long-burst must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(run(args))
    except (BenchError, bs.BenchError) as exc:
        log(f"failed: {exc}")
        print(orjson.dumps({"error": str(exc)}).decode())
        return 1
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
