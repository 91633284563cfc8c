"""`StoreAPI`: the one store interface the runtime depends on (docs/design.md §1.6).

Two backends implement it with the same semantics: `Store` (one SQLite file, the embedded
default) and `PostgresStore` (a shared PostgreSQL database that several processes may use at
once). `tests/adapters/test_store_*.py` run against both. Every method takes the current time as
`now` (epoch seconds) instead of reading a clock; the semantics of each are documented on the
SQLite implementation (`queue.py`, `records.py`, `backfill.py`, `schedule.py`, `replay.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Self

from streamsync.models import EventCandidate

from .backfill_lease import Participant, ParticipantState, WindowClaim
from .budget import BudgetUse, DrawerIdentity
from .budget_plan import Booking, ClaimRequest
from .consent_inbox import ConsentEventRow, Via
from .event_backfill import Admitted, BackfillEvent
from .events import PendingEvent, StoredCondition
from .types import (
    AckResult,
    AppliedMapping,
    BackfillRun,
    BackfillWindow,
    Backoff,
    ChannelAnchor,
    ChannelLease,
    Checkpoint,
    ConsentRow,
    DeadLetter,
    ErrorEntry,
    Failure,
    Identity,
    IdentityHandover,
    IdentityUpdate,
    Lease,
    LeaseGrant,
    ListBackfillState,
    ListMember,
    ListMemberWant,
    PendingReconcile,
    QueueInput,
    QueueStats,
    ReplayState,
    ResyncPhase,
    ResyncState,
    SettleResult,
    StoreStatus,
    UnsyncedChange,
    WorkerInfo,
)


class StoreAPI(Protocol):
    """The durable state of the sync: queue, replay ids, identities, dead letters, backfill."""

    @property
    def location(self) -> str:
        """Where the store is, fit for logs (a file path, or a URL without any password)."""

    @property
    def shared(self) -> bool:
        """True when several processes may run the service on this store at once (PostgreSQL);
        False for SQLite, whose single owner holds an OS lock (`owner.py`)."""

    def file_problem(self) -> str | None:
        """None while the store is still the one opened; else what became of it."""

    async def close(self) -> None:
        """Close the store (idempotent); later calls raise FatalError."""

    async def __aenter__(self) -> Self:
        """Enter `async with`: the store itself (closed on exit)."""

    async def __aexit__(self, *exc_info: object) -> None:
        """Leave `async with`: close the store."""

    # -- queue and replay ids (invariants 1, 2, 10)

    async def record_event(self, channel: str, replay_id: str | int | None,
                           items: Sequence[QueueInput], commit_ts_ms: int | None,
                           now: float, events: Sequence[EventCandidate] = ()) -> None:
        """Enqueue the ids of one CDC event and store the channel's replay id, atomically;
        with the change's event-rule candidates (docs/events.md §4)."""

    async def enqueue(self, items: Sequence[QueueInput], now: float, source: str,
                      commit_ts_ms: int | None = None) -> int:
        """Enqueue records without a replay id (reconcile, fan-out, catch-up, retry)."""

    async def lease(self, owner: str, limit: int, lease_s: float, now: float,
                    objects: Sequence[str] | None = None,
                    max_attempts: int | None = None) -> list[Lease]:
        """Lease up to `limit` due rows, oldest first, until `now + lease_s`."""

    async def ack(self, leases: Sequence[Lease]) -> AckResult:
        """The sink confirmed these: delete each row whose version is still the leased one."""

    async def retry_later(self, leases: Sequence[Lease], error: str, now: float,
                          backoff: Backoff, retry_after_s: float | None = None) -> SettleResult:
        """A transient failure: attempts + 1 and a jittered backoff (at least `retry_after_s`)."""

    async def wait_out(self, leases: Sequence[Lease], error: str, now: float, backoff: Backoff,
                       retry_after_s: float | None = None,
                       until: float | None = None) -> SettleResult:
        """Salesforce or Iterable failed, not the records: outage_retries + 1, no attempt."""

    async def resume_waiting(self, now: float) -> int:
        """An outage ended: every unleased row waiting it out is due now."""

    async def dead_letter(self, leases: Sequence[Lease], reason: str, error: str,
                          now: float) -> SettleResult:
        """Poison records: move each to the dead-letter table if its version is unchanged."""

    async def dead_letter_each(self, failures: Sequence[Failure], now: float) -> SettleResult:
        """Like `dead_letter`, with a reason and error per record."""

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give leases back without penalty (shutdown); the rows are due again at once."""

    async def expire_leases(self, now: float) -> int:
        """End every live lease now (only for a new single owner of the store)."""

    async def queue_stats(self, now: float) -> QueueStats:
        """Depth, rows due now, rows under a live lease, rows in backoff, oldest row's age."""

    async def queue_depth_by_object(self) -> dict[str, int]:
        """Rows per Salesforce object."""

    async def next_due(self, objects: Sequence[str] | None = None) -> float | None:
        """The earliest `next_attempt_at` of a row of `objects` (None: any object)."""

    async def leased_elsewhere(self, object_name: str, owner: str, now: float) -> int:
        """Rows of `object_name` under a live lease whose owner is not `owner`."""

    async def get_replay(self, channel: str) -> ReplayState | None:
        """Where `channel` resumes, or None if nothing was ever recorded for it."""

    async def replays(self) -> list[ReplayState]:
        """Every channel's replay state, by channel name."""

    async def set_replay(self, channel: str, replay_id: str | int | None, now: float,
                         commit_ts_ms: int | None = None) -> None:
        """Set where `channel` resumes (the `replay` command); None forgets the replay id."""

    # -- dead letters, identities, errors, meta

    async def dead_letters(self, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """The most recently failed dead letters, optionally of one reason."""

    async def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by reason."""

    async def retry_dead_letters(self, reason: str | None, now: float) -> int:
        """Move dead letters (all, or one reason) back to the queue as source 'retry'."""

    async def add_dead_letters(self, object_name: str, dead: Mapping[str, tuple[str, str]],
                               now: float, change_type: str = "UPDATE") -> int:
        """Record `record id -> (reason, detail)` without a lease, one transaction."""

    async def clear_dead_letters(self, object_name: str, record_ids: Sequence[str]) -> int:
        """Drop the dead letters of records that have now synced, without a lease."""

    async def purge_dead_letters(self, reason: str | None) -> int:
        """Delete dead letters (all, or one reason) for good."""

    async def identities(self, object_name: str, ids: Sequence[str]) -> dict[str, Identity]:
        """Stored identities of these records of `object_name`, by record id."""

    async def save_identities(self, rows: Sequence[IdentityUpdate], now: float) -> None:
        """Record what was just sent to Iterable (after it confirmed)."""

    async def forget_identity(self, object_name: str, ids: Sequence[str]) -> int:
        """Drop identities (after the Iterable user was deleted); returns rows removed."""

    async def hand_over_identities(self, moves: Sequence[IdentityHandover], now: float, *,
                                   enqueue: bool = True) -> list[IdentityHandover]:
        """Pass identities from sources to targets holding none (converted Leads)."""

    async def find_by_email(self, email: str) -> list[Identity]:
        """Identities holding this Iterable email (case-insensitive)."""

    async def note_error(self, component: str, message: str, now: float) -> None:
        """Remember an error for `status` (secrets masked); the ring keeps the newest 200."""

    async def recent_errors(self, limit: int = 20) -> list[ErrorEntry]:
        """The newest errors first."""

    async def get_meta(self, key: str) -> str | None:
        """A small stored value."""

    async def set_meta(self, key: str, value: str, now: float) -> None:
        """Store a small value under `key`."""

    # -- backfill runs and checkpoints

    async def start_run(self, run_id: str, windows: Sequence[BackfillWindow],
                        options: Mapping[str, Any], now: float,
                        objects: Sequence[str] = ()) -> BackfillRun:
        """Create a run, its windows and the objects it loads in one transaction."""

    async def add_windows(self, run_id: str, windows: Sequence[BackfillWindow],
                          now: float) -> None:
        """Add windows to an existing run (windows already there are left as they are)."""

    async def windows(self, run_id: str) -> list[Checkpoint]:
        """Every window of a run with its progress, in a stable order."""

    async def save_checkpoint(self, run_id: str, window: BackfillWindow, last_id: str | None,
                              records_done: int, now: float) -> None:
        """Record that `window` is done up to `last_id` (inclusive)."""

    async def finish_window(self, run_id: str, window: BackfillWindow, now: float,
                            records_done: int | None = None) -> None:
        """Mark a window done (optionally with its final count)."""

    async def finish_run(self, run_id: str, now: float) -> None:
        """Mark the run finished (after its catch-up was enqueued)."""

    async def get_run(self, run_id: str) -> BackfillRun | None:
        """One run by id."""

    async def latest_run(self) -> BackfillRun | None:
        """The most recently started run, finished or not."""

    async def runs(self, limit: int = 10) -> list[BackfillRun]:
        """The most recently started runs first."""

    async def latest_backfill_starts(self) -> dict[str, float]:
        """Per object any backfill run loaded, the start time of the latest such run."""

    # -- owed reconciliations and channel anchors (invariant 6)

    async def set_reconcile_pending(self, object_name: str, since_ms: int | None, trigger: str,
                                    now: float) -> PendingReconcile:
        """Durably owe a reconciliation, merged with one already owed; returns what is owed."""

    async def reconcile_pending(self, object_name: str) -> PendingReconcile | None:
        """The reconciliation `object_name` owes, if any."""

    async def reconciles_pending(self) -> dict[str, PendingReconcile]:
        """Every owed reconciliation, by object."""

    async def clear_reconcile_pending(self, object_name: str, done: PendingReconcile) -> bool:
        """Drop the owed reconciliation if it is still exactly `done`."""

    async def channel_anchor(self, channel: str) -> ChannelAnchor | None:
        """The channel's anchor; None when it was never subscribed."""

    async def set_channel_anchor(self, channel: str, anchor: ChannelAnchor, now: float) -> None:
        """Store the channel's anchor."""

    # -- workers and channel leadership (docs/design.md §1.8, invariant 13)

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Add (or re-add) a worker to the registry."""

    async def heartbeat(self, worker_id: str, now: float) -> bool:
        """Refresh a worker's heartbeat; False when its row is gone (register again)."""

    async def worker_stopped(self, worker_id: str, now: float) -> None:
        """A clean stop: the worker is marked stopped and every lease it holds is released."""

    async def workers(self) -> list[WorkerInfo]:
        """Every registered worker, most recent heartbeat first."""

    async def forget_workers(self, stopped_before: float) -> int:
        """Drop registry rows of workers stopped (or silent) since before `stopped_before`."""

    async def reclaim_leases_of_gone_workers(self, now: float, stale_after_s: float) -> int:
        """End the queue leases of workers stopped or silent for `stale_after_s`."""

    async def channel_leases(self) -> list[ChannelLease]:
        """Every channel's lease row, by channel."""

    async def acquire_channel(self, channel: str, worker_id: str, ttl_s: float, now: float,
                              *, take_over: bool = False) -> LeaseGrant | None:
        """Take the channel's lease if it is free, with a new token; None while held."""

    async def renew_channel(self, channel: str, worker_id: str, token: int, ttl_s: float,
                            now: float) -> float | None:
        """Extend a lease still held with `token`; None when it moved on."""

    async def release_channel(self, channel: str, worker_id: str, token: int,
                              now: float) -> bool:
        """Give a lease up."""

    async def fenced_record_event(self, channel: str, token: int, replay_id: str | int | None,
                                  items: Sequence[QueueInput], commit_ts_ms: int | None,
                                  now: float, events: Sequence[EventCandidate] = ()) -> None:
        """`record_event`, refused (LeadershipLost) unless `token` is the channel's."""

    async def fenced_set_replay(self, channel: str, token: int, replay_id: str | int | None,
                                now: float) -> None:
        """`set_replay` (no commit time), fenced by `token`."""

    async def fenced_set_channel_anchor(self, channel: str, token: int, anchor: ChannelAnchor,
                                        now: float) -> None:
        """`set_channel_anchor`, fenced by `token`."""

    # -- consent state (docs/design.md §7)

    async def consent_states(self, object_name: str,
                             record_ids: Sequence[str]) -> dict[str, ConsentRow]:
        """The stored consent states of these records, by record id."""

    async def save_consent_states(self, rows: Sequence[ConsentRow], now: float) -> None:
        """Store these states as they are (the caller decided they prevail), one transaction."""

    async def note_consent_states(self, rows: Sequence[ConsentRow], now: float) -> int:
        """Store each state only where it supersedes the stored one."""

    async def unsynced_changes(self, object_name: str,
                               record_ids: Sequence[str]) -> dict[str, UnsyncedChange]:
        """The queue row and dead letter of each record that has either, by record id (the
        consent fast path's freshness check, runtime/consent_fast.py)."""

    # -- Campaign members as list subscribers, the lists backfill

    async def plan_list_members(self, member_ids: Sequence[str], wanted: Sequence[ListMemberWant],
                                now: float) -> tuple[list[ListMember], list[ListMember]]:
        """Rows not wanted any more become 'out', wanted ones 'adding' unless 'in'."""

    async def list_members_of(self, member_ids: Sequence[str]) -> list[ListMember]:
        """Every row of these CampaignMembers."""

    async def list_members_of_people(self, person_ids: Sequence[str]) -> list[ListMember]:
        """The rows that subscribe these Leads and Contacts (by 18-character Id)."""

    async def held_emails(self, list_id: int, emails: Iterable[str]) -> set[str]:
        """Which of `emails` some member still holds on the list ('adding' or 'in')."""

    async def confirm_list_members(self, rows: Sequence[ListMember]) -> None:
        """Iterable confirmed these subscriptions: 'adding' → 'in'."""

    async def drop_list_members(self, rows: Sequence[ListMember], *, state: str = "out") -> None:
        """Forget these rows if still in `state`."""

    async def list_member_rows(self, list_id: int) -> list[ListMember]:
        """Every row of a list (verification, status)."""

    async def retire_unseen_list_members(self, list_id: int, campaign_id: str, before: float,
                                         now: float) -> list[ListMember]:
        """Rows of the Campaign's list not seen since `before`."""

    async def list_backfill(self, campaign_id: str) -> ListBackfillState | None:
        """The checkpoint of one Campaign's lists backfill, if any."""

    async def save_list_backfill(self, state: ListBackfillState, now: float) -> None:
        """Write one Campaign's checkpoint (replacing the previous one)."""

    # -- the consent inbox and the export cursors

    async def add_consent_events(self, events: Sequence[ConsentEventRow], via: Via,
                                 now: float) -> int:
        """Commit events (one transaction); returns how many were new (not duplicates)."""

    async def add_exported_events(self, events: Sequence[ConsentEventRow], data_type: str,
                                  cursor_ms: int, now: float,
                                  fence: tuple[str, int] | None = None) -> int:
        """Commit one export window's events and move that data type's cursor to `cursor_ms`;
        with `fence` (lease, token), refused (LeadershipLost) unless the token is the lease's."""

    async def consent_cursor(self, data_type: str) -> int | None:
        """Where the export of `data_type` was read up to (epoch ms, exclusive), or None."""

    async def due_consent_events(self, now: float, limit: int = 1000) -> list[ConsentEventRow]:
        """Pending events whose next attempt is due, oldest event first."""

    async def next_consent_due(self) -> float | None:
        """When the next pending event is due (epoch seconds), or None when none is pending."""

    async def consent_events(self, keys: Sequence[str]) -> dict[str, ConsentEventRow]:
        """Stored events by key (any state)."""

    async def settle_consent_events(self, outcomes: dict[str, tuple[str, str]], now: float) -> None:
        """Settle events: key → (state 'done' or 'failed', outcome text)."""

    async def retry_consent_events(self, keys: Sequence[str], error: str, now: float,
                                   delay_s: float) -> None:
        """Leave events pending, due again after `delay_s`."""

    async def identities_for_users(self, emails: Sequence[str],
                                   user_ids: Sequence[str]) -> list[Identity]:
        """Identities whose Iterable email (case-insensitive) or userId is one of these."""

    async def consent_inbox_counts(self) -> dict[str, int]:
        """Events by state (pending, done, failed)."""

    async def prune_consent_events(self, settled_before: float) -> int:
        """Drop events settled before `settled_before` (their keys no longer dedupe)."""

    # -- the mapping applied per object and the re-syncs under way

    async def applied_mappings(self) -> dict[str, AppliedMapping]:
        """The mapping last applied, by object."""

    async def set_applied_mapping(self, object_name: str, fingerprint: str, description: dict[str,
                                  Any], now: float) -> None:
        """Record `fingerprint` as applied for `object_name` and drop its re-sync row, if the."""

    async def resyncs(self) -> dict[str, ResyncState]:
        """Every re-sync under way, by object."""

    async def start_resync(self, object_name: str, fingerprint: str, description: dict[str, Any],
                           clears: Sequence[str], now: float) -> ResyncState:
        """Owe a re-sync of `object_name` towards `fingerprint` from its first record."""

    async def save_resync_progress(self, object_name: str, fingerprint: str, *, phase: ResyncPhase,
                                   last_id: str | None, read: int, written: int, out_of_scope: int,
                                   now: float) -> bool:
        """Checkpoint a re-sync (counts are added); False when it was replaced meanwhile."""
    # -- custom events (docs/events.md §4; semantics on the SQLite `events.py`)

    async def lease_events(self, state: str, limit: int, lease_s: float, now: float
                           ) -> list[PendingEvent]:
        """Up to `limit` due event rows in `state` ('new' or 'ready'), in arrival order."""

    async def conditions(self, keys: Sequence[tuple[str, str]]
                         ) -> dict[tuple[str, str], StoredCondition]:
        """The stored condition state of (rule, record id) pairs."""

    async def settle_decisions(
        self, token: str, *, ready: Mapping[str, dict[str, Any]], skipped: Sequence[str],
        dead: Mapping[str, tuple[str, str]], later: Mapping[str, tuple[str, float]],
        states: Mapping[tuple[str, str], StoredCondition], now: float,
        held: Mapping[str, str] | None = None, held_until: float = 0.0,
    ) -> None:
        """Condition states saved and decided rows settled, in one transaction; ready rows
        named in `held` stay leased to the token given until `held_until`."""

    async def settle_sent(
        self, token: str, *, sent: Sequence[str], dead: Mapping[str, tuple[str, str]],
        later: Mapping[str, tuple[str, float]], waiting: Mapping[str, tuple[str, float]],
        now: float,
    ) -> None:
        """Rows settled after a trackBulk call."""

    async def release_events(self, token: str, now: float) -> None:
        """Rows still leased with `token` due again."""

    async def event_counts(self) -> dict[str, int]:
        """Event rows per state."""

    async def next_event_due(self, state: str) -> float | None:
        """When the earliest event row in `state` ('new' or 'ready') is due."""

    async def dead_events(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """(event id, reason, last error) of dead events, newest first."""

    async def prune_sent_events(self, before: float) -> int:
        """Forget sent event rows older than `before`."""

    # -- events of `backfill --events` (docs/events.md §7; semantics on `event_backfill.py`)

    async def add_backfill_events(self, events: Sequence[BackfillEvent], now: float
                                  ) -> Admitted:
        """Store the judged events the store does not know yet, seeding their conditions."""

    async def lease_backfill_events(self, limit: int, lease_s: float, now: float
                                    ) -> list[PendingEvent]:
        """Up to `limit` due ready rows of backfills, in arrival order."""

    async def backfill_events_waiting(self, rules: Sequence[str]) -> tuple[int, float | None]:
        """Ready backfill rows of `rules` not sent yet, and when the earliest is due."""

    # -- joint backfills: several processes on one run (docs/design.md §10.2)

    async def start_or_find_run(
        self, run_id: str, windows: Sequence[BackfillWindow], options: Mapping[str, Any],
        now: float, objects: Sequence[str] = (),
    ) -> tuple[BackfillRun, bool]:
        """The unfinished run of the same scope (False), or a new run (True), atomically."""

    async def join_run(self, run_id: str, me: Participant) -> None:
        """Register a process as a participant of a run."""

    async def run_participants(self, run_id: str) -> list[ParticipantState]:
        """Every process that worked on a run, in the order they joined."""

    async def claim_window(self, run_id: str, participant_id: str,
                           lease_s: float) -> WindowClaim:
        """Lease a window not done and not leased (or whose lease expired)."""

    async def renew_leases(self, run_id: str, participant_id: str, lease_s: float,
                           totals: Mapping[str, Any] | None = None) -> int:
        """Extend a participant's leases and save its counts; how many windows it holds."""

    async def save_leased_checkpoint(
        self, run_id: str, window: BackfillWindow, participant_id: str, last_id: str | None,
        records_done: int, lease_s: float, totals: Mapping[str, Any] | None = None,
        *, done: bool = False,
    ) -> None:
        """A checkpoint fenced by the window's lease (WindowTaken when another holds it)."""

    async def release_participant(self, run_id: str, participant_id: str,
                                  totals: Mapping[str, Any] | None = None) -> None:
        """A participant leaves: its leases are free at once."""

    async def claim_run_close(self, run_id: str, participant_id: str, lease_s: float) -> bool:
        """Become the participant that runs the catch-up and finishes the run."""

    async def finish_run_as(self, run_id: str, participant_id: str,
                            totals: Mapping[str, Any], now: float) -> None:
        """Finish the run and save the closer's counts in one transaction."""

    # -- the shared Iterable rate budget (docs/design.md §10.1)

    async def claim_slots(self, budget_key: str, drawer: DrawerIdentity,
                          req: ClaimRequest) -> Booking:
        """Book up to `req.want` send slots of a budget, atomically across processes."""

    async def leave_budget(self, budget_key: str, drawer_id: str) -> None:
        """Forget a drawer (its process stops drawing)."""

    async def budgets_in_use(self) -> list[BudgetUse]:
        """Every budget: its ceiling, the rate booked now and the processes drawing."""

    # -- the operator's view

    async def status(self, now: float, errors: int = 10) -> StoreStatus:
        """Queue, replay ids, dead letters, recent errors and the latest backfill."""


async def collect_status(store: StoreAPI, now: float, errors: int = 10) -> StoreStatus:
    """`status` of either backend: queue, replay ids, DLQ, errors, the latest backfill."""
    run = await store.latest_run()
    return StoreStatus(
        queue=await store.queue_stats(now),
        queue_by_object=await store.queue_depth_by_object(),
        replays=tuple(await store.replays()),
        dead_letters_by_reason=await store.dead_letter_counts(),
        recent_errors=tuple(await store.recent_errors(errors)),
        backfill_run=run,
        backfill_windows=tuple(await store.windows(run.run_id)) if run is not None else (),
    )
