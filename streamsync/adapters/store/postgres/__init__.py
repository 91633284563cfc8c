"""The store on PostgreSQL: the same interface and semantics as the SQLite store, shared by
several processes."""

from __future__ import annotations

from .base import probe, redacted_url, translate
from .schema import LATEST_VERSION, MIGRATIONS, migrate, schema_version
from .store import PostgresStore

__all__ = ["LATEST_VERSION", "MIGRATIONS", "PostgresStore", "migrate", "probe", "redacted_url",
           "schema_version", "translate"]
