"""`streamsync replay`: where a channel resumes, or a reconciliation from a time."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from streamsync.cli.exit_codes import EXIT_OK
from streamsync.cli.options import Subparsers, add_command, load
from streamsync.cli.output import out
from streamsync.cli.timestamps import epoch_ms, parse_time
from streamsync.config import Config
from streamsync.errors import UsageError
from streamsync.retry import Policy
from streamsync.runtime.clients import build_salesforce_client, salesforce_session
from streamsync.runtime.status import iso
from streamsync.runtime.store_open import open_store

REPLAY_EARLIEST: Final = -2
REPLAY_NEW: Final = -1


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(
        subparsers, "replay", help_text="choose where a channel resumes, or recover from an outage",
        description="Set where the next `run` resumes a CDC channel: a replay id, `earliest` "
                    "(everything Salesforce still retains, up to 72 h) or `new` (only new "
                    "events). With an ISO 8601 timestamp, every record modified since then is "
                    "queued (a reconciliation) and the channel resumes with new events: the way "
                    "back from an outage longer than the 72 h event retention. Stop the service "
                    "first: a running service keeps writing its own replay ids.",
        handler=run)
    p.add_argument("--channel", required=True,
                   help="a configured channel, e.g. /data/LeadChangeEvent")
    p.add_argument("--from", dest="start", required=True, metavar="FROM",
                   help="a replay id, `earliest`, `new`, or a time such as 2026-01-02T03:04:05Z "
                        "(a date-time needs Z or an offset; a bare date is midnight UTC)")


def parse_replay_start(value: str) -> int | datetime:
    """`earliest` → -2, `new` → -1, digits → that replay id; anything else must be a time
    (streamsync/cli/timestamps.py), returned as an aware UTC datetime."""
    text = value.strip()
    lowered = text.lower()
    if lowered == "earliest":
        return REPLAY_EARLIEST
    if lowered == "new":
        return REPLAY_NEW
    if re.fullmatch(r"-?\d+", text):
        replay_id = int(text)
        if replay_id < REPLAY_EARLIEST:
            raise UsageError(f"--from {value!r}: a replay id is positive (or -1 = new, "
                             "-2 = earliest)")
        return replay_id
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(f"--from: {exc}; or use a replay id, `earliest` or `new`") from None


def _channel_objects(config: Config, channel: str) -> list[str]:
    bound = [name for name in config.objects if config.channel(name) == channel]
    if not bound:
        configured = sorted({config.channel(name) for name in config.objects})
        raise UsageError(f"--channel {channel!r} is not a configured channel; configured: "
                         f"{', '.join(configured)}")
    return bound


def run(args: argparse.Namespace) -> int:
    start = parse_replay_start(args.start)
    if isinstance(start, int):
        config = load(args, require_secrets=False)
        _channel_objects(config, args.channel)
        return asyncio.run(_replay_id(config, args.channel, start))
    config = load(args, require_secrets=True)
    objects = _channel_objects(config, args.channel)
    since_ms = epoch_ms(start)
    if since_ms > time.time() * 1000:
        raise UsageError(f"--from {args.start.strip()!r} is in the future")
    return asyncio.run(_replay_since(config, args.channel, objects, since_ms))


async def _replay_id(config: Config, channel: str, replay_id: int) -> int:
    store = await open_store(config, create=True)
    try:
        before = await store.get_replay(channel)
        await store.set_replay(channel, replay_id, time.time())
    finally:
        await store.close()
    label = {REPLAY_EARLIEST: "earliest (-2): every retained event",
             REPLAY_NEW: "new (-1): only events published from now on"}.get(
        replay_id, f"after replay id {replay_id}")
    previous = "none" if before is None or before.replay_id is None else before.replay_id
    out(f"{channel}: the next `streamsync run` resumes from {label} (was: {previous})\n"
        "A service running now keeps its own position: restart it to apply this.\n")
    return EXIT_OK


async def _replay_since(config: Config, channel: str, objects: Sequence[str],
                        since_ms: int) -> int:
    from streamsync.runtime.metrics import Metrics
    from streamsync.runtime.reconcile import Reconciler

    store = await open_store(config, create=True)
    try:
        async with salesforce_session(config) as session:
            salesforce = build_salesforce_client(
                config, session, retry=Policy(name="salesforce_reads", attempts=5, timeout_s=120.0))
            reconciler = Reconciler(config=config, store=store, salesforce=salesforce,
                                    metrics=Metrics())
            queued: dict[str, int] = {}
            for name in objects:
                queued[name] = await reconciler.reconcile(name, since_ms, trigger="replay")
        await store.set_replay(channel, REPLAY_NEW, time.time())
    finally:
        await store.close()
    since = iso(since_ms / 1000)
    for name, count in queued.items():
        out(f"{name}: queued {count} record(s) modified since {since} "
            f"(minus {config.ingest.reconcile_overlap_s:g} s overlap)\n")
    out(f"{channel}: the next `streamsync run` syncs them and resumes with new events\n")
    return EXIT_OK
