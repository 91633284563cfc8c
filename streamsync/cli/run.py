"""`streamsync run`: the service, until SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from streamsync.cli.exit_codes import EXIT_INTERRUPTED, exit_code_of
from streamsync.cli.options import (
    Subparsers,
    add_command,
    config_path,
    load,
    setup_command_logging,
)


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    add_command(subparsers, "run", help_text="run the sync service until SIGTERM",
                description="Subscribe to Change Data Capture and keep Iterable in step until "
                            "SIGTERM (systemd: Type=notify, WatchdogSec honoured). SIGHUP "
                            "(systemctl reload) applies a changed [objects] section of the "
                            "config without dropping the subscription; see `plan`.",
                handler=run, log_level="info")


def run(args: argparse.Namespace) -> int:
    config = load(args, require_secrets=True)
    setup_command_logging(args, "info", config)
    # Imported by name: the service wiring is only loaded (and type-checked) where it runs.
    run_service: Callable[..., int] = importlib.import_module("streamsync.runtime.app").run_service
    watchdog = os.environ.get("WATCHDOG_USEC")
    try:
        code = run_service(
            config,
            notify_socket=os.environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(watchdog) if watchdog and watchdog.isdigit() else None,
            config_path=Path(config_path(args)).resolve(),
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return exit_code_of(int(code))
