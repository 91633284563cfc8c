"""Durable SQLite store: work queue, replay ids, dead letters, identities, backfill checkpoints."""

from __future__ import annotations

from .base import Synchronous
from .consent_inbox import ConsentEventRow
from .schema import LATEST_VERSION, MIGRATIONS, Migration, migrate, schema_version
from .store import Store
from .types import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    SOURCES,
    AckResult,
    BackfillRun,
    BackfillWindow,
    Backoff,
    ChannelAnchor,
    Checkpoint,
    ConsentRow,
    DeadLetter,
    ErrorEntry,
    Failure,
    Identity,
    IdentityHandover,
    IdentityUpdate,
    Lease,
    PendingReconcile,
    QueueInput,
    QueueStats,
    ReplayState,
    SettleResult,
    StoreStatus,
)

__all__ = [
    "LATEST_VERSION",
    "LEASE_EXPIRED",
    "MIGRATIONS",
    "RETRIES_EXHAUSTED",
    "SOURCES",
    "AckResult",
    "BackfillRun",
    "BackfillWindow",
    "Backoff",
    "ChannelAnchor",
    "ConsentRow",
    "ConsentEventRow",
    "Checkpoint",
    "DeadLetter",
    "ErrorEntry",
    "Failure",
    "Identity",
    "IdentityHandover",
    "IdentityUpdate",
    "Lease",
    "Migration",
    "PendingReconcile",
    "QueueInput",
    "QueueStats",
    "ReplayState",
    "SettleResult",
    "Store",
    "StoreStatus",
    "Synchronous",
    "migrate",
    "schema_version",
]
