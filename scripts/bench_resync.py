"""Benchmark a mapping re-sync beside real-time sync: real-time latency while it runs, and the
re-sync's own rate against Iterable's ceiling (issue 15: real time keeps p99 <= 3 s).

Both emulators and the service run as separate processes, as in scripts/bench_stream.py (whose
helpers this reuses): Salesforce with `--leads` seeded Leads and `--sf-latency-ms` per call,
Iterable with its real limits (bulkUpdate 5 requests/s) and `--iterable-latency-ms`. The
service starts on the default mapping (its first run records it: nothing is re-synced), then
config.toml gains a mapped field (`Title`), so every Lead's payload changes, and the service is
sent SIGHUP: it reloads and re-syncs every Lead at the ceiling. As soon as the reload is logged
a stream of `--rate` single-Lead changes per second runs for `--duration` s; each change's
commit-to-Iterable latency is measured as bench_stream measures it (from the CDC commit time
to the Iterable write carrying the change's unique FirstName). The JSON says whether the
re-sync was still running when the stream ended (else the stream outlived it and the figure
does not measure interleaving).

Iterable's ceiling is a request rate (bulkUpdate: 5 requests/s, of up to 1,000 users each), and
real time and the re-sync share it. Over the re-sync's span (from the reload to `resync.done`),
with `real-time requests` those that carried a stream change:

- `resync_fraction_of_left` (the issue's "at the rate ceiling"): the re-sync's users/s over
  the ceiling minus what real time used, i.e. re-synced users / ((rate x span - real-time
  requests) x 1,000): 1.0 means every send slot real time left carried a full re-sync batch;
- `endpoint_use`: every bulkUpdate request in the span / (rate x span): how much of Iterable's
  request budget was used at all;
- `resync_fraction_of_ceiling`: re-synced users/s over the whole 5,000 users/s (reaching it
  would need real time to send nothing).

    .venv/bin/python scripts/bench_resync.py [--quick] [--leads 30000] [--rate 50]
        [--duration 20]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_stream as bs  # noqa: E402

RESYNC_FIELD = 'Title = "dataFields.title"'


def log(text: str) -> None:
    sys.stderr.write(f"[bench_resync {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def events_of(path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if name not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out


async def wait_event(service: bs.Proc, name: str, timeout_s: float) -> float:
    """Wait until the service logs `name`; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.returncode is not None:
            raise bs.BenchError(f"the service exited:\n{service.tail()}")
        if events_of(service.log_path, name):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise bs.BenchError(f"no {name} within {timeout_s:.0f} s:\n{service.tail()}")


async def settle(env: bs.Env, base_users: int, expected: int, timeout_s: float,
                 quiet_s: float = 5.0) -> None:
    """bench_stream waits until Iterable received as many users as changes were made; the
    re-sync's writes count too, so here the stream's changes get a fixed grace instead: one
    still missing after it is reported missing (the target is 3 s)."""
    await asyncio.sleep(quiet_s)


async def stream_requests(env: bs.Env) -> dict[int, float]:
    """The Iterable requests that carried a stream change: request number -> receipt time."""
    changes = env.events.lead_changes("Burst ")
    history = await bs.histories(env.http, env.it.info["control_url"],
                                 sorted({e.lower() for i, _, _ in changes
                                         if (e := env.emails.get(i))}))
    return bs.receipts(changes, env.emails, history)[1]


def add_title(config: Path) -> None:
    """The default Lead mapping plus Title: every Lead's payload changes."""
    text = config.read_text()
    lead = "\n".join(f'"{k}" = "{v}"' for k, v in LEAD_MAPPING.items())
    config.write_text(text + f"\n[objects.Contact]\n\n[objects.Account]\n\n"
                      f"[objects.Lead.mapping]\n{lead}\n{RESYNC_FIELD}\n")


