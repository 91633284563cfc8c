"""Copying a SQLite store into an empty PostgreSQL store (`streamsync store migrate`).

Every table of the SQLite file is copied, row for row, in one PostgreSQL transaction (all or
nothing), with binary COPY in chunks so memory stays bounded whatever the size. Columns are
matched by name and converted to the PostgreSQL column's type (SQLite's 0/1 flags become
booleans; its replay id, an int or a text in one column, goes to `replay_id_int` or
`replay_id_text`). Identity columns PostgreSQL numbers itself (`backfill_run.seq`,
`error_log.id`) are filled in the SQLite rows' order, so "newest" stays newest. A SQLite table
or column the PostgreSQL schema lacks stops the copy before anything is written: nothing is
dropped silently. Before the commit, each table's row count is compared with the source's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamsync.errors import FatalError

from .base import Connection

CHUNK_ROWS = 5_000
# PostgreSQL numbers these itself (GENERATED ALWAYS AS IDENTITY); SQLite's rowid order is kept.
GENERATED = {("backfill_run", "seq"), ("error_log", "id")}
# Ordered like this so a row's foreign key target is copied before it.
FIRST = ("backfill_run",)
NOT_DATA = ("schema_version",)


@dataclass(frozen=True, slots=True)
class TablePlan:
    """How one SQLite table goes into PostgreSQL: its source columns and each target column's
    converter."""

    table: str
    source_columns: tuple[str, ...]
    target_columns: tuple[str, ...]
    convert: tuple[Callable[[Any], Any], ...]
    order_by: str


def _as(kind: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        if kind == "boolean":
            return bool(value)
        if kind in ("bigint", "integer", "smallint"):
            return int(value)
        if kind == "double precision":
            return float(value)
        return value if isinstance(value, str) else str(value)
    return convert


def open_snapshot(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite store holding one snapshot of the whole file."""
    if not path.is_file():
        raise FatalError(f"store migrate: {path} does not exist (is [queue] path right?)")
    try:
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise FatalError(f"store migrate: cannot read {path}: {exc}") from exc
    return source


def sqlite_tables(source: sqlite3.Connection) -> dict[str, list[str]]:
    """Table → its columns, in the SQLite file (its own bookkeeping tables left out)."""
    names = [str(r[0]) for r in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    return {name: [str(c[1]) for c in source.execute(f'PRAGMA table_info("{name}")')]
            for name in names}


def _without_rowid(source: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID%'")}


async def postgres_tables(conn: Connection) -> dict[str, dict[str, str]]:
    """Table → column → data type, in the PostgreSQL schema in use."""
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        out.setdefault(str(row[0]), {})[str(row[1])] = str(row[2])
    return out


def plan_copy(source: dict[str, list[str]], target: dict[str, dict[str, str]],
              without_rowid: frozenset[str] | set[str] = frozenset()) -> list[TablePlan]:
    """One plan per SQLite table; FatalError naming what PostgreSQL cannot hold."""
    problems: list[str] = []
    plans: list[TablePlan] = []
    for table in sorted(source, key=lambda t: (t not in FIRST, t)):
        columns = target.get(table)
        if columns is None:
            problems.append(f"table {table} (the PostgreSQL schema has no such table)")
            continue
        src: list[str] = []
        dst: list[str] = []
        conv: list[Callable[[Any], Any]] = []
        for column in source[table]:
            if table == "replay" and column == "replay_id":
                src += [column, column]
                dst += ["replay_id_int", "replay_id_text"]
                conv += [lambda v: v if isinstance(v, int) else None,
                         lambda v: None if v is None or isinstance(v, int) else str(v)]
            elif column in columns and (table, column) not in GENERATED:
                src.append(column)
                dst.append(column)
                conv.append(_as(columns[column]))
            elif (table, column) not in GENERATED:
                problems.append(f"column {table}.{column} (PostgreSQL has no such column)")
        order = "1" if table in without_rowid else "rowid"
        plans.append(TablePlan(table, tuple(src), tuple(dst), tuple(conv), order))
    if problems:
        raise FatalError("store migrate: the PostgreSQL schema cannot hold everything of the "
                         "SQLite store, nothing was copied: " + "; ".join(problems))
    return plans


def read_chunks(source: sqlite3.Connection, plan: TablePlan) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows converted for PostgreSQL, `CHUNK_ROWS` at a time, in source order."""
    columns = ", ".join(f'"{c}"' for c in dict.fromkeys(plan.source_columns))
    index = {c: i for i, c in enumerate(dict.fromkeys(plan.source_columns))}
    cursor = source.execute(f'SELECT {columns} FROM "{plan.table}" ORDER BY {plan.order_by}')
    while rows := cursor.fetchmany(CHUNK_ROWS):
        yield [tuple(convert(row[index[column]]) for column, convert
                     in zip(plan.source_columns, plan.convert, strict=True)) for row in rows]


async def target_counts(conn: Connection, tables: list[str]) -> dict[str, int]:
    """Rows per table in PostgreSQL."""
    return {t: int(await conn.fetchval(f'SELECT count(*) FROM "{t}"')) for t in tables}


async def copy_store(source: sqlite3.Connection, conn: Connection) -> dict[str, int]:
    """Copy every table of the SQLite snapshot `source` (`open_snapshot`) into the (empty,
    migrated) PostgreSQL schema of `conn`, inside the caller's transaction; returns rows per
    table. Reading `source` again gives the same rows (one snapshot), so a transaction
    PostgreSQL rolled back can run this again."""
    tables = sqlite_tables(source)
    target = await postgres_tables(conn)
    busy = {t: n for t, n in (await target_counts(
        conn, [t for t in target if t not in NOT_DATA])).items() if n}
    if busy:
        raise FatalError("store migrate: the PostgreSQL store is not empty ("
                         + ", ".join(f"{t}: {n} rows" for t, n in sorted(busy.items()))
                         + "); give it an empty database")
    plans = plan_copy(tables, target, _without_rowid(source))
    copied: dict[str, int] = {}
    for plan in plans:
        copied[plan.table] = 0
        for chunk in read_chunks(source, plan):
            await conn.copy_records_to_table(plan.table, records=chunk,
                                             columns=list(plan.target_columns))
            copied[plan.table] += len(chunk)
    expected = {t: int(source.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
                for t in tables}
    written = await target_counts(conn, list(expected))
    if written != expected or copied != expected:
        raise FatalError(f"store migrate: row counts differ after the copy (SQLite {expected}, "
                         f"PostgreSQL {written}); nothing was committed")
    return copied
