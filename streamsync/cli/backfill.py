"""`streamsync backfill` (also `python -m streamsync.backfill`): bulk-load existing records."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

import orjson

from streamsync.adapters.iterable import IterableClient
from streamsync.cli.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from streamsync.cli.options import Subparsers, add_command, config_path, positive_int
from streamsync.cli.output import err
from streamsync.cli.progress import ConsoleProgress
from streamsync.cli.timestamps import time_argument
from streamsync.config import Config, load_config
from streamsync.errors import (
    AuthError,
    BackfillError,
    ConfigError,
    RetriableError,
    StreamsyncError,
    Terminated,
    WritesFailed,
)
from streamsync.retry import Policy
from streamsync.runtime.app import open_components
from streamsync.runtime.backfill import (
    Backfill,
    BackfillOptions,
    BackfillSummary,
    key_refused,
    unreachable,
)
from streamsync.runtime.backfill.events import EventBackfill, EventsSummary, select_rules
from streamsync.runtime.lists.backfill import PAGE_SIZE as LISTS_PAGE
from streamsync.runtime.lists.backfill import ListsSummary, run_lists_backfill
from streamsync.runtime.progress import Progress

PREFIX: Final = "streamsync backfill"
KEY_CHECK: Final = Policy(name="iterable_key_check", attempts=3, timeout_s=30.0)
T = TypeVar("T")

DESCRIPTION = """\
Read every record of the configured Salesforce objects (or those given with --objects) and write
them to Iterable through the same mapping, skip-unchanged check and rate-limited writer as the
real-time service. Records are read page by page with keyset pagination (WHERE Id > :last
ORDER BY Id LIMIT 2000) in parallel CreatedDate windows; each window's progress is checkpointed
in the SQLite store after Iterable confirms a page, so an interrupted backfill continues with
--resume. At the end, records modified since the backfill started are queued for the real-time
service (catch-up), so an older backfill page is never the last write. It can run beside
`streamsync run` (both draw from one Iterable rate budget kept in the store), and several
backfill processes can work on one run: the same command started again (on this machine, or on
another one sharing a PostgreSQL store) joins the run of the same scope in progress.

A backfill fires no custom events unless given --events: then, after the profiles, each
[[events]] rule of the selected objects whose trigger a record's current state can judge (a
create rule; a condition rule with an update or undelete trigger; not delete, not an update
without a condition) sends one event per record qualifying now, exactly once: its id is built
from the rule, the record and the record state judged, and a record whose moment the store
knows (fired from CDC, or by an earlier backfill) is not sent again (docs/events.md §7).
"""

EPILOG = """\
examples:
  streamsync backfill --config config.toml
  streamsync backfill --config config.toml --objects Lead --since 2024-01-01
  streamsync backfill --config config.toml --dry-run payloads.jsonl
  python -m streamsync.backfill --config config.toml --resume     (the same command)
  streamsync backfill --config config.toml --join                 (a second process on the run)
  streamsync backfill --config config.toml --lists [--resume]    ([lists]: adds and removals)
  streamsync backfill --config config.toml --objects Opportunity --events   ([[events]] too)

