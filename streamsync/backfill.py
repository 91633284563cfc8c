"""`python -m streamsync.backfill` (also `streamsync backfill`): bulk-load existing records."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

import orjson

from streamsync.adapters.iterable import IterableClient
from streamsync.config import load_config
from streamsync.errors import AuthError, ConfigError, RetriableError, StreamsyncError
from streamsync.logs import redactor, setup_logging
from streamsync.runtime.app import open_components
from streamsync.runtime.backfill import (
    Backfill,
    BackfillError,
    BackfillOptions,
    BackfillSummary,
    WritesFailed,
    key_refused,
    unreachable,
)
from streamsync.runtime.progress import ConsoleProgress

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
KEY_CHECK_ATTEMPTS: Final = 3
T = TypeVar("T")

DESCRIPTION = """\
Read every record of the configured Salesforce objects (or those given with --objects) and write
them to Iterable through the same mapping, skip-unchanged check and rate-limited writer as the
real-time service. Records are read page by page with keyset pagination (WHERE Id > :last
ORDER BY Id LIMIT 2000) in parallel CreatedDate windows; each window's progress is checkpointed
in the SQLite store after Iterable confirms a page, so an interrupted backfill continues with
--resume. At the end, records modified since the backfill started are queued for the real-time
service (catch-up), so an older backfill page is never the last write. It can run beside
`streamsync run`.
"""

EPILOG = """\
examples:
  python -m streamsync.backfill --config config.toml
  python -m streamsync.backfill --config config.toml --objects Lead --since 2024-01-01
  python -m streamsync.backfill --config config.toml --dry-run payloads.jsonl
  python -m streamsync.backfill --config config.toml --resume

exit status: 0 done (or already finished), 1 failed, e.g. Iterable unreachable or its key
refused (the message says what to do; resume with --resume), 2 usage or configuration error,
130 interrupted by Ctrl-C or SIGTERM (resume with --resume).
"""


def _date(text: str) -> datetime:
    """`2024-01-31` or an ISO 8601 date-time; without a timezone, UTC is assumed."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 date-time") from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _objects(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("--objects needs at least one object name")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsync backfill", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "-c", "--config", default=os.environ.get("STREAMSYNC_CONFIG", "config.toml"),
        help="path of config.toml (default: $STREAMSYNC_CONFIG or ./config.toml)")
    parser.add_argument(
        "--objects", type=_objects, default=(), metavar="Lead,Contact,Account",
        help="comma-separated objects to backfill (default: every configured object). An "
             "Account without a mapping of its own is backfilled as its Contacts, whose "
             "query reads the Account fields directly")
    parser.add_argument(
        "--since", type=_date, metavar="DATE",
        help="only records created at or after DATE (YYYY-MM-DD or ISO date-time, UTC unless "
             "a timezone is given; the field is backfill.window_field, CreatedDate by default)")
    parser.add_argument(
        "--until", type=_date, metavar="DATE",
        help="only records created before DATE (same format as --since)")
    parser.add_argument(
        "--where", metavar="SOQL",
        help="an extra SOQL filter for every selected object, e.g. \"LeadSource = 'Web'\" "
             "(comparisons, IN, LIKE, AND/OR/NOT only; combined with the object's configured "
             "filter)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true",
        help="continue the unfinished backfill of the same scope from its checkpoints; only "
             "the pages that were being written when it stopped are sent again (starts a new "
             "one when there is none)")
    mode.add_argument(
        "--restart", action="store_true",
        help="start over, even if the same backfill finished or stopped half-way")
    parser.add_argument(
        "--dry-run", type=Path, metavar="FILE",
        help="read and map the records, write the Iterable payloads to FILE as JSON lines "
             "({object, id, payload} or {object, id, error}); nothing is sent to Iterable and "
             "no checkpoint is kept")
    parser.add_argument(
        "--parallel", type=_positive, metavar="N",
        help="CreatedDate windows per object and windows read at once "
             "(default: backfill.parallel, 4; at most 25)")
    parser.add_argument(
        "--api", choices=("rest", "bulk"),
        help="rest: REST query pages of 2,000 records; bulk: Bulk API 2.0 query jobs of 50,000 "
             "records, for very large objects (default: backfill.api, rest)")
    parser.add_argument(
        "--no-catch-up", dest="catch_up", action="store_false",
        help="do not queue the records modified during the backfill for the real-time service "
             "(only when no service runs and nothing changes meanwhile)")
    parser.add_argument(
        "--json", action="store_true",
        help="print the final summary as one JSON object on stdout")
    parser.add_argument(
        "--log-level", type=str.lower, choices=("debug", "info", "warning", "error"),
        help="log level of the structured logs on stderr (default: warning)")
    parser.add_argument(
        "--log-json", action="store_true",
        help="log JSON lines even on a terminal (the default off a terminal)")
    return parser


