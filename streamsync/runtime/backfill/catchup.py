"""The catch-up: after the windows, records that may have changed since a page read them are
queued for the real-time flusher, which writes their latest state last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from streamsync.config import Config
from streamsync.core.sf_time import sf_datetime
from streamsync.logs import get_logger
from streamsync.runtime.backfill.options import READS
from streamsync.runtime.backfill.plan import ObjectPlan, iso
from streamsync.runtime.backfill.read import Page
from streamsync.runtime.backfill.tasks import gather_or_first_error
from streamsync.runtime.progress import Progress
from streamsync.runtime.reconcile import Reconciler

log = get_logger(__name__)

CATCH_UP_MARGIN_S = 15.0
"""The catch-up looks this far before the run's start. SystemModstamp is Salesforce's clock
when a save ran, whole seconds; a save becomes visible to queries only at its commit, after its
triggers (Apex allows 10 s of CPU per synchronous save), and this host's clock may differ from
Salesforce's by a second or two. A change stamped earlier than this margin before the start
was committed, and so read by the backfill's pages, before the run began."""
SEEN_GUARD_S = 2.0
"""A record read with a SystemModstamp at least this long before its page's query counts as
read in its latest state: a later save gets a later stamp (whole seconds, plus clock skew)."""
MAX_SEEN = 500_000
"""Records remembered for the catch-up (about 150 bytes each); beyond, they are re-queued."""


class CatchUp:
    """Remembers what pages read (`remember`), then reconciles the run's objects from its start
    minus CATCH_UP_MARGIN_S (`run`), skipping records read in their latest state."""

    def __init__(self, *, config: Config, reconciler: Reconciler, progress: Progress) -> None:
        self.config = config
        self.reconciler = reconciler
        self.progress = progress
        self._from: float | None = None
        # (object, Id) -> SystemModstamp of records read in their latest state
        self._seen: dict[tuple[str, str], float] = {}

    def start(self, run_started_s: float | None) -> None:
        """Begin remembering for a run that started at `run_started_s` (None: no catch-up)."""
        self._seen = {}
        self._from = None if run_started_s is None else run_started_s - CATCH_UP_MARGIN_S

    def remember(self, object_name: str, page: Page) -> None:
        """Note the records of a page the catch-up need not queue: those changed within its
        look-back (so it finds them) but read in their latest state (stamped well before the
        page's query). Older ones it does not find; others it queues."""
        since = self._from
        if since is None:
            return
        latest = page.read_at - SEEN_GUARD_S
        for record in page.records:
            stamp = sf_datetime(record.get("SystemModstamp"))
            if stamp is None or not since <= stamp.timestamp() <= latest:
                continue
            if len(self._seen) >= MAX_SEEN:
                log.info("backfill.catch_up_memory_full", remembered=MAX_SEEN)
                self._from = None
                return
            self._seen[(object_name, record["Id"])] = stamp.timestamp()  # read.py entered()

    def targets(self, scope: Mapping[str, Any], plans: Sequence[ObjectPlan]) -> list[str]:
        """The objects read, those the scope named, and those that fan out into them."""
        targets = [p.object_name for p in plans]
        targets += [name for name in scope.get("objects", []) if name not in targets]
        for name, obj in self.config.objects.items():
            if name not in targets and any(f.object in targets for f in obj.fan_out):
                targets.append(name)
        return targets

    async def run(self, scope: Mapping[str, Any], plans: Sequence[ObjectPlan], *,
                  since_s: float) -> int:
        """Enqueue (source 'catchup') the records of the run's objects that may have changed
        after the backfill read them, deleted ones included (queryAll), so the real-time flusher
        writes their latest state last: every record whose SystemModstamp is at or after the
        run start minus CATCH_UP_MARGIN_S, except those a page read with that same
        SystemModstamp (already written, skipped or dead-lettered in that state). Objects that
        only fan out (Account) are enqueued too: the flusher fans their changes out to Contacts.

        It is a reconciliation (`Reconciler.reconcile`): no filter is applied, so a record that
        left the filter or --where while the backfill ran, and that a page may have written,
        reaches the flusher, which re-reads it and applies the filter and delete policy."""
        counts = await gather_or_first_error(
            [self._object(name, since_s) for name in self.targets(scope, plans)])
        during = sum(c[0] for c in counts)
        before = sum(c[1] for c in counts)
        if during or before:
            self.progress.caught_up(during, before, CATCH_UP_MARGIN_S)
        since = datetime.fromtimestamp(since_s - CATCH_UP_MARGIN_S, UTC)
        log.info("backfill.catch_up", records=during + before, modified_during=during,
                 modified_before=before, since=iso(since))
        return during + before

    async def _object(self, name: str, started_s: float) -> tuple[int, int]:
        """(records queued that were modified since `started_s`, records queued before it)."""
        counts = [0, 0]

        def select(row: Mapping[str, Any]) -> bool:
            stamp = sf_datetime(row.get("SystemModstamp"))
            moment = stamp.timestamp() if stamp is not None else started_s
            deleted = bool(row.get("IsDeleted"))
            # reconcile.py _rows hands over each valid Id in its 18-character form
            if not deleted and self._seen.get((name, str(row.get("Id")))) == moment:
                return False
            counts[0 if moment >= int(started_s) else 1] += 1  # stamps may be whole seconds
            return True

        await self.reconciler.reconcile(
            name, int(started_s * 1000), trigger="catchup", margin_s=CATCH_UP_MARGIN_S,
            source="catchup", extra_fields=("SystemModstamp",), select=select,
            retry=READS)
        return counts[0], counts[1]
