"""`streamsync plan`: what applying a config would do (runtime/plan.py reads it), shown as a
table per object or as JSON. Exit 0: nothing would change; 2: something would; 1: it could
not tell (cli/exit_codes.py)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from streamsync.cli.durations import duration
from streamsync.cli.exit_codes import EXIT_CHANGES, EXIT_FAILED, EXIT_OK
from streamsync.cli.options import Subparsers, add_command, load, positive_int
from streamsync.cli.output import err, json_text, out, table
from streamsync.errors import StreamsyncError
from streamsync.runtime.plan import ESTIMATE_RECORDS, make_plan


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(
        subparsers, "plan",
        help_text="show what a config change would do before applying it (writes nothing)",
        description="Compare the config (--config) with what the store last applied and show, "
                    "per object, the fields added, removed, renamed and changed, the records in "
                    "scope and how many a re-sync would write, what it costs (Salesforce calls, "
                    "Iterable requests, time at the configured rate) and, with --sample N, the "
                    "profile diff of N records (Iterable now -> what it would hold). Reads "
                    "Salesforce, Iterable and the store; writes to none of them. Exit codes "
                    "(like terraform plan -detailed-exitcode): 0 nothing would change, 2 "
                    "something would, 1 any error (usage and config errors included). Apply "
                    "with `systemctl reload streamsync` (SIGHUP) or a restart.",
        handler=run)
    p.add_argument("--sample", type=positive_int, default=None, metavar="N",
                   help="show the profile diff of the first N records in scope of each "
                        "changed object (one Iterable read each)")
    p.add_argument("--estimate-records", type=positive_int, default=ESTIMATE_RECORDS,
                   metavar="N", help="records read per changed object to compare payload "
                                     f"hashes (default {ESTIMATE_RECORDS}); more are "
                                     "extrapolated")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args, require_secrets=True)
        report = asyncio.run(make_plan(config, samples=args.sample or 0,
                                       estimate_records=args.estimate_records))
    except StreamsyncError as exc:
        err(f"plan: {exc}")
        return EXIT_FAILED
    data = report.as_dict()
    out(json_text(data) if args.json else render_plan(data))
    return EXIT_CHANGES if report.changes else EXIT_OK


def render_plan(data: Mapping[str, Any]) -> str:
    """The human view of a plan."""
    lines = [f"streamsync plan against the store {data['store']}"]
    for obj in data["objects"]:
        lines += _object(obj, data["ceiling"])
    for name in data["objects_no_longer_configured"]:
        lines.append(f"\n{name}: no longer configured: it stops syncing; its profiles are left "
                     "as they are")
    calls = ", ".join(f"{k} x{n}" for k, n in data["calls_made"].items()) or "none"
    lines.append(f"\nThis plan made only reads: {calls}.")
    lines.append("Changes pending: apply with `systemctl reload streamsync` (SIGHUP) or a "
                 "restart." if data["changes"] else "No changes: the store and Iterable are "
                 "up to date with this config.")
    return "\n".join(lines) + "\n"


def _object(obj: Mapping[str, Any], ceiling: Mapping[str, Any]) -> list[str]:
    name, action = obj["object"], obj["action"]
    if action == "none":
        return [f"\n{name}: no changes"]
    changes = obj["changes"]
    if action == "record":
        return [f"\n{name}: nothing applied yet (a new store): the first run records this "
                f"mapping ({len(changes['fields'])} fields) and re-syncs nothing; load "
                "Iterable with `streamsync backfill`"]
    lines = [f"\n{name}: re-sync (fingerprint {str(obj['applied_fingerprint'] or '-')[:12]} -> "
             f"{obj['fingerprint'][:12]})"]
    rows = [[c["kind"], c["target"], c["source"],
             c["old_target"] or c["detail"] or ""] for c in changes["fields"]]
    rows += [["setting", key, str(v["old"]), f"-> {v['new']}"]
             for key, v in changes["settings"].items()]
    if rows:
        lines.append(table(["change", "target", "source", "was / detail"], rows, max_cell=None))
    if obj["clears"]:
        lines.append(f"  cleared in Iterable (sent as null): {', '.join(obj['clears'])}")
    if obj["left_in_place"]:
        lines.append(f"  removed but left in place (null_policy = 'omit'): "
                     f"{', '.join(obj['left_in_place'])}")
    lines.append(f"  records in scope: {obj['records_in_scope']:,}; would write: "
                 f"{obj['would_write']:,} ({obj['estimate']})")
    oos = obj["out_of_scope"]
    if oos["records"] is not None:
        lines.append(f"  records the filter leaves out: {oos['records']:,}; those synced "
                     f"before are handled by out_of_scope = {oos['policy']!r}")
    cost = obj["cost"]
    lines.append(f"  cost: {cost['salesforce_calls']:,} Salesforce API calls, "
                 f"{cost['iterable_requests']:,} Iterable requests, about "
                 f"{duration(cost['seconds_at_ceiling'])} at {ceiling['requests_per_s']:g} "
                 "requests/s")
    for sample in obj["samples"]:
        lines += _sample(sample)
    return lines


def _sample(sample: Mapping[str, Any]) -> list[str]:
    head = f"  sample {sample['record_id']} ({sample['key']})"
    if not sample["exists"]:
        head += ": not in Iterable yet"
    if not sample["fields"]:
        return [head + ": no change"]
    return [head + ":"] + [f"    {path}: {v['now']!r} -> {v['would_be']!r}"
                           for path, v in sample["fields"].items()]