exit status: 0 done (or already finished), 1 failed, e.g. Iterable unreachable or its key
refused (the message says what to do; resume with --resume), 2 usage or configuration error,
130 interrupted by Ctrl-C or SIGTERM (resume with --resume).
"""


def _objects(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("--objects needs at least one object name")
    return names


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(subparsers, "backfill", help_text="bulk-load existing records, resumable",
                    description=DESCRIPTION, epilog=EPILOG, handler=run,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--objects", type=_objects, default=(), metavar="Lead,Contact,Account",
        help="comma-separated objects to backfill (default: every configured object). An "
             "Account without a mapping of its own is backfilled as its Contacts, whose "
             "query reads the Account fields directly")
    p.add_argument(
        "--since", type=time_argument, metavar="TIME",
        help="only records created at or after TIME: a date (YYYY-MM-DD, midnight UTC) or an "
             "ISO 8601 date-time with Z or an offset (the field is backfill.window_field, "
             "CreatedDate by default)")
    p.add_argument(
        "--until", type=time_argument, metavar="TIME",
        help="only records created before TIME (same format as --since)")
    p.add_argument(
        "--where", metavar="SOQL",
        help="an extra SOQL filter for every selected object, e.g. \"LeadSource = 'Web'\" "
             "(comparisons, IN, LIKE, AND/OR/NOT only; combined with the object's configured "
             "filter)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true",
        help="continue the unfinished backfill of the same scope from its checkpoints; only "
             "the pages that were being written when it stopped are sent again (starts a new "
             "one when there is none)")
    mode.add_argument(
        "--restart", action="store_true",
        help="start over, even if the same backfill finished or stopped half-way")
    mode.add_argument(
        "--join", action="store_true",
        help="work on the backfill of the same scope that is in progress (or stopped) together "
             "with the processes already on it; fails when there is none. Without --join a "
             "backfill joins a run of the same scope in progress by itself: windows are leased "
             "to one process at a time (backfill.lease_s) and those of a process that died are "
             "taken over")
    p.add_argument(
        "--dry-run", type=Path, metavar="FILE",
        help="read and map the records, write the Iterable payloads to FILE as JSON lines "
             "({object, id, payload} or {object, id, error}); nothing is sent to Iterable and "
             "no checkpoint is kept")
    p.add_argument(
        "--parallel", type=positive_int, metavar="N",
        help="CreatedDate windows per object and windows read at once "
             "(default: backfill.parallel, 4; at most 25)")
    p.add_argument(
        "--api", choices=("rest", "bulk"),
        help="rest: REST query pages of 2,000 records; bulk: Bulk API 2.0 query jobs of 50,000 "
             "records, for very large objects (default: backfill.api, rest)")
    p.add_argument(
        "--no-catch-up", dest="catch_up", action="store_false",
        help="do not queue the records modified during the backfill for the real-time service "
             "(only when no service runs and nothing changes meanwhile)")
    p.add_argument(
        "--lists", action="store_true",
        help="instead of profiles: bring every Iterable list of [lists] to its Salesforce "
             "Campaign's current members (subscribe the missing, unsubscribe the rest); "
             "resumable with --resume")
    p.add_argument(
        "--events", action="store_true",
        help="after the profiles, send the custom events of the [[events]] rules of the "
             "selected objects for the records qualifying now (a create rule: every record, "
             "createdAt = CreatedDate; a condition rule: the records meeting it, createdAt = "
             "LastModifiedDate); exactly once, also with the service running; resumable with "
             "--resume. An object with rules only (no [objects] mapping) is judged for events "
             "only")
    p.add_argument(
        "--json", action="store_true",
        help="print the final summary as one JSON object on stdout")


def options_from(args: argparse.Namespace) -> BackfillOptions:
    """The BackfillOptions of parsed arguments."""
    return BackfillOptions(
        objects=tuple(args.objects), since=args.since, until=args.until, where=args.where,
        resume=args.resume, restart=args.restart, join=args.join, dry_run=args.dry_run,
        parallel=args.parallel,
        api=args.api, catch_up=args.catch_up)


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        if args.lists:
            if args.events:
                raise BackfillError("--lists and --events exclude each other")
            return _run_lists(args, options)
        if args.events:
            return _run_events(args, options)
        summary = asyncio.run(until_terminated(run_backfill(config_path(args), options)))
    except (ConfigError, BackfillError) as exc:
        err(str(exc), PREFIX)
        return EXIT_USAGE
    except WritesFailed as exc:
        err(f"stopped: {exc}\nwhat to do: {exc.advice}", PREFIX)
        return EXIT_FAILED
    except StreamsyncError as exc:
        err(f"failed: {exc}\n(the checkpoints are kept: run again with --resume to continue)",
            PREFIX)
        return EXIT_FAILED
    except (KeyboardInterrupt, Terminated) as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        err(f"{how} (the checkpoints are kept: run again with --resume to continue)", PREFIX)
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(orjson.dumps(summary.to_dict()).decode() + "\n")
        sys.stdout.flush()
    return EXIT_OK


def _run_lists(args: argparse.Namespace, options: BackfillOptions) -> int:
    """`backfill --lists`: errors propagate to `run`'s handlers; prints a line per list."""
    if options.dry_run is not None or options.objects or options.where or options.since \
            or options.until:
        raise BackfillError("--lists takes only --resume, --restart and --json")
    summary = asyncio.run(until_terminated(run_lists(config_path(args), resume=options.resume)))
    if args.json:
        sys.stdout.write(orjson.dumps(summary.to_dict()).decode() + "\n")
    else:
        for t in summary.lists:
            sys.stdout.write(f"list {t.list_id} (Campaign {t.campaign_id}): {t.members} "
                             f"members read, {t.subscribed} subscribed, {t.unsubscribed} "
                             f"unsubscribed, {t.dead} dead-lettered"
                             f"{' (resumed)' if t.resumed else ''}\n")
    sys.stdout.flush()
    return EXIT_OK


