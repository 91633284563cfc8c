"""`streamsync store migrate --to postgresql://…`: move the SQLite store to PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import time

from streamsync.cli.exit_codes import EXIT_OK
from streamsync.cli.options import Subparsers, add_command, add_global_options, load
from streamsync.cli.output import out, table
from streamsync.config import check_store_url
from streamsync.errors import UsageError
from streamsync.runtime.store_migrate import MigrateResult, migrate_store


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(subparsers, "store", help_text="move the store to PostgreSQL",
                    description="Operations on the store itself.", handler=run)
    actions = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    m = actions.add_parser(
        "migrate", help="copy the SQLite store into an empty PostgreSQL database",
        description="Copy every table of the SQLite store ([queue] path) into an empty "
                    "PostgreSQL database, in one transaction, and compare row counts. Stop the "
                    "service and any backfill first (a running service is refused). The "
                    "password comes from STREAMSYNC_STORE_PASSWORD (or its _FILE, the "
                    "credential store_password, PGPASSWORD), never from the URL. Then set "
                    "[store] url in config.toml and start the service: it resumes from the "
                    "stored replay ids.")
    add_global_options(m, top=False)
    m.add_argument("--to", required=True, metavar="URL", type=_target,
                   help="postgresql://user@host:port/database (no password)")


def _target(value: str) -> str:
    try:
        return check_store_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--to {exc}") from None


def render(result: MigrateResult) -> str:
    rows = [[name, f"{count:,}"] for name, count in sorted(result.rows.items())]
    return (f"copied {result.source} into {result.target}\n"
            + table(["table", "rows"], rows)
            + f"\n{result.total:,} rows in {len(result.rows)} tables, row counts verified.\n"
            f"Next: set [store] url = \"{result.target}\" in config.toml and start the "
            "service.\n")


def run(args: argparse.Namespace) -> int:
    if args.store_command != "migrate":  # pragma: no cover - argparse allows only migrate
        raise UsageError(f"unknown store action {args.store_command!r}")
    config = load(args, require_secrets=False)
    result = asyncio.run(migrate_store(config, args.to, now=time.time()))
    out(render(result))
    return EXIT_OK
