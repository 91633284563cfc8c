"""The durable store: work queue, replay ids, dead letters, identities, backfill checkpoints.

`StoreAPI` is the interface; `Store` the SQLite backend, `postgres.PostgresStore` the PostgreSQL
one (imported from `streamsync.adapters.store.postgres`, so SQLite users never load its driver).
"""

from __future__ import annotations

from .backfill_lease import Participant, ParticipantState, WindowClaim
from .base import Synchronous
from .budget import BudgetUse, Drawer, DrawerIdentity
from .budget_plan import Booking, ClaimRequest, DrawerKind
from .consent_inbox import ConsentEventRow
from .interface import StoreAPI, collect_status
from .mapping_state import read_applied_mappings, read_payload_hashes
from .schema import LATEST_VERSION, MIGRATIONS, Migration, migrate, schema_version
from .store import Store
from .types import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    SOURCES,
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
    ResyncState,
    SettleResult,
    StoreStatus,
    UnsyncedChange,
    WorkerInfo,
)

__all__ = [
    "LATEST_VERSION",
    "LEASE_EXPIRED",
    "MIGRATIONS",
    "RETRIES_EXHAUSTED",
    "SOURCES",
    "AckResult",
    "AppliedMapping",
    "BackfillRun",
    "BackfillWindow",
    "Backoff",
    "Booking",
    "BudgetUse",
    "ChannelAnchor",
    "ChannelLease",
    "ConsentRow",
    "ConsentEventRow",
    "Checkpoint",
    "ClaimRequest",
    "DeadLetter",
    "Drawer",
    "DrawerIdentity",
    "DrawerKind",
    "ErrorEntry",
    "Failure",
    "Identity",
    "IdentityHandover",
    "IdentityUpdate",
    "Lease",
    "LeaseGrant",
    "ListBackfillState",
    "ListMember",
    "ListMemberWant",
    "Migration",
    "Participant",
    "ParticipantState",
    "PendingReconcile",
    "QueueInput",
    "QueueStats",
    "ReplayState",
    "ResyncState",
    "SettleResult",
    "Store",
    "StoreAPI",
    "StoreStatus",
    "UnsyncedChange",
    "Synchronous",
    "WorkerInfo",
    "collect_status",
    "WindowClaim",
    "migrate",
    "read_applied_mappings",
    "read_payload_hashes",
    "schema_version",
]
