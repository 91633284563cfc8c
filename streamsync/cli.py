"""The `streamsync` command line: run, check-config, status, dlq, replay, backfill, demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from importlib import metadata
from typing import Any, Final, TextIO

import orjson

from streamsync.adapters.store import Store
from streamsync.config import Config, load_config
from streamsync.errors import ConfigError, StreamsyncError
from streamsync.logs import redactor, setup_logging
from streamsync.retry import Policy
from streamsync.runtime.check_config import CheckReport, check_config
from streamsync.runtime.clients import build_salesforce_client, salesforce_session
from streamsync.runtime.status import (
    KNOWN_DEAD_LETTER_REASONS,
    dead_letter_dict,
    iso,
    read_status,
    render_dead_letters,
    render_status,
    table,
)

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

REPLAY_EARLIEST: Final = -2
REPLAY_NEW: Final = -1
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
CONFIG_ENV: Final = "STREAMSYNC_CONFIG"
DEFAULT_CONFIG: Final = "config.toml"
ADMIN_LOG_LEVEL: Final = "warning"
"""Commands other than `run` log warnings and errors only, so their output stays readable."""
DEFAULT_LOG_LEVELS: Final = {"run": "info", "check-config": "error"}
"""`run` starts at info (then [logging].level); check-config prints its warnings itself."""

# Commands whose arguments belong to another module's own parser: `main(argv) -> int`.
DELEGATED: Final[dict[str, str]] = {"backfill": "streamsync.backfill", "demo": "streamsync.demo"}

class UsageError(StreamsyncError):
    """The command line is wrong (exit 2), e.g. an unknown channel or a bad --from value."""


# ---------------------------------------------------------------- output helpers


def _out(text: str, stream: TextIO | None = None) -> None:
    """Print command output with every configured secret masked."""
    (stream or sys.stdout).write(redactor().text(text))
    (stream or sys.stdout).flush()


def _err(message: str) -> None:
    _out(f"streamsync: {message.rstrip()}\n", sys.stderr)


def _json(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def _version() -> str:
    try:
        return metadata.version("streamsync")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# ---------------------------------------------------------------- parser


def _logging_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Subcommands repeat the options with SUPPRESS defaults so `streamsync --log-level debug run`
    # and `streamsync run --log-level debug` both work and neither resets the other.
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=default,
                        help="log level (default: [logging].level for `run`, else warning)")
    parser.add_argument("--log-json", action="store_true", default=False if top else default,
                        help="log JSON lines even on a terminal (the default off a terminal)")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="PATH",
        default=os.environ.get(CONFIG_ENV, DEFAULT_CONFIG),
        help=f"config file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="streamsync",
        description="Keeps Iterable user profiles in step with Salesforce Leads, Contacts and "
                    "Accounts, in real time (Change Data Capture) and by backfill.",
        epilog="Exit codes: 0 ok, 1 problems found or a remote failure, 2 usage or config "
               "error. Secrets come from the environment (STREAMSYNC_SF_CLIENT_SECRET, "
               "STREAMSYNC_ITERABLE_API_KEY, ...) or $CREDENTIALS_DIRECTORY, never from the "
               "config file.")
    parser.add_argument("--version", action="version", version=f"streamsync {_version()}")
    _logging_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        _logging_options(p, top=False)
        return p

    p = command("run", "run the sync service until SIGTERM",
                "Subscribe to Change Data Capture and keep Iterable in step until SIGTERM "
                "(systemd: Type=notify, WatchdogSec honoured).")
    _config_option(p)

    p = command("check-config", "validate the config against Salesforce and Iterable",
                "Load the config and its secrets, log in to Salesforce, check every mapped "
                "field, relationship, filter field and fan-out against the objects' describes, "
                "and try the Iterable API key. Prints every problem at once; exit 1 if any.")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("status", "show queue, replay ids, dead letters, errors and backfill progress",
                "Read the store (safe while the service runs): queue depth and oldest item, "
                "depth per object, replay id and last event time per channel, dead letters by "
                "reason, recent errors, the latest backfill run and its checkpoints.")
    _config_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--errors", type=_positive_int, default=10, metavar="N",
                   help="recent errors to show (default 10)")

    p = command("dlq", "list, retry or purge dead letters",
                "Records that could not be synced as they are (no e-mail, type conflict, ...).")
    dlq = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    d = dlq.add_parser("list", help="list dead letters, most recent first",
                       description="List dead letters, most recently failed first.")
    _logging_options(d, top=False)
    _config_option(d)
    d.add_argument("--reason", help="only this reason (e.g. invalid_email, type_mismatch)")
    d.add_argument("--limit", type=_positive_int, default=50, metavar="N",
                   help="at most N rows (default 50)")
    d.add_argument("--json", action="store_true", help="machine-readable JSON")
    d = dlq.add_parser("retry", help="re-queue dead letters (after fixing a mapping or data)",
                       description="Move dead letters back to the queue; the running service "
                                   "re-reads each record from Salesforce and syncs it.")
    _logging_options(d, top=False)
    _config_option(d)
    d.add_argument("--reason", help="only this reason")
    d = dlq.add_parser("purge", help="delete dead letters for good",
                       description="Delete dead letters without syncing them.")
    _logging_options(d, top=False)
    _config_option(d)
    d.add_argument("--reason", help="only this reason")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = command("replay", "choose where a channel resumes, or recover from an outage",
                "Set where the next `run` resumes a CDC channel: a replay id, `earliest` "
                "(everything Salesforce still retains, up to 72 h) or `new` (only new events). "
                "With an ISO 8601 timestamp, every record modified since then is queued "
                "(a reconciliation) and the channel resumes with new events: the way back "
                "from an outage longer than the 72 h event retention. Stop the service first: "
                "a running service keeps writing its own replay ids.")
    _config_option(p)
    p.add_argument("--channel", required=True, help="a configured channel, e.g. "
                                                    "/data/LeadChangeEvent")
    p.add_argument("--from", dest="start", required=True, metavar="FROM",
                   help="a replay id, `earliest`, `new`, or a timestamp such as "
                        "2026-01-02T03:04:05Z (a zone is required; a bare date means UTC)")

    sub.add_parser("backfill", add_help=False, help="bulk-load existing records "
                   "(`streamsync backfill --help` for its options)")
    sub.add_parser("demo", add_help=False, help="run the sync against local emulators "
                   "(`streamsync demo --help`: --duration S, --keep-running)")
    return parser


# ---------------------------------------------------------------- shared steps


def _load(args: argparse.Namespace, *, require_secrets: bool) -> Config:
    return load_config(args.config, os.environ, require_secrets=require_secrets)


def _setup_logging(level: str | None, json_flag: bool, config: Config | None = None,
                   default: str = ADMIN_LOG_LEVEL) -> None:
    if level is None:
        level = config.logging.level.lower() if config is not None else default
    use_json: bool | None = True if json_flag else None
    if config is not None and not json_flag and config.logging.format != "auto":
        use_json = config.logging.format == "json"
    setup_logging(level, json=use_json)


async def _open_store(config: Config, *, create: bool) -> Store:
    return await Store.open(config.queue.path, create=create)


# ---------------------------------------------------------------- commands


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args, require_secrets=True)
    report = asyncio.run(check_config(config))
    if args.json:
        _out(_json(report.as_dict()))
    else:
        _out(_render_check(report))
    if not report.ok:
        _err(f"check-config: {len(report.problems)} problem(s) found in {args.config}")
        return EXIT_PROBLEMS
    return EXIT_OK


def _render_check(report: CheckReport) -> str:
    lines = [f"ok       {line}" for line in report.passed]
    lines += [f"warning  {line}" for line in report.warnings]
    lines += [f"skipped  {line}" for line in report.skipped]
    if report.problems:
        lines.append(f"\n{len(report.problems)} problem(s):")
        lines.append(table(["where", "path", "problem"],
                           [[p.subject or p.component, p.path, p.message]
                            for p in report.problems], max_cell=None))
    else:
        lines.append("configuration ok")
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args, require_secrets=False)

    async def go() -> int:
        store = await _open_store(config, create=False)
        try:
            data = await read_status(store, config, time.time(), errors=args.errors)
        finally:
            await store.close()
        _out(_json(data) if args.json else render_status(data))
        return EXIT_OK

    return asyncio.run(go())


def cmd_dlq(args: argparse.Namespace) -> int:
    config = _load(args, require_secrets=False)
    action: Callable[[argparse.Namespace, Store], Coroutine[Any, Any, int]] = {
        "list": _dlq_list, "retry": _dlq_retry, "purge": _dlq_purge,
    }[args.dlq_command]

    async def go() -> int:
        store = await _open_store(config, create=False)
        try:
            if args.reason is not None:
                await _check_reason(args.dlq_command, args.reason, store)
            return await action(args, store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _check_reason(action: str, reason: str, store: Store) -> None:
    """A reason streamsync never writes and no dead letter has is a typo: name the known ones."""
    present = await store.dead_letter_counts()
    if reason in present or reason in KNOWN_DEAD_LETTER_REASONS:
        return
    now = ", ".join(f"{name} ({count})" for name, count in sorted(present.items())) or "none"
    raise UsageError(f"dlq {action}: unknown reason {reason!r}; known reasons: "
                     f"{', '.join(sorted(KNOWN_DEAD_LETTER_REASONS))}; present now: {now}")


async def _dlq_list(args: argparse.Namespace, store: Store) -> int:
    rows = [dead_letter_dict(dl) for dl in await store.dead_letters(args.reason, args.limit)]
    counts = await store.dead_letter_counts()
    total = counts.get(args.reason, 0) if args.reason is not None else sum(counts.values())
    if args.json:
        _out(_json({"total": total, "shown": len(rows), "reason": args.reason,
                    "dead_letters": rows}))
    else:
        _out(render_dead_letters(rows))
        if total > len(rows):
            _out(f"({len(rows)} of {total} shown; use --limit)\n")
    return EXIT_OK


def _selection(reason: str | None) -> str:
    return "dead letter(s)" + (f" with reason {reason!r}" if reason is not None else "")


async def _dlq_retry(args: argparse.Namespace, store: Store) -> int:
    moved = await store.retry_dead_letters(args.reason, time.time())
    _out(f"re-queued {moved} {_selection(args.reason)}; the service syncs them from the "
         "current Salesforce data\n")
    return EXIT_OK


async def _dlq_purge(args: argparse.Namespace, store: Store) -> int:
    counts = await store.dead_letter_counts()
    count = counts.get(args.reason, 0) if args.reason is not None else sum(counts.values())
    if count == 0:
        _out(f"no {_selection(args.reason)} to purge\n")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"dlq purge: would delete {count} {_selection(args.reason)}; "
                             "pass --yes to confirm (stdin is not a terminal)")
        question = f"Delete {count} {_selection(args.reason)} for good? [y/N] "
        answer = await asyncio.to_thread(input, question)
        if answer.strip().lower() not in ("y", "yes"):
            _out("nothing deleted\n")
            return EXIT_OK
    purged = await store.purge_dead_letters(args.reason)
    _out(f"purged {purged} {_selection(args.reason)}\n")
    return EXIT_OK


def parse_replay_start(value: str) -> int | str:
    """`earliest` → -2, `new` → -1, digits → that replay id; anything else is returned as the
    timestamp text (validated by the reconciler's parser)."""
    text = value.strip()
    lowered = text.lower()
    if lowered == "earliest":
        return REPLAY_EARLIEST
    if lowered == "new":
        return REPLAY_NEW
    if re.fullmatch(r"-?\d+", text) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        replay_id = int(text)
        if replay_id < REPLAY_EARLIEST:
            raise UsageError(f"--from {value!r}: a replay id is positive (or -1 = new, "
                             "-2 = earliest)")
        return replay_id
    return text


def _channel_objects(config: Config, channel: str) -> list[str]:
    bound = [name for name in config.objects if config.channel(name) == channel]
    if not bound:
        configured = sorted({config.channel(name) for name in config.objects})
        raise UsageError(f"--channel {channel!r} is not a configured channel; configured: "
                         f"{', '.join(configured)}")
    return bound


def cmd_replay(args: argparse.Namespace) -> int:
    start = parse_replay_start(args.start)
    if isinstance(start, int):
        config = _load(args, require_secrets=False)
        _channel_objects(config, args.channel)
        return asyncio.run(_replay_id(config, args.channel, start))
    from streamsync.runtime.reconcile import parse_timestamp_ms

    config = _load(args, require_secrets=True)
    objects = _channel_objects(config, args.channel)
    try:
        since_ms = parse_timestamp_ms(start)
    except ValueError as exc:
        raise UsageError(f"--from: {exc}; or use a replay id, `earliest` or `new`") from None
    if since_ms > time.time() * 1000:
        raise UsageError(f"--from {start!r} is in the future")
    return asyncio.run(_replay_since(config, args.channel, objects, since_ms))


async def _replay_id(config: Config, channel: str, replay_id: int) -> int:
    store = await _open_store(config, create=True)
    try:
        before = await store.get_replay(channel)
        await store.set_replay(channel, replay_id, time.time())
    finally:
        await store.close()
    label = {REPLAY_EARLIEST: "earliest (-2): every retained event",
             REPLAY_NEW: "new (-1): only events published from now on"}.get(
        replay_id, f"after replay id {replay_id}")
    previous = "none" if before is None or before.replay_id is None else before.replay_id
    _out(f"{channel}: the next `streamsync run` resumes from {label} (was: {previous})\n"
         "A service running now keeps its own position: restart it to apply this.\n")
    return EXIT_OK


async def _replay_since(config: Config, channel: str, objects: Sequence[str],
                        since_ms: int) -> int:
    from streamsync.runtime.metrics import Metrics
    from streamsync.runtime.reconcile import Reconciler

    store = await _open_store(config, create=True)
    try:
        async with salesforce_session(config) as session:
            salesforce = build_salesforce_client(
                config, session, retry=Policy(attempts=5, timeout_s=120.0))
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
        _out(f"{name}: queued {count} record(s) modified since {since} "
             f"(minus {config.ingest.reconcile_overlap_s:g} s overlap)\n")
    _out(f"{channel}: the next `streamsync run` syncs them and resumes with new events\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args, require_secrets=True)
    _setup_logging(args.log_level, args.log_json, config)
    # Imported by name: the service wiring is only loaded (and type-checked) where it runs.
    run_service: Callable[..., int] = importlib.import_module("streamsync.runtime.app").run_service
    watchdog = os.environ.get("WATCHDOG_USEC")
    try:
        return int(run_service(
            config,
            notify_socket=os.environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(watchdog) if watchdog and watchdog.isdigit() else None,
        ))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace], int]]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "status": cmd_status,
    "dlq": cmd_dlq,
    "replay": cmd_replay,
}


