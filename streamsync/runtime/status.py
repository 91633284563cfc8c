"""`status` and `dlq list`: the store's state as plain JSON-able data (streamsync/cli/status.py
and streamsync/cli/dlq.py show it as tables)."""

from __future__ import annotations

from collections.abc import Mapping
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
        configured = {config.channel(name): name for name in config.cdc_objects()}
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
