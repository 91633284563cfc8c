"""One store interface: every public operation of the SQLite store is part of `StoreAPI`, and
the PostgreSQL store implements each with the same signature, so the runtime can be given
either (docs/design.md §1.6)."""

from __future__ import annotations

import inspect

from streamsync.adapters.store import Store, StoreAPI
from streamsync.adapters.store.postgres import PostgresStore

# Backend-specific: how each is opened, and SQLite's file path.
NOT_IN_THE_INTERFACE = {"open", "path"}


def _public(cls: type) -> dict[str, object]:
    return {name: member for name, member in inspect.getmembers(cls)
            if not name.startswith("_") or name in ("__aenter__", "__aexit__")}


def _signature(member: object) -> str:
    if isinstance(member, property):
        return "property"
    return str(inspect.signature(member))  # type: ignore[arg-type]


def test_every_sqlite_operation_is_in_the_interface() -> None:
    missing = set(_public(Store)) - set(_public(StoreAPI)) - NOT_IN_THE_INTERFACE
    assert not missing, f"add these to StoreAPI (and to PostgresStore): {sorted(missing)}"


def test_both_backends_implement_the_whole_interface_with_the_same_signatures() -> None:
    api = {name: member for name, member in _public(StoreAPI).items()
           if name in _public(Store) or isinstance(member, property)}
    for backend in (Store, PostgresStore):
        members = _public(backend)
        gaps = sorted(set(api) - set(members))
        assert not gaps, f"{backend.__name__} lacks {gaps}"
        differ = {name: (_signature(api[name]), _signature(members[name])) for name in api
                  if _signature(api[name]) != _signature(members[name])}
        assert not differ, f"{backend.__name__}: {differ}"
