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
    BudgetUse,
    ChannelLease,
    Checkpoint,
    DeadLetter,
    StoreAPI,
    StoreStatus,
    WorkerInfo,
)
from streamsync.config import Config, WorkersConfig
from streamsync.logs import redactor
from streamsync.models import DeadLetterReason
from streamsync.runtime.store_open import store_location

STALE_AFTER_HEARTBEATS = 3
"""A worker silent for this many heartbeat periods is shown stale (runtime/leadership.py)."""

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
        data["store"] = store_location(config)
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def workers_list(workers: list[WorkerInfo], leases: list[ChannelLease], now: float,
                 stale_after_s: float) -> list[dict[str, Any]]:
    """Every registered worker: who it is, what it leads now, its last heartbeat, and its
    state (`live`, `stale`: silent for `stale_after_s`, or `stopped`)."""
    leads: dict[str, list[str]] = {}
    for lease in leases:
        holder = lease.held_by(now)
        if holder is not None:
            leads.setdefault(holder, []).append(lease.channel)
    return [{
        "worker_id": w.worker_id,
        "host": w.host,
        "pid": w.pid,
        "started_at": iso(w.started_at),
        "leads": sorted(leads.get(w.worker_id, [])),
        "last_heartbeat_at": iso(w.heartbeat_at),
        "heartbeat_age_s": round(max(0.0, now - w.heartbeat_at), 3),
        "state": ("stopped" if w.stopped_at is not None
                  else "stale" if w.is_stale(now, stale_after_s) else "live"),
    } for w in workers]


def budget_dict(use: BudgetUse, now: float) -> dict[str, Any]:
    """A shared Iterable rate budget in use: its ceiling, the rate booked now, who draws."""
    return {
        "budget": use.budget_key,
        "ceiling_per_s": use.ceiling_per_s,
        "drawing_per_s": round(use.drawing_per_s, 3),
        "used_fraction": round(use.used_fraction, 4),
        "drawers": [{"drawer_id": d.drawer_id, "kind": d.kind, "host": d.host, "pid": d.pid,
                     "rate_per_s": round(d.rate_per_s, 3),
                     "last_claim_age_s": round(max(0.0, now - d.last_claim_at), 3)}
                    for d in use.drawers],
    }


def _leaders(data: dict[str, Any], leases: list[ChannelLease], now: float) -> None:
    """Each channel's current leader (None: no worker holds it) and fencing token."""
    by_channel = {lease.channel: lease for lease in leases}
    for channel in data["channels"]:
        lease = by_channel.get(channel["channel"])
        channel["leader"] = None if lease is None else lease.held_by(now)
        channel["leader_token"] = None if lease is None else lease.token
        channel["failovers"] = 0 if lease is None else lease.failovers


async def read_status(store: StoreAPI, config: Config | None, now: float,
                      errors: int = 10, runs: int = 5) -> dict[str, Any]:
    """Read the store and shape it with `status_dict`, plus the `runs` latest backfill runs
    and the worker registry (each worker, the channels it leads)."""
    data = status_dict(await store.status(now, errors=errors), config, now)
    leases = await store.channel_leases()
    workers_conf = config.workers if config is not None else WorkersConfig()
    stale_after_s = workers_conf.heartbeat_s * STALE_AFTER_HEARTBEATS
    data["workers"] = _clean(workers_list(await store.workers(), leases, now, stale_after_s))
    _leaders(data, leases, now)
    data["rate_budgets"] = _clean([budget_dict(use, now) for use in await store.budgets_in_use()])
    data["backfill_runs"] = _clean([
        {"run_id": run.run_id, "started_at": iso(run.started_at),
         "finished_at": iso(run.finished_at), "options": dict(run.options)}
        for run in await store.runs(limit=runs)])
    data["mapping"] = await mapping_status(store)
    data["consent_inbox"] = await consent_inbox_status(store)
    return data


async def consent_inbox_status(store: StoreAPI) -> dict[str, Any]:
    """Iterable consent events by state (pending, done, failed) and how far the export poller
    has read each event type (`[consent_inbound]`, docs/design.md §7)."""
    cursors = {kind: await store.consent_cursor(kind)
               for kind in ("emailUnSubscribe", "emailSubscribe")}
    return {"by_state": await store.consent_inbox_counts(),
            "export_read_up_to": {k: iso(v / 1000) if v is not None else None
                                  for k, v in cursors.items()}}


async def mapping_status(store: StoreAPI) -> dict[str, Any]:
    """Per object the fingerprint last applied, and each re-sync under way (issue 15)."""
    applied = await store.applied_mappings()
    resyncs = await store.resyncs()
    cleaned: dict[str, Any] = _clean({
        "applied": {name: {"fingerprint": a.fingerprint[:12], "applied_at": iso(a.applied_at)}
                    for name, a in applied.items()},
        "resyncs": [{"object": r.object_name, "fingerprint": r.fingerprint[:12],
                     "phase": r.phase, "last_id": r.last_id, "records_read": r.records_read,
                     "records_written": r.records_written,
                     "records_out_of_scope": r.records_out_of_scope, "clears": list(r.clears),
                     "started_at": iso(r.started_at), "updated_at": iso(r.updated_at)}
                    for r in resyncs.values()],
    })
    return cleaned


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
