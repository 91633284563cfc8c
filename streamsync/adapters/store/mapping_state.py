"""The mapping last applied per object, and the re-syncs under way (`mapping_applied`,
`resync`): what `streamsync plan` compares with and what `run` resumes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import StoreBase, translate
from .types import AppliedMapping, ResyncPhase, ResyncState

RESYNC_COLUMNS = ("object_name, fingerprint, description, clears, phase, last_id, records_read, "
                  "records_written, records_out_of_scope, started_at, updated_at")


def _applied(row: Sequence[Any]) -> AppliedMapping:
    return AppliedMapping(str(row[0]), str(row[1]), json.loads(row[2]), float(row[3]))


def _resync(row: Sequence[Any]) -> ResyncState:
    phase: ResyncPhase = "out_of_scope" if row[4] == "out_of_scope" else "sync"
    return ResyncState(str(row[0]), str(row[1]), json.loads(row[2]),
                       tuple(str(t) for t in json.loads(row[3])), phase,
                       None if row[5] is None else str(row[5]), int(row[6]), int(row[7]),
                       int(row[8]), float(row[9]), float(row[10]))


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class MappingStateOps(StoreBase):
    """`mapping_applied` (one row per object) and `resync` (one row per object re-syncing)."""

    async def applied_mappings(self) -> dict[str, AppliedMapping]:
        """The mapping last applied, by object."""
        async with self._read("applied_mappings") as conn:
            async with conn.execute(
                "SELECT object_name, fingerprint, description, applied_at FROM mapping_applied "
                "ORDER BY object_name") as cursor:
                return {str(r[0]): _applied(r) for r in await cursor.fetchall()}

    async def set_applied_mapping(self, object_name: str, fingerprint: str,
                                  description: dict[str, Any], now: float) -> None:
        """Record `fingerprint` as applied for `object_name` and drop its re-sync row, if the
        re-sync (if any) was towards that same fingerprint."""
        async with self._tx("set_applied_mapping") as conn:
            await conn.execute(
                "INSERT INTO mapping_applied (object_name, fingerprint, description, applied_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (object_name) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, description = excluded.description, "
                "applied_at = excluded.applied_at",
                (object_name, fingerprint, _dump(description), now))
            await conn.execute("DELETE FROM resync WHERE object_name = ? AND fingerprint = ?",
                               (object_name, fingerprint))

    async def resyncs(self) -> dict[str, ResyncState]:
        """Every re-sync under way, by object."""
        async with self._read("resyncs") as conn:
            async with conn.execute(
                    f"SELECT {RESYNC_COLUMNS} FROM resync ORDER BY object_name") as cursor:
                return {str(r[0]): _resync(r) for r in await cursor.fetchall()}

    async def start_resync(self, object_name: str, fingerprint: str,
                           description: dict[str, Any], clears: Sequence[str],
                           now: float) -> ResyncState:
        """Owe a re-sync of `object_name` towards `fingerprint` from its first record (one
        towards another fingerprint is replaced; its clears are kept)."""
        async with self._tx("start_resync") as conn:
            async with conn.execute("SELECT clears FROM resync WHERE object_name = ?",
                                    (object_name,)) as cursor:
                row = await cursor.fetchone()
            kept = json.loads(row[0]) if row is not None else []
            merged = sorted(set(kept) | set(clears))
            await conn.execute(
                f"INSERT OR REPLACE INTO resync ({RESYNC_COLUMNS}) "
                "VALUES (?, ?, ?, ?, 'sync', NULL, 0, 0, 0, ?, ?)",
                (object_name, fingerprint, _dump(description), _dump(merged), now, now))
        return ResyncState(object_name, fingerprint, description, tuple(merged), "sync", None,
                           0, 0, 0, now, now)

    async def save_resync_progress(self, object_name: str, fingerprint: str, *,
                                   phase: ResyncPhase, last_id: str | None, read: int,
                                   written: int, out_of_scope: int, now: float) -> bool:
        """Checkpoint a re-sync (counts are added); False when it was replaced meanwhile."""
        async with self._tx("save_resync_progress") as conn:
            cursor = await conn.execute(
                "UPDATE resync SET phase = ?, last_id = ?, records_read = records_read + ?, "
                "records_written = records_written + ?, "
                "records_out_of_scope = records_out_of_scope + ?, updated_at = ? "
                "WHERE object_name = ? AND fingerprint = ?",
                (phase, last_id, read, written, out_of_scope, now, object_name, fingerprint))
            return cursor.rowcount > 0


def _read_only(file: Path) -> sqlite3.Connection:
    """The store opened read-only. With no `-wal` file beside it (no process has it open, and
    its last one checkpointed) it is opened immutable, so SQLite creates no `-wal`/`-shm`
    either: reading leaves the directory exactly as it was."""
    quiet = "&immutable=1" if not Path(f"{file}-wal").exists() else ""
    return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro{quiet}", uri=True)


def read_payload_hashes(path: str | Path, object_name: str, ids: Sequence[str]
                        ) -> dict[str, str | None]:
    """Record id → the payload hash last confirmed, for the ids the identity table holds, from
    the store at `path` opened read-only; empty when there is no store."""
    file = Path(path)
    if not file.is_file() or not ids:
        return {}
    conn = _read_only(file)
    out: dict[str, str | None] = {}
    try:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            marks = ", ".join("?" * len(chunk))
            for record_id, digest in conn.execute(
                    "SELECT record_id, payload_hash FROM identity WHERE object_name = ? "
                    f"AND record_id IN ({marks})", (object_name, *chunk)):
                out[str(record_id)] = None if digest is None else str(digest)
    except sqlite3.Error as exc:
        raise translate(exc, f"reading {file}") from exc
    finally:
        conn.close()
    return out


def read_applied_mappings(path: str | Path) -> dict[str, AppliedMapping]:
    """`mapping_applied` of the store at `path`, opened read-only (nothing is created or
    migrated); empty when the file or the table does not exist."""
    file = Path(path)
    if not file.is_file():
        return {}
    conn = _read_only(file)
    try:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                             "AND name = 'mapping_applied'").fetchone()
        if found is None:
            return {}
        rows = conn.execute("SELECT object_name, fingerprint, description, applied_at "
                            "FROM mapping_applied").fetchall()
    except sqlite3.Error as exc:
        raise translate(exc, f"reading {file}") from exc
    finally:
        conn.close()
    return {str(r[0]): _applied(r) for r in rows}
