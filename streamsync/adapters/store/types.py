"""Frozen value types that go in and out of the SQLite store."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamsync.retry import jitter

SOURCES = frozenset({"cdc", "reconcile", "fanout", "retry", "catchup"})
"""Why a queue row was (last) enqueued; stored in `queue.source`."""

LEASE_EXPIRED = "lease_expired"
"""Dead-letter reason of a record whose leases kept expiring (it crashes or hangs its flusher)."""

RETRIES_EXHAUSTED = "retries_exhausted"
"""Dead-letter reason of a record whose transient failures outlived `Backoff.max_attempts`."""


@dataclass(frozen=True, slots=True)
class QueueInput:
    """One record to (re)sync: which object, which Id, and what kind of change was seen."""

    object_name: str
    record_id: str
    change_type: str = "UPDATE"

    def __post_init__(self) -> None:
        for name in ("object_name", "record_id", "change_type"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"QueueInput.{name} must be a non-empty str, not {value!r}")


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """A record's stored consent state (table `consent_state`): opted out or not, when that was
    stated (epoch ms) and on which side (`salesforce` or `iterable`)."""

    object_name: str
    record_id: str
    opted_out: bool
    changed_at_ms: int
    origin: str

    def __post_init__(self) -> None:
        if self.origin not in ("salesforce", "iterable"):
            raise ValueError(f"ConsentRow.origin must be salesforce or iterable, not "
                             f"{self.origin!r}")


@dataclass(frozen=True, slots=True)
class UnsyncedChange:
    """What the store holds of a record's changes not yet synced: its queue row's version
    (0: no row) and earliest commit time, and whether it is dead-lettered."""

    version: int
    commit_ts_ms: int | None
    dead_lettered: bool


@dataclass(frozen=True, slots=True)
class Lease:
    """A queue row handed to one flusher until `lease_expires_at`; settle it with the same token.

    `commit_ts_ms` is the earliest Salesforce commit time the row covers (None when the row came
    from a reconcile, fan-out, catch-up or retry), for the commit-to-Iterable latency metric.
    """

    object_name: str
    record_id: str
    version: int
    change_type: str
    source: str
    attempts: int
    commit_ts_ms: int | None
    first_enqueued_at: float
    token: str
    lease_expires_at: float
    outage_retries: int = 0
    """Retries the row waited out because Salesforce or Iterable was down (never dead-letter)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One leased record that can never succeed as it is, with its reason and last error."""

    lease: Lease
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class AckResult:
    """What `ack` did: rows deleted, rows kept because a newer change arrived meanwhile, and
    stale dead letters of the acked records removed."""

    deleted: int
    kept: int
    dead_letters_cleared: int = 0


@dataclass(frozen=True, slots=True)
class SettleResult:
    """What `retry_later` / `dead_letter` did with the leases they were given.

    `stale` counts leases that no longer held their row (it was acked, or its lease expired and
    another flusher took it): those were left alone.
    """

    retried: int = 0
    dead_lettered: int = 0
    kept_newer: int = 0
    stale: int = 0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: delay = U(0, min(max_delay_s, base_s * 2**(n-1))).

    `n` is the number of failed attempts so far (1 after the first failure). Once `n` reaches
    `max_attempts` the record is dead-lettered as `retries_exhausted` instead. `rand` returns a
    float in [0, 1); inject a fixed one in tests.
    """

    base_s: float = 1.0
    max_delay_s: float = 300.0
    max_attempts: int = 12
    rand: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.max_delay_s < self.base_s:
            raise ValueError("Backoff needs 0 < base_s <= max_delay_s")
        if self.max_attempts < 1:
            raise ValueError("Backoff.max_attempts must be >= 1")

    def ceiling_s(self, attempts: int) -> float:
        """The upper bound of the delay after `attempts` failures."""
        exponent = min(max(attempts, 1) - 1, 62)
        return float(min(self.max_delay_s, self.base_s * (2.0**exponent)))

    def delay_s(self, attempts: int, retry_after_s: float | None = None) -> float:
        """The jittered delay after `attempts` failures, never below a server's Retry-After."""
        delay = jitter(self.ceiling_s(attempts), rand=self.rand)
        if retry_after_s is not None and retry_after_s > delay:
            delay = retry_after_s
        return delay


@dataclass(frozen=True, slots=True)
class ReplayState:
    """Where a CometD channel resumes: the opaque replay id (int or str, as stored)."""

    channel: str
    replay_id: int | str | None
    last_commit_ts_ms: int | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class IdentityUpdate:
    """What was last sent to Iterable for one Salesforce record."""

    object_name: str
    record_id: str
    iterable_email: str | None
    iterable_user_id: str | None
    payload_hash: str | None


@dataclass(frozen=True, slots=True)
class IdentityHandover:
    """One record's Iterable identity passed to another (a converted Lead's to its Contact)."""

    source_object: str
    source_id: str
    target_object: str
    target_id: str


