"""`streamsync demo` (`make demo`): the sync on the built-in emulators (streamsync/demo.py)."""

from __future__ import annotations

import argparse
import sys

from streamsync.cli.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from streamsync.cli.options import Subparsers, add_command, config_given
from streamsync.errors import UsageError


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    from streamsync import demo

    p = add_command(subparsers, "demo", help_text="run the sync against local emulators",
                    description=demo.__doc__ or "", handler=run,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of live changes (default 30)")
    p.add_argument("--keep-running", action="store_true",
                   help="keep the service running after the live changes")
    p.add_argument("--small", action="store_true",
                   help="a small seed (1,000 records) for a quick look or a test")


def run(args: argparse.Namespace) -> int:
    if config_given(args) is not None:
        raise UsageError("demo: --config does not apply: the demo writes its own config for "
                         "the emulators it starts")
    import uvloop

    from streamsync.demo import run_demo

    try:
        ok = uvloop.run(run_demo(args.duration, args.keep_running, args.small, sys.stdout))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK if ok else EXIT_FAILED
