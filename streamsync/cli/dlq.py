"""`streamsync dlq list|retry|purge`: dead letters."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from streamsync.adapters.store import StoreAPI
from streamsync.cli.exit_codes import EXIT_OK
from streamsync.cli.options import Subparsers, add_command, add_global_options, load, positive_int
from streamsync.cli.output import json_text, out, table
from streamsync.errors import UsageError
from streamsync.runtime.status import KNOWN_DEAD_LETTER_REASONS, dead_letter_dict
from streamsync.runtime.store_open import open_store


def add_parser(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    p = add_command(subparsers, "dlq", help_text="list, retry or purge dead letters",
                    description="Records that could not be synced as they are (no e-mail, "
                                "type conflict, ...).", handler=run)
    actions = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=description)
        add_global_options(parser, top=False)
        return parser

    d = action("list", "list dead letters, most recent first",
               "List dead letters, most recently failed first.")
    d.add_argument("--reason", help="only this reason (e.g. invalid_email, type_mismatch)")
    d.add_argument("--limit", type=positive_int, default=50, metavar="N",
                   help="at most N rows (default 50)")
    d.add_argument("--json", action="store_true", help="machine-readable JSON")
    d = action("retry", "re-queue dead letters (after fixing a mapping or data)",
               "Move dead letters back to the queue; the running service re-reads each record "
               "from Salesforce and syncs it.")
    d.add_argument("--reason", help="only this reason")
    d = action("purge", "delete dead letters for good", "Delete dead letters without syncing "
                                                         "them.")
    d.add_argument("--reason", help="only this reason")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    config = load(args, require_secrets=False)
    act: Callable[[argparse.Namespace, StoreAPI], Coroutine[Any, Any, int]] = {
        "list": _list, "retry": _retry, "purge": _purge,
    }[args.dlq_command]

    async def go() -> int:
        store = await open_store(config, create=False)
        try:
            if args.reason is not None:
                await _check_reason(args.dlq_command, args.reason, store)
            return await act(args, store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _check_reason(action: str, reason: str, store: StoreAPI) -> None:
    """A reason streamsync never writes and no dead letter has is a typo: name the known ones."""
    present = await store.dead_letter_counts()
    if reason in present or reason in KNOWN_DEAD_LETTER_REASONS:
        return
    now = ", ".join(f"{name} ({count})" for name, count in sorted(present.items())) or "none"
    raise UsageError(f"dlq {action}: unknown reason {reason!r}; known reasons: "
                     f"{', '.join(sorted(KNOWN_DEAD_LETTER_REASONS))}; present now: {now}")


async def _list(args: argparse.Namespace, store: StoreAPI) -> int:
    rows = [dead_letter_dict(dl) for dl in await store.dead_letters(args.reason, args.limit)]
    counts = await store.dead_letter_counts()
    total = counts.get(args.reason, 0) if args.reason is not None else sum(counts.values())
    if args.json:
        out(json_text({"total": total, "shown": len(rows), "reason": args.reason,
                       "dead_letters": rows}))
    else:
        out(render_dead_letters(rows))
        if total > len(rows):
            out(f"({len(rows)} of {total} shown; use --limit)\n")
    return EXIT_OK


def render_dead_letters(rows: Sequence[Mapping[str, Any]]) -> str:
    """The human view of `runtime.status.dead_letter_dict` rows."""
    if not rows:
        return "no dead letters\n"
    return table(
        ["object", "record id", "change", "reason", "attempts", "last failed", "last error"],
        [[r["object"], r["record_id"], r["change_type"], r["reason"], r["attempts"],
          r["last_failed_at"], r["last_error"]] for r in rows],
    ) + "\n"


def _selection(reason: str | None) -> str:
    return "dead letter(s)" + (f" with reason {reason!r}" if reason is not None else "")


async def _retry(args: argparse.Namespace, store: StoreAPI) -> int:
    moved = await store.retry_dead_letters(args.reason, time.time())
    out(f"re-queued {moved} {_selection(args.reason)}; the service syncs them from the "
        "current Salesforce data\n")
    return EXIT_OK


async def _purge(args: argparse.Namespace, store: StoreAPI) -> int:
    counts = await store.dead_letter_counts()
    count = counts.get(args.reason, 0) if args.reason is not None else sum(counts.values())
    if count == 0:
        out(f"no {_selection(args.reason)} to purge\n")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"dlq purge: would delete {count} {_selection(args.reason)}; "
                             "pass --yes to confirm (stdin is not a terminal)")
        question = f"Delete {count} {_selection(args.reason)} for good? [y/N] "
        answer = await asyncio.to_thread(input, question)
        if answer.strip().lower() not in ("y", "yes"):
            out("nothing deleted\n")
            return EXIT_OK
    purged = await store.purge_dead_letters(args.reason)
    out(f"purged {purged} {_selection(args.reason)}\n")
    return EXIT_OK
