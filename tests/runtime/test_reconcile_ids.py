"""Reconciliation rows get their 18-character Id once, as they enter (runtime/reconcile.py
`_rows`): what it queues and what a `select` sees is that form. The emulator only sends
18-character ids, so a stand-in Salesforce sends the 15-character ones here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from streamsync.adapters.salesforce import QueryPage
from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.core.ids import to_18
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.reconcile import Reconciler

SHORT = "00QM000000qfPyS"
FULL = "00QM000000qfPyTMAU"


class _RowsOnce:
    """Answers one query with `rows` (the shape SalesforceClient.query yields)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def query(self, soql: str, include_deleted: bool = False
                    ) -> AsyncIterator[QueryPage]:
        yield QueryPage(records=self.rows, total_size=len(self.rows), done=True)


async def test_reconciled_ids_are_queued_and_selected_in_the_18_character_form(
        config: Config, store: Store) -> None:
    rows = [{"Id": SHORT, "IsDeleted": False}, {"Id": FULL, "IsDeleted": True},
            {"Id": None}]
    seen: list[Any] = []

    def select(row: Mapping[str, Any]) -> bool:
        seen.append(row.get("Id"))
        return True

    reconciler = Reconciler(config=config, store=store, salesforce=_RowsOnce(rows),  # type: ignore[arg-type]
                            metrics=Metrics())
    queued = await reconciler.reconcile("Lead", None, trigger="test", select=select)

    assert queued == 2
    assert seen == [to_18(SHORT), FULL, None]
    leases = await store.lease("test", 100, 60.0, time.time() + 1)
    assert sorted(lease.record_id for lease in leases) == sorted([to_18(SHORT), FULL])
