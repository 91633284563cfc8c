"""Benchmark the backfill end to end: emulators and the backfill as separate processes.

Phase "limits": both emulators with realistic latency (Salesforce query page ~300 ms plus a
per-record cost, Iterable ~100 ms) and Iterable's real limits (bulkUpdate 5 requests/s, 4 MB),
Leads and Contacts 2:1. Reports users/s against the ceiling (limit in force x batch size), 429s,
the backfill process's peak RSS (psutil samples and the kernel's maxrss) and the Salesforce API
calls it spent. Phase "no-limits": the same records with limits lifted and latency off, reporting
records/s per CPU-second of the backfill process (the pipeline's own cost).

    .venv/bin/python scripts/bench_backfill.py [--quick] [--records N] [--phases limits,no-limits]

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BATCH_USERS = 1000
ITERABLE_RATE_PER_S = 5.0


def log(text: str) -> None:
    sys.stderr.write(f"[bench_backfill] {text}\n")
    sys.stderr.flush()


def start_process(args: list[str], timeout_s: float = 900.0) -> tuple[subprocess.Popen[str],
                                                                       dict[str, Any]]:
    """Start an emulator CLI and read the JSON line it prints once it serves."""
    proc = subprocess.Popen([PY, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip().startswith("{"):
            return proc, json.loads(line)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start: {line!r}")


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_json(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def write_config(path: Path, sf: dict[str, Any], it: dict[str, Any], *, rate_per_s: float,
                 in_flight: int, parallel: int) -> None:
    path.write_text(f"""
[salesforce]
login_url = "{sf['instance_url']}"
auth = "client_credentials"
client_id = "{sf['client_id']}"
api_version = "{sf['api_version']}"
timeout_s = 120

[iterable]
base_url = "{it['base_url']}"
project_type = "email"
batch_max_users = {BATCH_USERS}
rate_limit_per_s = {rate_per_s}
max_in_flight = {in_flight}
timeout_s = 60

[queue]
path = "{path.parent / 'streamsync.db'}"

[backfill]
parallel = {parallel}
page_size = 2000

[health]
enabled = false
""")


class Sampler(threading.Thread):
    """Samples a process's RSS and CPU times every `every_s` until it exits."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = 0
        self.cpu_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.proc.oneshot():
                    self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
                    times = self.proc.cpu_times()
                    self.cpu_s = times.user + times.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                return
            self.stop.wait(self.every_s)


def run_backfill(config: Path, sf: dict[str, Any], it: dict[str, Any]) -> dict[str, Any]:
    """One `python -m streamsync.backfill` process; its summary, wall time, CPU and memory."""
    env = {**os.environ, "STREAMSYNC_SF_CLIENT_SECRET": sf["client_secret"],
           "STREAMSYNC_ITERABLE_API_KEY": it["api_key"]}
    out_path = config.parent / "summary.json"
    err_path = config.parent / "backfill.log"
    started = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([PY, "-m", "streamsync.backfill", "--config", str(config),
                                 "--objects", "Lead,Contact", "--json", "--restart"],
                                cwd=ROOT, env=env, stdout=out, stderr=err)
        sampler = Sampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    wall_s = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"backfill exited {proc.returncode}: "
                           f"{err_path.read_text()[-2000:]}")
    summary = json.loads(out_path.read_text().strip().splitlines()[-1])
    maxrss_bytes = usage.ru_maxrss * 1024  # kilobytes on Linux
    return {
        "summary": summary,
        "wall_s": wall_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb_sampled": sampler.peak_rss / 2**20,
        "peak_rss_mb": max(sampler.peak_rss, maxrss_bytes) / 2**20,
    }