@dataclass(frozen=True, slots=True)
class Identity:
    """A stored identity row: Salesforce Id -> Iterable key and the hash of the last payload."""

    object_name: str
    record_id: str
    iterable_email: str | None
    iterable_user_id: str | None
    payload_hash: str | None
    synced_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be synced; payload-free (reason and error text only)."""

    object_name: str
    record_id: str
    change_type: str
    reason: str
    last_error: str
    attempts: int
    first_failed_at: float
    last_failed_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue gauges: rows, rows due now, rows leased, rows in backoff, age of the oldest row."""

    depth: int
    due: int
    leased: int
    retrying: int
    oldest_age_s: float | None


@dataclass(frozen=True, slots=True)
class BackfillWindow:
    """One slice of a backfill: an object and a half-open range (opaque text, e.g. ISO dates)."""

    object_name: str
    window_start: str = ""
    window_end: str = ""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Progress of one backfill window: the last Id done (keyset pagination) and a count."""

    run_id: str
    window: BackfillWindow
    last_id: str | None
    records_done: int
    done: bool
    started_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class BackfillRun:
    """One backfill invocation and the options it was started with."""

    run_id: str
    started_at: float
    finished_at: float | None
    options: Mapping[str, Any]

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One line of the recent-errors ring shown by `status`."""

    at: float
    component: str
    message: str


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Everything `streamsync status` shows, read in one go from the store."""

    queue: QueueStats
    queue_by_object: Mapping[str, int]
    replays: tuple[ReplayState, ...]
    dead_letters_by_reason: Mapping[str, int]
    recent_errors: tuple[ErrorEntry, ...]
    backfill_run: BackfillRun | None
    backfill_windows: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class PendingReconcile:
    """A reconciliation owed for one object: from `since_ms` (None = everything), why, and a
    sequence number that grows with every scheduling (so a worker can tell a newer one)."""

    since_ms: int | None
    trigger: str
    seq: int = 0

    def merge(self, other: PendingReconcile) -> PendingReconcile:
        """The union of two owed reconciliations: the earlier start wins (None is earliest)."""
        if self.since_ms is None or other.since_ms is None:
            since = None
        else:
            since = min(self.since_ms, other.since_ms)
        triggers = dict.fromkeys([*self.trigger.split("+"), *other.trigger.split("+")])
        return PendingReconcile(since, "+".join(triggers), max(self.seq, other.seq) + 1)


AnchorState = Literal["anchored", "unanchored", "earliest"]


@dataclass(frozen=True, slots=True)
class ChannelAnchor:
    """Where a CDC channel's next subscription can replay from: `anchored` (a replay id is
    stored), `unanchored` since `since_ms` (subscribed with -1 and nothing stored since; None:
    since an unknown time), or `earliest` (first subscribed from the oldest retained event)."""

    state: AnchorState
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ListMemberWant:
    """A CampaignMember that should be subscribed to `list_id` under `email` (lower-case)."""

    member_id: str
    list_id: int
    email: str
    campaign_id: str
    person_id: str


@dataclass(frozen=True, slots=True)
class ListMember:
    """A `list_member` row: 'adding' (subscribe sent or about to be), 'in' (confirmed) or
    'out' (to be unsubscribed)."""

    member_id: str
    list_id: int
    email: str
    campaign_id: str
    person_id: str
    state: str
    seen_at: float


@dataclass(frozen=True, slots=True)
class ListBackfillState:
    """Where one Campaign's lists backfill is: `phase` 'members' (read up to `after_id`),
    'removals', or 'done'; counts of what it subscribed and unsubscribed."""

    campaign_id: str
    list_id: int
    started_at: float
    phase: str
    after_id: str | None = None
    subscribed: int = 0
    unsubscribed: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One `streamsync run` process of the worker registry (times in epoch seconds)."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None

    def is_stale(self, now: float, stale_after_s: float) -> bool:
        """No heartbeat for `stale_after_s` (crashed, hung or cut off), or stopped."""
        return self.stopped_at is not None or now - self.heartbeat_at > stale_after_s


@dataclass(frozen=True, slots=True)
class ChannelLease:
    """Leadership of one CDC channel: `holder` (None: released) until `expires_at`; `token` is
    the fencing token of the holder's writes."""

    channel: str
    holder: str | None
    token: int
    acquired_at: float
    expires_at: float
    failovers: int = 0

    def held_by(self, now: float) -> str | None:
        """The worker leading the channel at `now`, or None (released or expired)."""
        return self.holder if self.holder is not None and self.expires_at > now else None


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """An acquired channel lease: its fencing token, and the holder whose lease had run out
    unreleased (a failover), if any."""

    channel: str
    token: int
    expires_at: float
    took_over_from: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedMapping:
    """The sync description of one object that the store last finished applying, and its
    fingerprint (streamsync/core/fingerprint.py)."""

    object_name: str
    fingerprint: str
    description: Mapping[str, Any]
    applied_at: float


ResyncPhase = Literal["sync", "out_of_scope"]


@dataclass(frozen=True, slots=True)
class ResyncState:
    """A re-sync of one object towards `fingerprint`: its phase, keyset position and counts.

    `clears`: targets sent as null while it runs (dropped from the mapping); `phase` `sync`
    walks the records the filter selects, `out_of_scope` those it leaves out."""

    object_name: str
    fingerprint: str
    description: Mapping[str, Any]
    clears: tuple[str, ...]
    phase: ResyncPhase
    last_id: str | None
    records_read: int
    records_written: int
    records_out_of_scope: int
    started_at: float
    updated_at: float
