"""`python -m streamsync.backfill ARGS`: the same command as `streamsync backfill ARGS`
(streamsync/cli/backfill.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`streamsync backfill` with `argv` (default: this process's arguments)."""
    from streamsync.cli import main as cli_main

    return cli_main(["backfill", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
