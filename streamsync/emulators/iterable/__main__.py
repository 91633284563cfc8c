"""Command line: serve the Iterable emulator and print one JSON line with base_url and api_key."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import orjson

from ..cli_args import OneLineParser, cannot_listen, count, non_negative, port
from .app import IterableEmulator
from .config import IterableEmulatorConfig

PROG = "python -m streamsync.emulators.iterable"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    p = OneLineParser(
        prog=PROG, description="Emulated Iterable API."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8002, help="0 picks a free port")
    p.add_argument("--project-type", choices=("email", "userId", "hybrid"), default="email")
    p.add_argument("--api-key", default=None, help="default: 32 random hex characters")
    p.add_argument("--latency-ms", type=non_negative, default=20.0)
    p.add_argument("--latency-per-user-ms", type=non_negative, default=0.0)
    p.add_argument("--lag-s", type=non_negative, default=0.0)
    p.add_argument("--bulk-lag-s", type=non_negative, default=None)
    p.add_argument("--single-lag-s", type=non_negative, default=None)
    p.add_argument("--no-rate-limits", action="store_true", help="start with every limit lifted")
    p.add_argument("--type-mismatch", choices=("per_user", "batch"), default="per_user")
    p.add_argument("--max-users-per-request", type=count, default=None)
    p.add_argument("--oversize-status", type=int, choices=(413, 400), default=413)
    p.add_argument("--no-history", action="store_true", help="do not keep per-user write history")
    p.add_argument("--webhook-url", default=None, help="where system webhooks are POSTed")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT; the exit code."""
    config = IterableEmulatorConfig(
        project_type=args.project_type,
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        latency_per_user_ms=args.latency_per_user_ms,
        lag_s=args.lag_s,
        bulk_lag_s=args.bulk_lag_s,
        single_lag_s=args.single_lag_s,
        rate_limits=not args.no_rate_limits,
        type_mismatch=args.type_mismatch,
        max_users_per_request=args.max_users_per_request,
        oversize_status=args.oversize_status,
        record_history=not args.no_history,
        webhook_url=args.webhook_url,
    )
    emu = IterableEmulator(config)
    try:
        await emu.start(args.host, args.port)
    except OSError as exc:
        await emu.stop()
        return cannot_listen(PROG, args.host, args.port, exc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    line = {
        "base_url": emu.base_url,
        "api_key": emu.api_key,
        "project_id": emu.project.id,
        "project_type": emu.project.project_type,
        "control_url": emu.control_url,
    }
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await emu.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code."""
    args = parse_args(argv)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve(args))
    except ValueError as exc:  # a combination of settings the emulator refuses
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
