"""The write engine: a window's records to Iterable through the pipeline, in whole batches.

Pipeline calls are rate-limited by the pipeline's own limiter and retried under the `WRITES`
policy (the records Iterable did not take only); a call Iterable took nothing of then stops the
run (`WritesFailed`) before its checkpoint, while records still failing transiently after some
were taken go to the real-time queue so the checkpoint can move on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

import orjson

from streamsync.adapters.store import QueueInput, StoreAPI
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping, normalize_email
from streamsync.errors import AuthError, BackfillError, RecordError, RetriableError, WritesFailed
from streamsync.logs import get_logger
from streamsync.runtime.backfill.options import WRITES, key_refused, unreachable
from streamsync.runtime.backfill.summary import Totals
from streamsync.runtime.metrics import Metrics

log = get_logger(__name__)

SOURCE = "backfill"


class SyncResult(Protocol):
    """What `SyncPipeline.sync_records` returns (runtime/pipeline.py `SyncOutcome`)."""

    synced: list[str]
    skipped: list[str]
    dead: dict[str, tuple[str, str]]
    retry: dict[str, RetriableError]
    requests: int
    rate_limited: int


class RecordSink(Protocol):
    """The map → skip-unchanged → batch → write stage (runtime/pipeline.py `SyncPipeline`)."""

    async def sync_records(
        self, object_name: str, records: Sequence[dict[str, Any]], *, source: str,
        force: bool = False,
    ) -> SyncResult: ...


def _walk(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = record
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def sendable_check(config: Config, mapping: CompiledMapping, object_name: str
                   ) -> Callable[[Mapping[str, Any]], bool]:
    """A cheap guess whether a record becomes an Iterable write (its identity is there and
    valid, it is not a converted Lead that defers to its Contact), used only to fill
    batches: the pipeline still decides, so a wrong guess costs a partial batch."""
    needs_email = mapping.identity != "userId"
    needs_user_id = mapping.identity in ("userId", "both")
    email_keys = mapping.email_source.keys
    user_id_keys = mapping.user_id_source.keys
    defers = object_name == "Lead" and config.converted_precedence() == "contact"

    def check(record: Mapping[str, Any]) -> bool:
        if defers and record.get("IsConverted") and record.get("ConvertedContactId"):
            return False
        if needs_user_id and _walk(record, user_id_keys) in (None, ""):
            return False
        if needs_email:
            try:
                normalize_email(_walk(record, email_keys))
            except RecordError:
                return False
        return True

    return check


class Grouper:
    """Cuts a window's Id-ordered record stream into pipeline calls of `users` likely writes.

    Records carried over to the next call keep their place, so every call is a prefix of the
    rest of the window and its last Id is a valid keyset checkpoint. Each record is checked
    once, however many pages it waits for."""

    def __init__(self, users: int, sendable: Callable[[Mapping[str, Any]], bool]) -> None:
        self.users = users
        self.sendable = sendable
        self.buffer: list[dict[str, Any]] = []
        self._scanned = 0
        self._found = 0

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        self.buffer.extend(records)

    def take(self, final: bool) -> list[dict[str, Any]] | None:
        """The next call's records: `users` likely writes, or everything left when `final`."""
        buffer = self.buffer
        while self._found < self.users and self._scanned < len(buffer):
            if self.sendable(buffer[self._scanned]):
                self._found += 1
            self._scanned += 1
        if self._found >= self.users:
            cut = self._scanned
        elif final and buffer:
            cut = len(buffer)
        else:
            return None
        group = buffer[:cut]
        del buffer[:cut]
        self._scanned = self._found = 0
        return group