def phase(name: str, sf: dict[str, Any], records: int, workdir: Path, *, limits: bool,
          parallel: int) -> dict[str, Any]:
    it_args = ["streamsync.emulators.iterable", "--port", "0", "--no-history",
               "--latency-ms", "100" if limits else "0"]
    if not limits:
        it_args.append("--no-rate-limits")
    it_proc, it = start_process(it_args)
    try:
        control = sf["control_url"].rstrip("/")
        if limits:
            http_json(control + "/latency", "POST", {"latency_ms": 300, "per_record_ms": 0.05})
        else:
            http_json(control + "/latency", "POST", {"latency_ms": 0, "per_record_ms": 0})
        http_json(control + "/counters/reset", "POST", {})
        limits_in_force = http_json(it["control_url"].rstrip("/") + "/state")["limits"]
        bulk_rate = float(limits_in_force.get("bulkUpdate", {}).get("rate_per_s", 0.0)) or None
        cfg_dir = workdir / name
        cfg_dir.mkdir()
        config = cfg_dir / "config.toml"
        write_config(config, sf, it, rate_per_s=ITERABLE_RATE_PER_S if limits else 1000.0,
                     in_flight=4 if limits else 8, parallel=parallel)
        log(f"{name}: backfilling {records:,} records")
        result = run_backfill(config, sf, it)
        sf_counters = http_json(control + "/counters")
        it_state = http_json(it["control_url"].rstrip("/") + "/state")
    finally:
        stop_process(it_proc)
    s = result["summary"]
    seconds = float(s["duration_s"])
    users = int(s["records_written"])
    ceiling = (bulk_rate or ITERABLE_RATE_PER_S) * BATCH_USERS if limits else None
    read = int(s["records_read"])
    out = {
        "records": read,
        "seconds": round(seconds, 2),
        "process_wall_s": round(result["wall_s"], 2),
        "users_written": users,
        "users_per_s": round(users / seconds, 1) if seconds else 0.0,
        "records_per_s": round(read / seconds, 1) if seconds else 0.0,
        "ceiling_users_per_s": ceiling,
        "ratio_to_ceiling": round(users / seconds / ceiling, 4) if ceiling and seconds else None,
        "iterable_requests": s["iterable_requests"],
        "iterable_429s": s["iterable_429s"],
        "iterable_users_received": it_state.get("users_received"),
        "dead_lettered": s["dead_lettered"],
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "peak_rss_mb_sampled": round(result["peak_rss_mb_sampled"], 1),
        "cpu_s": round(result["cpu_s"], 2),
        "records_per_cpu_s": round(read / result["cpu_s"], 1) if result["cpu_s"] else None,
        "sf_api_calls": s["sf_api_calls"],
        "sf_api_calls_emulator": sf_counters["api"]["used"],
        "sf_calls_by_kind": sf_counters["api"]["by_kind"],
        "records_per_sf_call": round(read / max(1, s["sf_api_calls"]), 1),
        "pages": s["pages"],
        "windows": s["windows"],
    }
    log(f"{name}: {json.dumps(out)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=300_000, help="Leads + Contacts (2:1)")
    p.add_argument("--quick", action="store_true", help="30,000 records: under a minute")
    p.add_argument("--phases", default="limits,no-limits",
                   help="comma-separated: limits, no-limits")
    p.add_argument("--parallel", type=int, default=4, help="backfill windows at once")
    args = p.parse_args(argv)
    records = 30_000 if args.quick else args.records
    leads = records * 2 // 3
    contacts = records - leads
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    log(f"seeding the Salesforce emulator: {leads:,} Leads, {contacts:,} Contacts")
    t0 = time.monotonic()
    sf_proc, sf = start_process(["streamsync.emulators.salesforce", "--port", "0",
                                 "--seed-leads", str(leads), "--seed-contacts", str(contacts),
                                 "--seed-accounts", str(max(10, records // 100)),
                                 "--daily-api-max", "10000000"])
    log(f"Salesforce emulator ready in {time.monotonic() - t0:.1f}s")
    result: dict[str, Any] = {"records_seeded": records, "leads": leads, "contacts": contacts,
                              "parallel": args.parallel}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_backfill_") as tmp:
            for name in phases:
                if name not in ("limits", "no-limits"):
                    raise SystemExit(f"unknown phase {name!r}")
                result[name] = phase(name, sf, records, Path(tmp), limits=name == "limits",
                                     parallel=args.parallel)
    finally:
        stop_process(sf_proc)
    main_phase = result.get("limits") or result.get("no-limits") or {}
    free = result.get("no-limits") or {}
    calls = main_phase.get("sf_api_calls", 0)
    read = main_phase.get("records", 0)
    result.update({
        "records": read,
        "seconds": main_phase.get("seconds"),
        "users_per_s": main_phase.get("users_per_s"),
        "ceiling_users_per_s": main_phase.get("ceiling_users_per_s"),
        "ratio_to_ceiling": main_phase.get("ratio_to_ceiling"),
        "iterable_429s": main_phase.get("iterable_429s"),
        "peak_rss_mb": max(x.get("peak_rss_mb", 0.0) for x in (main_phase, free) if x),
        "sf_api_calls": calls,
        "sf_calls_per_1500_records": round(calls * 1500 / read, 3) if read else None,
        "records_per_cpu_s": free.get("records_per_cpu_s"),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