# ---------------------------------------------------------------- entry point


def _split_delegated(argv: Sequence[str]) -> tuple[list[str], str, list[str]] | None:
    """(global options, command, its own argv) when the command belongs to another parser."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i < len(argv) and argv[i] in DELEGATED:
        return list(argv[:i]), argv[i], list(argv[i + 1:])
    return None


def _delegate(command: str, argv: list[str]) -> int:
    module = importlib.import_module(DELEGATED[command])
    entry: Callable[[list[str]], int | None] = module.main
    result = entry(argv)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        delegated = _split_delegated(args_list)
        if delegated is not None:
            top, command, rest = delegated
            options = parser.parse_args(top)
            # The command sets up its own logging: hand it the global flags (its own, later
            # in the line, still win).
            forwarded = ["--log-level", options.log_level] if options.log_level else []
            forwarded += ["--log-json"] if options.log_json else []
            return _delegate(command, forwarded + rest)
        args = parser.parse_args(args_list)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _setup_logging(args.log_level, args.log_json,
                       default=DEFAULT_LOG_LEVELS.get(args.command, ADMIN_LOG_LEVEL))
        return COMMANDS[args.command](args)
    except SystemExit as exc:  # argparse (--help, --version, usage errors) or a delegate
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (ConfigError, UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except StreamsyncError as exc:
        _err(f"error: {exc}")
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