def options_from(args: argparse.Namespace) -> BackfillOptions:
    """The BackfillOptions of parsed arguments."""
    return BackfillOptions(
        objects=tuple(args.objects), since=args.since, until=args.until, where=args.where,
        resume=args.resume, restart=args.restart, dry_run=args.dry_run, parallel=args.parallel,
        api=args.api, catch_up=args.catch_up)


async def run_backfill(config_path: str, options: BackfillOptions, *,
                       env: Mapping[str, str] | None = None,
                       progress: ConsoleProgress | None = None) -> BackfillSummary:
    """Load the config, open the clients and the store, run the backfill, close everything."""
    config = load_config(config_path, os.environ if env is None else env)
    async with open_components(config) as parts:
        if options.dry_run is None:
            await check_iterable(parts.iterable, config.iterable.base_url)
        backfill = Backfill(config=config, store=parts.store, salesforce=parts.salesforce,
                            pipeline=parts.pipeline, metrics=parts.metrics,
                            progress=progress or ConsoleProgress(), clock=parts.clock,
                            mappings=parts.mappings)
        return await backfill.run(options)


async def check_iterable(iterable: IterableClient, base_url: str) -> None:
    """One getFields call before anything is read: a refused key or an Iterable that does not
    answer stops the run before it starts (WritesFailed, saying what to do)."""
    for attempt in range(1, KEY_CHECK_ATTEMPTS + 1):
        try:
            await iterable.get_fields()
            return
        except AuthError as exc:
            raise key_refused(exc) from exc
        except RetriableError as exc:
            if attempt == KEY_CHECK_ATTEMPTS:
                raise unreachable(exc, base_url, "Iterable does not answer") from exc
            await asyncio.sleep(0.5 * attempt)


class Terminated(Exception):
    """SIGTERM arrived: the run was cancelled like a Ctrl-C."""


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m streamsync.backfill` and `streamsync backfill`."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(args.log_level or "warning", json=True if args.log_json else None)
    try:
        options = options_from(args)
        summary = asyncio.run(until_terminated(run_backfill(args.config, options)))
    except (ConfigError, BackfillError) as exc:
        sys.stderr.write(redactor().text(f"streamsync backfill: {exc}\n"))
        return EXIT_USAGE
    except WritesFailed as exc:
        sys.stderr.write(redactor().text(
            f"streamsync backfill: stopped: {exc}\nwhat to do: {exc.advice}\n"))
        return EXIT_FAILED
    except StreamsyncError as exc:
        sys.stderr.write(redactor().text(
            f"streamsync backfill: failed: {exc}\n(the checkpoints are kept: run again with "
            "--resume to continue)\n"))
        return EXIT_FAILED
    except (KeyboardInterrupt, Terminated) as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        sys.stderr.write(f"streamsync backfill: {how} (the checkpoints are kept: run again "
                         "with --resume to continue)\n")
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(orjson.dumps(summary.to_dict()).decode() + "\n")
        sys.stdout.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