def _run_events(args: argparse.Namespace, options: BackfillOptions) -> int:
    """`backfill --events`: errors propagate to `run`'s handlers; prints a line per rule."""
    if options.dry_run is not None:
        raise BackfillError("--events does not take --dry-run (nothing would be judged)")
    profiles, events = asyncio.run(until_terminated(run_with_events(config_path(args), options)))
    if args.json:
        doc: dict[str, object] = profiles.to_dict() if profiles is not None else {}
        doc["events"] = events.to_dict()
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        for r in events.rules:
            dead = sum(r.dead.values())
            sys.stdout.write(
                f"events rule {r.rule} ({r.object}): "
                + ("already finished (--restart to judge again)\n"
                   if r.status == "already_finished" else
                   f"{r.records_read} records read, {r.qualifying} qualifying, {r.fired} "
                   f"fired, {r.known} already known, {r.deferred} left to CDC, {dead} dead"
                   f"{' (resumed)' if r.resumed else ''}\n"))
        for name, why in events.not_judged.items():
            sys.stdout.write(f"events rule {name}: not judged: {why}\n")
        sys.stdout.write(f"events: {events.sent} sent in {events.trackbulk_calls} trackBulk "
                         f"calls, {events.sent_dead} refused"
                         + (f", {events.left_queued} queued for `streamsync run`"
                            if events.left_queued else "") + "\n")
    sys.stdout.flush()
    return EXIT_OK


async def run_with_events(config_file: str, options: BackfillOptions, *,
                          env: Mapping[str, str] | None = None,
                          progress: ConsoleProgress | None = None
                          ) -> tuple[BackfillSummary | None, EventsSummary]:
    """The profile backfill of the selected objects that have a mapping (none: skipped), then
    the events of their `[[events]]` rules (docs/events.md §7). The rules are checked first."""
    config = load_config(config_file, os.environ if env is None else env)
    return await backfill_with_events(config, options, progress=progress)


async def backfill_with_events(config: Config, options: BackfillOptions, *,
                               progress: Progress | None = None
                               ) -> tuple[BackfillSummary | None, EventsSummary]:
    """`run_with_events` with a loaded config."""
    async with open_components(config, drawer="backfill") as parts:
        select_rules(config, parts.rules, options.objects)
        unknown = [o for o in options.objects
                   if o not in config.objects and all(r.config.object != o for r in parts.rules)]
        if unknown:
            raise BackfillError(f"object {unknown[0]!r} is neither configured nor the object "
                                "of an [[events]] rule")
        await check_iterable(parts.iterable, config.iterable.base_url)
        profile_objects = tuple(o for o in options.objects if o in config.objects)
        profiles = None
        if profile_objects or not options.objects:
            backfill = Backfill(config=config, store=parts.store, salesforce=parts.salesforce,
                                pipeline=parts.pipeline, metrics=parts.metrics,
                                progress=progress or ConsoleProgress(), clock=parts.clock,
                                mappings=parts.mappings)
            profiles = await backfill.run(replace(options, objects=profile_objects))
        events = EventBackfill(config=config, store=parts.store, salesforce=parts.salesforce,
                               iterable=parts.iterable, rules=parts.rules, clock=parts.clock)
        return profiles, await events.run(options)


async def run_lists(config_file: str, *, resume: bool, env: Mapping[str, str] | None = None,
                    page_size: int = LISTS_PAGE) -> ListsSummary:
    """Load the config, open the clients and the store, run the lists backfill."""
    config = load_config(config_file, os.environ if env is None else env)
    async with open_components(config) as parts:
        await check_iterable(parts.iterable, config.iterable.base_url)
        return await run_lists_backfill(config, parts, resume=resume, page_size=page_size)


async def run_backfill(config_file: str, options: BackfillOptions, *,
                       env: Mapping[str, str] | None = None,
                       progress: ConsoleProgress | None = None) -> BackfillSummary:
    """Load the config, open the clients and the store, run the backfill, close everything."""
    config = load_config(config_file, os.environ if env is None else env)
    async with open_components(config, drawer="backfill") as parts:
        if options.dry_run is None:
            await check_iterable(parts.iterable, config.iterable.base_url)
        backfill = Backfill(config=config, store=parts.store, salesforce=parts.salesforce,
                            pipeline=parts.pipeline, metrics=parts.metrics,
                            progress=progress or ConsoleProgress(), clock=parts.clock,
                            mappings=parts.mappings)
        return await backfill.run(options)


async def check_iterable(iterable: IterableClient, base_url: str) -> None:
    """One getFields call (retried under KEY_CHECK) before anything is read: a refused key or an
    Iterable that does not answer stops the run before it starts (WritesFailed, saying what to
    do)."""
    try:
        await KEY_CHECK.call(iterable.get_fields)
    except AuthError as exc:
        raise key_refused(exc) from exc
    except RetriableError as exc:
        raise unreachable(exc, base_url, "Iterable does not answer") from exc


async def until_terminated(work: Awaitable[T]) -> T:
    """Await `work`; SIGTERM cancels it as Ctrl-C does (checkpoints kept) and raises
    Terminated."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
