"""The `streamsync` command line: one parser, one module per command (each adds its own
sub-parser and handler), one exit-code table (exit_codes.py), one time parser (timestamps.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from streamsync.cli import backfill, check_config, demo, dlq, plan, replay, run, status, store
from streamsync.cli.exit_codes import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    summary,
)
from streamsync.cli.options import add_global_options, setup_command_logging
from streamsync.cli.output import err
from streamsync.errors import ConfigError, StreamsyncError, UsageError

COMMANDS = (run, plan, backfill, replay, status, dlq, store, check_config, demo)
"""The command modules, in --help order; each has `add_parser(subparsers)`."""


def _version() -> str:
    try:
        return metadata.version("streamsync")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="streamsync",
        description="Keeps Iterable user profiles in step with Salesforce Leads, Contacts and "
                    "Accounts, in real time (Change Data Capture) and by backfill.",
        epilog=f"Exit codes: {summary()}. Secrets come from the environment "
               "(STREAMSYNC_SF_CLIENT_SECRET, STREAMSYNC_ITERABLE_API_KEY, ...) or "
               "$CREDENTIALS_DIRECTORY, never from the config file. Global options may come "
               "before or after the command.")
    parser.add_argument("--version", action="version", version=f"streamsync {_version()}")
    add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


_VALUED_OPTIONS = frozenset({"-c", "--config", "--log-level"})


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (global options and their values skipped)."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it). `plan`
    exits 2 for "changes pending" (cli/exit_codes.py), so its usage errors exit 1."""
    words = list(sys.argv[1:] if argv is None else argv)
    usage = EXIT_FAILED if _command_of(words) == "plan" else EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(words)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        setup_command_logging(args, args.default_log_level)
        code: int = args.handler(args)
        return code
    except SystemExit as exc:  # argparse: --help and --version exit 0, a usage error 2
        return EXIT_OK if exc.code in (0, None) else usage
    except (ConfigError, UsageError) as exc:
        err(str(exc))
        return usage
    except StreamsyncError as exc:
        err(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
