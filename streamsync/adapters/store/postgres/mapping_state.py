"""The mapping last applied per object and the re-syncs under way, on PostgreSQL (see
streamsync/adapters/store/mapping_state.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..mapping_state import RESYNC_COLUMNS, _applied, _dump, _resync
from ..types import AppliedMapping, ResyncPhase, ResyncState
from .base import Connection, PgBase, rows_affected

C = 'COLLATE "C"'


class MappingStateOps(PgBase):
    """`mapping_applied` (one row per object) and `resync` (one row per object re-syncing)."""

    async def applied_mappings(self) -> dict[str, AppliedMapping]:
        """The mapping last applied, by object."""
        async with self._read("applied_mappings") as conn:
            rows = await conn.fetch(
                "SELECT object_name, fingerprint, description, applied_at FROM mapping_applied "
                f"ORDER BY object_name {C}")
        return {str(r[0]): _applied(tuple(r)) for r in rows}

    async def set_applied_mapping(self, object_name: str, fingerprint: str,
                                  description: dict[str, Any], now: float) -> None:
        """Record `fingerprint` as applied and drop a re-sync towards that same fingerprint."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO mapping_applied (object_name, fingerprint, description, applied_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (object_name) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, description = excluded.description, "
                "applied_at = excluded.applied_at",
                object_name, fingerprint, _dump(description), now)
            await conn.execute("DELETE FROM resync WHERE object_name = $1 AND fingerprint = $2",
                               object_name, fingerprint)

        await self._write("set_applied_mapping", body)

    async def resyncs(self) -> dict[str, ResyncState]:
        """Every re-sync under way, by object."""
        async with self._read("resyncs") as conn:
            rows = await conn.fetch(f"SELECT {RESYNC_COLUMNS} FROM resync ORDER BY object_name {C}")
        return {str(r[0]): _resync(tuple(r)) for r in rows}

    async def start_resync(self, object_name: str, fingerprint: str,
                           description: dict[str, Any], clears: Sequence[str],
                           now: float) -> ResyncState:
        """Owe a re-sync of `object_name` towards `fingerprint` from its first record (one
        towards another fingerprint is replaced; its clears are kept)."""

        async def body(conn: Connection) -> list[str]:
            kept_text = await conn.fetchval(
                "SELECT clears FROM resync WHERE object_name = $1 FOR UPDATE", object_name)
            kept = json.loads(kept_text) if kept_text is not None else []
            merged = sorted(set(kept) | set(clears))
            await conn.execute(
                f"INSERT INTO resync ({RESYNC_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, 'sync', NULL, 0, 0, 0, $5, $5) "
                "ON CONFLICT (object_name) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "description = excluded.description, clears = excluded.clears, "
                "phase = 'sync', last_id = NULL, records_read = 0, records_written = 0, "
                "records_out_of_scope = 0, started_at = excluded.started_at, "
                "updated_at = excluded.updated_at",
                object_name, fingerprint, _dump(description), _dump(merged), now)
            return merged

        merged = await self._write("start_resync", body)
        return ResyncState(object_name, fingerprint, description, tuple(merged), "sync", None,
                           0, 0, 0, now, now)

    async def save_resync_progress(self, object_name: str, fingerprint: str, *,
                                   phase: ResyncPhase, last_id: str | None, read: int,
                                   written: int, out_of_scope: int, now: float) -> bool:
        """Checkpoint a re-sync (counts are added); False when it was replaced meanwhile."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "UPDATE resync SET phase = $1, last_id = $2, records_read = records_read + $3, "
                "records_written = records_written + $4, "
                "records_out_of_scope = records_out_of_scope + $5, updated_at = $6 "
                "WHERE object_name = $7 AND fingerprint = $8",
                phase, last_id, read, written, out_of_scope, now, object_name, fingerprint))

        return await self._write("save_resync_progress", body) > 0
