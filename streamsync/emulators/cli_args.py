"""Argument types and start-up errors shared by the emulators' command lines: a bad value or a
port that cannot be bound is one line naming the option, exit 2, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the option and the problem), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def port(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    value = whole_number(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535 (0 picks a free port), got {value}")
    return value


def count(text: str) -> int:
    """A whole number that is zero or more (seed counts, limits)."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative, got {value}")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def non_negative(text: str) -> float:
    """A number of milliseconds or seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"cannot be negative, got {text}")
    return value


def cannot_listen(prog: str, host: str, port_: int, exc: OSError) -> int:
    """Print why the server could not bind, naming --host/--port; returns the exit code."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    print(f"{prog}: error: --port {port_}: cannot listen on {host}:{port_}: {reason}",
          file=sys.stderr)
    return EXIT_USAGE