class WriteEngine:
    """Writes one call's records (a prefix of a window) and books what became of them; with
    `dry_out` set, writes each record's payload (or mapping error) there instead."""

    def __init__(self, *, config: Config, store: StoreAPI, pipeline: RecordSink | None,
                 metrics: Metrics, mappings: Mapping[str, CompiledMapping], totals: Totals,
                 clock: Callable[[], float] = time.time,
                 dry_out: IO[bytes] | None = None, dead_letters_exist: bool = True) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.metrics = metrics
        self.mappings = mappings
        self.totals = totals
        self.clock = clock
        self.dry_out = dry_out
        self.dead_letters_exist = dead_letters_exist

    async def write(self, object_name: str, records: list[dict[str, Any]]) -> None:
        """Send `records` (or dry-run them); returns once each is written, skipped, dead-
        lettered or queued for retry; raises WritesFailed when Iterable took none."""
        totals = self.totals
        totals.pages += 1
        if self.dry_out is not None:
            self._dry_run(object_name, records)
            return
        if self.pipeline is None:
            raise BackfillError("a backfill that writes to Iterable needs a pipeline")
        pending = records
        failing: RetriableError | None = None  # why `pending` is left after a call
        synced: list[str] = []
        dead: dict[str, tuple[str, str]] = {}

        async def call() -> None:
            nonlocal pending, failing
            assert self.pipeline is not None
            failing = None
            outcome = await self.pipeline.sync_records(object_name, pending, source=SOURCE)
            totals.requests += outcome.requests
            totals.rate_limited += outcome.rate_limited
            totals.written += len(outcome.synced)
            totals.skipped += len(outcome.skipped)
            synced.extend(outcome.synced)
            dead.update(outcome.dead)
            retry_ids = set(outcome.retry)
            pending = [r for r in pending if r["Id"] in retry_ids]
            if pending:
                failing = next(iter(outcome.retry.values()))
                raise failing  # only these records are sent again

        try:
            await WRITES.call(call)
        except AuthError as exc:
            raise key_refused(exc) from exc
        except RetriableError as exc:
            if exc is not failing or not synced:
                # The call failed, or not one record of it reached Iterable: it is down or
                # unreachable, not a record's problem. Stop before the checkpoint moves on.
                raise self._unreachable(exc) from exc
            await self._queue_for_retry(object_name, pending, str(exc))
        await self._book_dead(object_name, dead, synced)

    async def _book_dead(self, object_name: str, dead: Mapping[str, tuple[str, str]],
                         synced: Sequence[str]) -> None:
        if dead:
            await self.store.add_dead_letters(object_name, dict(dead), self.clock())
            self.dead_letters_exist = True
            for reason, _detail in dead.values():
                self.totals.dead[reason] += 1
                self.metrics.dead_lettered.labels(reason=reason).inc()
        if synced and self.dead_letters_exist:
            await self.store.clear_dead_letters(object_name, list(synced))

    def _unreachable(self, exc: RetriableError) -> WritesFailed:
        return unreachable(exc, self.config.iterable.base_url,
                           f"Iterable took none of a page's records in {WRITES.attempts} "
                           "attempts")

    async def _queue_for_retry(self, object_name: str, records: Sequence[dict[str, Any]],
                               error: str) -> None:
        """Records still failing transiently go to the real-time queue (the flusher retries
        them with its backoff), so the window's checkpoint can move on."""
        items = [QueueInput(object_name, r["Id"]) for r in records]
        await self.store.enqueue(items, self.clock(), source="retry")
        self.totals.retry_queued += len(items)
        log.warning("backfill.queued_for_retry", object=object_name, records=len(items),
                    error=error)

    def _dry_run(self, object_name: str, records: Sequence[dict[str, Any]]) -> None:
        assert self.dry_out is not None
        mapping = self.mappings[object_name]
        lines = []
        for record in records:
            mapped = mapping.map_or_error(record)
            record_id = record["Id"]
            if isinstance(mapped, RecordError):
                self.totals.dead[mapped.reason] += 1
                lines.append(orjson.dumps({"object": object_name, "id": record_id, "error": {
                    "reason": mapped.reason, "detail": mapped.detail}}))
            else:
                lines.append(orjson.dumps({"object": object_name, "id": record_id,
                                           "payload": mapped.payload}))
        if lines:
            self.dry_out.write(b"\n".join(lines) + b"\n")
