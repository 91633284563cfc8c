"""`streamsync status`: the store's state (runtime/status.py reads it) shown as tables."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

from streamsync.cli.durations import duration
from streamsync.cli.exit_codes import EXIT_OK
from streamsync.cli.options import Subparsers, add_command, load, positive_int
from streamsync.cli.output import json_text, out, table
from streamsync.runtime.status import read_status
from streamsync.runtime.store_open import open_store

MAX_WINDOWS_SHOWN: Final = 10


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(
        subparsers, "status",
        help_text="show queue, replay ids, dead letters, errors and backfill progress",
        description="Read the store (safe while the service runs): queue depth and oldest item, "
                    "depth per object, replay id and last event time per channel, dead letters "
                    "by reason, recent errors, the latest backfill run and its checkpoints.",
        handler=run)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--errors", type=positive_int, default=10, metavar="N",
                   help="recent errors to show (default 10)")


def run(args: argparse.Namespace) -> int:
    config = load(args, require_secrets=False)

    async def go() -> int:
        store = await open_store(config, create=False)
        try:
            data = await read_status(store, config, time.time(), errors=args.errors)
        finally:
            await store.close()
        out(json_text(data) if args.json else render_status(data))
        return EXIT_OK

    return asyncio.run(go())


def render_status(data: Mapping[str, Any]) -> str:
    """The human view of `runtime.status.read_status` data."""
    parts = [f"streamsync status at {data['generated_at']}"
             + (f" (store {data['store']})" if data.get("store") else "")]
    parts += _queue(data["queue"])
    parts += _channels(data["channels"])
    parts += _workers(data.get("workers") or [])
    parts += _budgets(data.get("rate_budgets") or [])
    dl = data["dead_letters"]
    parts.append(f"\nDead letters: {dl['total']}")
    if dl["by_reason"]:
        parts.append(table(["reason", "records"], sorted(dl["by_reason"].items())))
    parts.append("\nRecent errors:")
    if data["recent_errors"]:
        # Never cut: the end of a message is often what matters (the host:port refused).
        parts.append(table(["at", "component", "message"],
                           [[e["at"], e["component"], e["message"]]
                            for e in data["recent_errors"]], max_cell=None))
    else:
        parts.append("  (none)")
    parts += _backfill(data["backfill"], list(data.get("backfill_runs") or [])[1:])
    parts += _resyncs(data.get("mapping") or {})
    parts += _consent_inbox(data.get("consent_inbox") or {})
    return "\n".join(parts) + "\n"


def _consent_inbox(inbox: Mapping[str, Any]) -> list[str]:
    """Iterable consent events on their way to Salesforce (nothing when none was received)."""
    states = inbox.get("by_state") or {}
    read = {k: v for k, v in (inbox.get("export_read_up_to") or {}).items() if v}
    if not states and not read:
        return []
    counts = ", ".join(f"{name} {states.get(name, 0)}" for name in ("pending", "done", "failed"))
    out = [f"\nConsent events from Iterable: {counts}"]
    if read:
        out.append("  export read up to: " + ", ".join(f"{k} {v}" for k, v in sorted(
            read.items())))
    return out


def _resyncs(mapping: Mapping[str, Any]) -> list[str]:
    resyncs = mapping.get("resyncs") or []
    if not resyncs:
        return []
    return ["\nMapping re-syncs (a changed mapping being applied):", table(
        ["object", "phase", "read", "written", "out of scope", "last id", "since"],
        [[r["object"], r["phase"], r["records_read"], r["records_written"],
          r["records_out_of_scope"], r["last_id"] or "-", r["started_at"]] for r in resyncs])]


def _queue(q: Mapping[str, Any]) -> list[str]:
    oldest = ("" if q["oldest_age_s"] is None
              else f", oldest item {duration(q['oldest_age_s'])} old")
    parts = [f"\nQueue: {q['depth']} record(s){oldest}; {q['due']} due, {q['leased']} "
             f"leased, {q['retrying']} in backoff"]
    if q["by_object"]:
        parts.append(table(["object", "queued"], sorted(q["by_object"].items())))
    return parts


def _channels(channels: list[Mapping[str, Any]]) -> list[str]:
    if not channels:
        return ["\nChannels:", "  (none)"]
    return ["\nChannels:", table(
        ["channel", "object", "replay id", "last event (commit time)", "age", "leader"],
        [[c["channel"], c["object"] or "(not configured)",
          "(none: starts with new events)" if c["replay_id"] is None else c["replay_id"],
          c["last_event_at"], duration(c["last_event_age_s"]),
          c.get("leader") or "(none)"] for c in channels])]


def _budgets(budgets: list[Mapping[str, Any]]) -> list[str]:
    parts = ["\nIterable rate budget (shared by every process of this store):"]
    if not budgets:
        return [*parts, "  (nobody is drawing from it now)"]
    for b in budgets:
        parts.append(f"  {b['budget']}: {b['drawing_per_s']}/s of {b['ceiling_per_s']}/s "
                     f"({b['used_fraction'] * 100:.0f}%)")
        parts.append(table(["drawer", "kind", "host", "pid", "rate/s", "last claim"],
                           [[d["drawer_id"], d["kind"], d["host"], d["pid"], d["rate_per_s"],
                             duration(d["last_claim_age_s"])] for d in b["drawers"]]))
    return parts


def _workers(workers: list[Mapping[str, Any]]) -> list[str]:
    if not workers:
        return ["\nWorkers:", "  (none has run on this store)"]
    return ["\nWorkers:", table(
        ["worker", "host", "pid", "leads", "last heartbeat", "age", "state"],
        [[w["worker_id"], w["host"], w["pid"], ", ".join(w["leads"]) or "(following)",
          w["last_heartbeat_at"], duration(w["heartbeat_age_s"]), w["state"]]
         for w in workers])]


def _backfill(bf: Mapping[str, Any] | None, earlier: list[Mapping[str, Any]]) -> list[str]:
    parts = ["\nBackfill:"]
    if bf is None:
        parts.append("  (never run)")
    else:
        state = f"finished {bf['finished_at']}" if bf["finished"] else "not finished"
        parts.append(f"  run {bf['run_id']} started {bf['started_at']}, {state}; "
                     f"{bf['windows_done']}/{bf['windows_total']} window(s) done, "
                     f"{bf['records_done']} record(s)")
        open_windows = [w for w in bf["windows"] if not w["done"]]
        if open_windows:
            shown = open_windows[:MAX_WINDOWS_SHOWN]
            parts.append(table(
                ["object", "window start", "window end", "last id", "records", "updated"],
                [[w["object"], w["start"], w["end"], w["last_id"], w["records_done"],
                  w["updated_at"]] for w in shown]))
            if len(open_windows) > len(shown):
                parts.append(f"  ... and {len(open_windows) - len(shown)} more open window(s)")
    if earlier:
        parts.append("  earlier runs:")
        parts.append(table(["run", "started", "finished"],
                           [[r["run_id"], r["started_at"], r["finished_at"] or "(not finished)"]
                            for r in earlier]))
    return parts
