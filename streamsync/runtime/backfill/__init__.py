"""Backfill: keyset-paged full records in parallel CreatedDate windows, through the pipeline.

plan.py (objects, windows, counts), read.py (REST and Bulk readers), write.py (the write
engine), window.py (one window: reader, writer, checkpoints), catchup.py (the closing
reconciliation), run.py (the orchestrating `Backfill`), summary.py (the typed result).
"""

from streamsync.errors import BackfillError, WritesFailed
from streamsync.runtime.backfill.catchup import CATCH_UP_MARGIN_S, MAX_SEEN, SEEN_GUARD_S
from streamsync.runtime.backfill.options import Api, BackfillOptions, key_refused, unreachable
from streamsync.runtime.backfill.plan import ObjectPlan, split_windows
from streamsync.runtime.backfill.run import Backfill
from streamsync.runtime.backfill.summary import BackfillSummary
from streamsync.runtime.backfill.window import PageHook
from streamsync.runtime.backfill.write import RecordSink, SyncResult

__all__ = [
    "CATCH_UP_MARGIN_S", "MAX_SEEN", "SEEN_GUARD_S", "Api", "Backfill", "BackfillError",
    "BackfillOptions", "BackfillSummary", "ObjectPlan", "PageHook", "RecordSink", "SyncResult",
    "WritesFailed", "key_refused", "unreachable", "split_windows",
]