LEAD_MAPPING = {
    "Email": "email", "Id": "dataFields.sfLeadId", "FirstName": "dataFields.firstName",
    "LastName": "dataFields.lastName", "Status": "dataFields.leadStatus",
    "LeadSource": "dataFields.leadSource", "Company": "dataFields.Company.Name",
    "Owner.Id": "dataFields.Owner.Id", "Owner.Name": "dataFields.Owner.Name",
    "Owner.Email": "dataFields.Owner.Email", "Owner.IsActive": "dataFields.Owner.IsActive",
}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"leads": args.leads, "rate_per_s": args.rate,
                           "duration_s": args.duration, "sf_latency_ms": args.sf_latency_ms,
                           "iterable_latency_ms": args.iterable_latency_ms}
    bs.wait_delivered = settle  # type: ignore[assignment]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_resync_") as tmp:
        workdir = Path(tmp)
        procs: list[bs.Proc] = []
        try:
            sf = await bs.start_emulator("salesforce", "streamsync.emulators.salesforce", [
                "--port", "0", "--seed-leads", str(args.leads), "--seed-contacts", "0",
                "--latency-ms", str(args.sf_latency_ms)], workdir)
            procs.append(sf)
            it = await bs.start_emulator("iterable", "streamsync.emulators.iterable", [
                "--port", "0", "--latency-ms", str(args.iterable_latency_ms)], workdir)
            procs.append(it)
            limits = (await bs._get(f"{it.info['control_url']}/limits"))["limits"]
            rate = float(limits.get("bulkUpdate", {}).get("rate_per_s", bs.ITERABLE_RATE_PER_S))
            ceiling = rate * bs.BATCH_USERS
            out["ceiling_users_per_s"] = ceiling
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                emails = await bs.lead_emails(http, sf.info)
                health_port = bs.free_port()
                config = workdir / "config.toml"
                bs.write_config(config, sf.info, it.info, health_port, {})
                service = await bs.start_service(config, sf.info, it.info, workdir)
                procs.append(service)
                await bs.wait_ready(http, service, f"http://127.0.0.1:{health_port}/readyz")
                env = bs.Env(http, sf, it, service, emails,
                             bs.EventLog(http, sf.info["control_url"]))
                before = await bs.iterable_counts(env)
                await bs.post_json(http, f"{sf.info['control_url']}/counters/reset", {})
                add_title(config)
                service.process.send_signal(signal.SIGHUP)
                await wait_event(service, "config.reloaded", 60.0)
                log("reloaded; streaming real-time changes during the re-sync")
                out.update(await bs.stream_phase(env, args.rate, args.duration))
                stream_end = time.time()
                await wait_event(service, "resync.done", args.leads / ceiling * 4 + 120)
                after = await bs.iterable_counts(env)
                api_used, kinds = await bs.sf_api_used(env)
                reloaded_at = float(events_of(service.log_path, "config.reloaded")[0]["ts"])
                done_at = float(events_of(service.log_path, "resync.done")[0]["ts"])
                seconds = done_at - reloaded_at
                still = done_at > stream_end
                with_email = sum(1 for e in emails.values() if e)
                stream = await stream_requests(env)
                requests = after["bulk_total"] - before["bulk_total"]
                resync_requests = requests - len(stream)
                realtime = sum(1 for wall in stream.values() if reloaded_at <= wall <= done_at)
                slots = rate * seconds
                out.update({
                    "resync_running_when_stream_ended": still,
                    "stream_ended_after_reload_s": round(stream_end - reloaded_at, 1),
                    "resync_s": round(seconds, 1),
                    "resync_leads_with_email": with_email,
                    "resync_users_per_s": round(with_email / seconds, 1),
                    "resync_fraction_of_left": round(
                        with_email / max(1.0, (slots - realtime) * bs.BATCH_USERS), 3),
                    "endpoint_use": round((resync_requests + realtime) / slots, 3),
                    "resync_fraction_of_ceiling": round(with_email / seconds / ceiling, 3),
                    "resync_requests": resync_requests,
                    "resync_users_per_request": round(with_email / max(1, resync_requests), 1),
                    "realtime_requests_during_resync": realtime,
                    "iterable_requests": requests,
                    "iterable_429s": after["bulk_429"] - before["bulk_429"],
                    "sf_api_calls": api_used, "sf_api_calls_by_kind": kinds,
                    "sf_calls_per_1000_resynced": round(
                        kinds.get("query", 0) * 1000 / max(1, args.leads), 2),
                })
            out["service_exit_code"] = await bs.stop_process(service)
        finally:
            for proc in reversed(procs):
                await bs.stop_process(proc)
    out["bench_wall_s"] = round(time.monotonic() - started, 1)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="20,000 Leads and a 8 s stream (about a minute)")
    parser.add_argument("--leads", type=int, default=None, help="seeded Leads (default 60000)")
    parser.add_argument("--rate", type=float, default=50.0, help="stream changes per second")
    parser.add_argument("--duration", type=float, default=None,
                        help="stream seconds (default 20; 8 with --quick)")
    parser.add_argument("--sf-latency-ms", type=float, default=150.0)
    parser.add_argument("--iterable-latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.leads is None:
        args.leads = 20_000 if args.quick else 60_000
    if args.duration is None:
        args.duration = 8.0 if args.quick else 20.0
    if min(args.leads, args.rate, args.duration) <= 0 or math.isnan(args.rate):
        parser.error("--leads, --rate and --duration must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return bs.print_result(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
