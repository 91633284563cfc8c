"""`status` and `dlq list`: the store's state as plain JSON-able data, and as readable tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from streamsync.adapters.iterable import FAILURE_LISTS, RECORD_REASONS
from streamsync.adapters.store import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    Checkpoint,
    DeadLetter,
    Store,
    StoreStatus,
)
from streamsync.config import Config
from streamsync.logs import redactor
from streamsync.models import DeadLetterReason

MAX_WINDOWS_SHOWN = 10
MAX_CELL_CHARS = 120
KNOWN_DEAD_LETTER_REASONS: frozenset[str] = frozenset(
    {value for name, value in vars(DeadLetterReason).items()
     if name.isupper() and isinstance(value, str)}
    | set(RECORD_REASONS.values()) | {reason for _, reason in FAILURE_LISTS.values()}
    | {LEASE_EXPIRED, RETRIES_EXHAUSTED, "rejected", "not_found"})
"""Reason codes streamsync writes (Iterable may name others: any reason present is valid too)."""


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time (second precision), or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(seconds: float | None) -> str:
    """A short human duration: `42s`, `3m 12s`, `5h 01m`, `3d 4h`; `-` for None."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600}h"


def _clean(value: Any) -> Any:
    """Mask any configured secret in strings, recursively (status output is often pasted)."""
    if isinstance(value, str):
        return redactor().text(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _channels(status: StoreStatus, config: Config | None, now: float) -> list[dict[str, Any]]:
    by_channel = {r.channel: r for r in status.replays}
    configured: dict[str, str] = {}
    if config is not None:
        configured = {config.channel(name): name for name in config.objects}
    out = []
    for channel in sorted(set(by_channel) | set(configured)):
        state = by_channel.get(channel)
        last_ms = state.last_commit_ts_ms if state else None
        last_s = None if last_ms is None else last_ms / 1000.0
        out.append({
            "channel": channel,
            "object": configured.get(channel),
            "configured": channel in configured,
            "replay_id": state.replay_id if state else None,
            "last_event_at": iso(last_s),
            "last_event_age_s": None if last_s is None else round(max(0.0, now - last_s), 3),
            "updated_at": iso(state.updated_at) if state else None,
        })
    return out


def _window(cp: Checkpoint) -> dict[str, Any]:
    return {
        "object": cp.window.object_name,
        "start": cp.window.window_start,
        "end": cp.window.window_end,
        "last_id": cp.last_id,
        "records_done": cp.records_done,
        "done": cp.done,
        "updated_at": iso(cp.updated_at),
    }


def _backfill(status: StoreStatus) -> dict[str, Any] | None:
    run = status.backfill_run
    if run is None:
        return None
    windows = [_window(cp) for cp in status.backfill_windows]
    return {
        "run_id": run.run_id,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "finished": run.finished,
        "options": dict(run.options),
        "windows_total": len(windows),
        "windows_done": sum(1 for w in windows if w["done"]),
        "records_done": sum(int(w["records_done"]) for w in windows),
        "windows": windows,
    }


def status_dict(status: StoreStatus, config: Config | None, now: float) -> dict[str, Any]:
    """Everything `status --json` prints; secrets masked, times as ISO UTC strings."""
    q = status.queue
    data: dict[str, Any] = {
        "generated_at": iso(now),
        "store": None,
        "queue": {
            "depth": q.depth,
            "due": q.due,
            "leased": q.leased,
            "retrying": q.retrying,
            "oldest_age_s": None if q.oldest_age_s is None else round(q.oldest_age_s, 3),
            "by_object": dict(sorted(status.queue_by_object.items())),
        },
        "channels": _channels(status, config, now),
        "dead_letters": {
            "total": sum(status.dead_letters_by_reason.values()),
            "by_reason": dict(sorted(status.dead_letters_by_reason.items())),
        },
        "recent_errors": [
            {"at": iso(e.at), "component": e.component, "message": e.message}
            for e in status.recent_errors
        ],
        "backfill": _backfill(status),
    }
    if config is not None:
        data["store"] = config.queue.path
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


async def read_status(store: Store, config: Config | None, now: float,
                      errors: int = 10, runs: int = 5) -> dict[str, Any]:
    """Read the store and shape it with `status_dict`, plus the `runs` latest backfill runs."""
    data = status_dict(await store.status(now, errors=errors), config, now)
    data["backfill_runs"] = _clean([
        {"run_id": run.run_id, "started_at": iso(run.started_at),
         "finished_at": iso(run.finished_at), "options": dict(run.options)}
        for run in await store.runs(limit=runs)])
    return data


# ---------------------------------------------------------------- human output


def _cell(value: Any, max_chars: int | None) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max_chars - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
          max_cell: int | None = MAX_CELL_CHARS) -> str:
    """Left-aligned columns separated by two spaces, with a header underline; cells longer
    than `max_cell` characters are cut (None: never)."""
    cells = [[_cell(v, max_cell) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in cells)
    return "\n".join(lines)


def render_status(data: Mapping[str, Any]) -> str:
    """The human view of a `status_dict`."""
    q = data["queue"]
    parts = [f"streamsync status at {data['generated_at']}"
             + (f" (store {data['store']})" if data.get("store") else "")]
    oldest = "" if q["oldest_age_s"] is None else f", oldest item {age(q['oldest_age_s'])} old"
    parts.append(f"\nQueue: {q['depth']} record(s){oldest}; {q['due']} due, {q['leased']} "
                 f"leased, {q['retrying']} in backoff")
    if q["by_object"]:
        parts.append(table(["object", "queued"], sorted(q["by_object"].items())))
    parts.append("\nChannels:")
    channels = data["channels"]
    if channels:
        parts.append(table(
            ["channel", "object", "replay id", "last event (commit time)", "age"],
            [[c["channel"], c["object"] or "(not configured)",
              "(none: starts with new events)" if c["replay_id"] is None else c["replay_id"],
              c["last_event_at"], age(c["last_event_age_s"])] for c in channels]))
    else:
        parts.append("  (none)")
    dl = data["dead_letters"]
    parts.append(f"\nDead letters: {dl['total']}")
    if dl["by_reason"]:
        parts.append(table(["reason", "records"], sorted(dl["by_reason"].items())))
    parts.append("\nRecent errors:")
    if data["recent_errors"]:
        # Never cut: the end of a message is often what matters (the host:port refused).
        parts.append(table(["at", "component", "message"],
                           [[e["at"], e["component"], e["message"]]
                            for e in data["recent_errors"]], max_cell=None))
    else:
        parts.append("  (none)")
    parts.append("\nBackfill:")
    bf = data["backfill"]
    if bf is None:
        parts.append("  (never run)")
    else:
        state = f"finished {bf['finished_at']}" if bf["finished"] else "not finished"
        parts.append(f"  run {bf['run_id']} started {bf['started_at']}, {state}; "
                     f"{bf['windows_done']}/{bf['windows_total']} window(s) done, "
                     f"{bf['records_done']} record(s)")
        open_windows = [w for w in bf["windows"] if not w["done"]]
        if open_windows:
            shown = open_windows[:MAX_WINDOWS_SHOWN]
            parts.append(table(
                ["object", "window start", "window end", "last id", "records", "updated"],
                [[w["object"], w["start"], w["end"], w["last_id"], w["records_done"],
                  w["updated_at"]] for w in shown]))
            if len(open_windows) > len(shown):
                parts.append(f"  ... and {len(open_windows) - len(shown)} more open window(s)")
    earlier = list(data.get("backfill_runs") or [])[1:]
    if earlier:
        parts.append("  earlier runs:")
        parts.append(table(["run", "started", "finished"],
                           [[r["run_id"], r["started_at"], r["finished_at"] or "(not finished)"]
                            for r in earlier]))
    return "\n".join(parts) + "\n"


def dead_letter_dict(dl: DeadLetter) -> dict[str, Any]:
    """One dead letter as JSON-able data (payload-free by construction)."""
    cleaned: dict[str, Any] = _clean({
        "object": dl.object_name,
        "record_id": dl.record_id,
        "change_type": dl.change_type,
        "reason": dl.reason,
        "last_error": dl.last_error,
        "attempts": dl.attempts,
        "first_failed_at": iso(dl.first_failed_at),
        "last_failed_at": iso(dl.last_failed_at),
    })
    return cleaned


def render_dead_letters(rows: Sequence[Mapping[str, Any]]) -> str:
    """The human view of `dead_letter_dict` rows."""
    if not rows:
        return "no dead letters\n"
    return table(
        ["object", "record id", "change", "reason", "attempts", "last failed", "last error"],
        [[r["object"], r["record_id"], r["change_type"], r["reason"], r["attempts"],
          r["last_failed_at"], r["last_error"]] for r in rows],
    ) + "\n"
