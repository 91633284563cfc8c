"""Bulk API 2.0 ingest jobs: create, upload CSV, close/abort, process, results, list, delete.

Processing runs in the background once a job is closed (UploadComplete): records go through the
same write path as REST, 200 to a transaction, so each chunk publishes its CDC events with one
transaction key and a `bulkapi` change origin."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .bulk import DELIMITERS, LINE_ENDINGS, decode_locator, encode_locator
from .errors import SalesforceError, not_found
from .ids import IdSequence, is_valid_id, to18
from .rest import USER_KEY, json_response
from .schema import EXTERNAL_ID_FIELDS, SCHEMA_LOWER, SObject
from .soql import execute
from .state import OrgState, Transaction, format_datetime

OPERATIONS = ("insert", "update", "upsert", "delete")
CHUNK = 200  # records per transaction, as Salesforce processes bulk data
INTERNAL_BATCH = 10_000  # records per internal batch (counts against DailyBulkApiBatches)
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
LIST_PAGE = 1000
NULL_VALUE = "#N/A"
TERMINAL = ("JobComplete", "Failed", "Aborted")


@dataclass
class IngestJob:
    id: str
    operation: str
    object: str
    external_id: str | None
    created_by: str
    created: str
    api_version: str
    delimiter: str
    line_ending: str
    origin: str
    state: str = "Open"
    modstamp: str = ""
    data: bytes | None = None
    columns: list[str] = field(default_factory=list)
    successful: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    processing_ms: int = 0
    error: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def processed(self) -> int:
        return len(self.successful) + len(self.failed)

    def info(self, *, full: bool, content_url: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object,
            "createdById": self.created_by, "createdDate": self.created,
            "systemModstamp": self.modstamp or self.created, "state": self.state,
        }
        if self.external_id is not None:
            body["externalIdFieldName"] = self.external_id
        body.update({"concurrencyMode": "Parallel", "contentType": "CSV",
                     "apiVersion": float(self.api_version)})
        if full:
            body["jobType"] = "V2Ingest"
        if content_url or (full and self.state == "Open"):
            body["contentUrl"] = (f"services/data/v{self.api_version}/jobs/ingest/{self.id}"
                                  "/batches")
        body.update({"lineEnding": self.line_ending, "columnDelimiter": self.delimiter})
        if full:
            body.update({"numberRecordsProcessed": self.processed,
                         "numberRecordsFailed": len(self.failed), "retries": 0,
                         "totalProcessingTime": self.processing_ms,
                         "apiActiveProcessingTime": self.processing_ms,
                         "apexProcessingTime": 0})
            if self.error:
                body["errorMessage"] = self.error
        return body


class IngestFailure(Exception):
    """The whole job fails (bad header, bad line ending, unparsable CSV)."""


def bulk_origin(request: web.Request, version: str) -> str:
    """changeOrigin of bulk writes: com/salesforce/api/bulkapi/<version>[;client=<id>]."""
    origin = f"com/salesforce/api/bulkapi/{version}"
    for part in request.headers.get("Sforce-Call-Options", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "client" and value:
            return f"{origin};client={value.strip()}"
    return origin


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _error_text(err: SalesforceError) -> str:
    """sf__Error of a failed row: STATUS_CODE:message:fields --"""
    return f"{err.error_code}:{err.message}:{','.join(err.fields or [])} --"


class BulkIngestApi:
    """Handlers under /services/data/v{version}/jobs/ingest."""

    def __init__(self, state: OrgState, *, ids: IdSequence | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.jobs: dict[str, IngestJob] = {}
        self.ids = ids or IdSequence("750")
        self.jobs_created = 0
        self.batches_used = 0
        self.records_written = 0

    def register(self, app: web.Application) -> None:
        base = "/services/data/v{version}/jobs/ingest"
        r = app.router
        for suffix in ("", "/"):
            r.add_post(base + suffix, self.create)
            r.add_get(base + suffix, self.list_jobs)
            r.add_get(base + "/{job}" + suffix, self.get)
            r.add_patch(base + "/{job}" + suffix, self.set_state)
            r.add_delete(base + "/{job}" + suffix, self.delete)
            r.add_put(base + "/{job}/batches" + suffix, self.upload)
            r.add_get(base + "/{job}/successfulResults" + suffix, self.successful)
            r.add_get(base + "/{job}/failedResults" + suffix, self.failed)
            # The guide spells it unprocessedrecords; simple-salesforce asks for unprocessedRecords.
            r.add_get(base + "/{job}/unprocessedrecords" + suffix, self.unprocessed)
            r.add_get(base + "/{job}/unprocessedRecords" + suffix, self.unprocessed)

    async def stop(self) -> None:
        """Cancel jobs still processing (emulator shutdown)."""
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task

    async def wait_idle(self) -> None:
        """Wait until no job is processing (tests)."""
        await asyncio.gather(*(j.task for j in list(self.jobs.values()) if j.task is not None))

    # -- job lifecycle ----------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        if request.content_type.startswith("multipart/"):
            raise SalesforceError(400, "NOT_SUPPORTED",
                                  "Multipart job creation is not served by the emulator")
        body = await _json_body(request)
        operation = body.get("operation")
        if operation == "hardDelete":
            raise SalesforceError(400, "INVALIDJOB", "InvalidJob : hardDelete needs the "
                                  "'Bulk API Hard Delete' permission, which this user lacks")
        if operation not in OPERATIONS:
            raise SalesforceError(400, "INVALIDJOB",
                                  f"InvalidJob : Invalid operation: {operation}")
        obj = SCHEMA_LOWER.get(str(body.get("object", "")).lower())
        if obj is None:
            raise SalesforceError(400, "INVALIDJOB",
                                  f"InvalidJob : Invalid object: {body.get('object')}")
        if obj.name in ("User", "Group") and operation != "update":
            raise SalesforceError(400, "INVALIDJOB", f"InvalidJob : entity type {obj.name} "
                                  f"does not support {operation}")
        content_type = body.get("contentType") or "CSV"
        delimiter = body.get("columnDelimiter") or "COMMA"
        line_ending = body.get("lineEnding") or "LF"
        if content_type != "CSV":
            raise SalesforceError(400, "INVALIDJOB", f"InvalidJob : Invalid content type: "
                                  f"{content_type}")
        if delimiter not in DELIMITERS or line_ending not in LINE_ENDINGS:
            raise SalesforceError(400, "INVALIDJOB",
                                  "InvalidJob : Invalid columnDelimiter or lineEnding")
        external_id = body.get("externalIdFieldName")
        if operation == "upsert":
            f = obj.get(str(external_id or ""))
            if f is None or (f.name not in EXTERNAL_ID_FIELDS and f.name != "Id"):
                raise SalesforceError(400, "INVALIDJOB", "InvalidJob : External ID field "
                                      f"{external_id} is not an external id field of "
                                      f"{obj.name}")
            external_id = f.name
        else:
            external_id = None
        version = request.match_info["version"]
        now = format_datetime(self.clock())
        job = IngestJob(self.ids.next(), operation, obj.name, external_id,
                        request.get(USER_KEY) or self.state.integration_user_id, now, version,
                        delimiter, line_ending, bulk_origin(request, version))
        self.jobs[job.id] = job
        self.jobs_created += 1
        return json_response(job.info(full=False, content_url=True))

    def _job(self, request: web.Request) -> IngestJob:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            raise not_found()
        return job

    async def get(self, request: web.Request) -> web.Response:
        return json_response(self._job(request).info(full=True))

    async def list_jobs(self, request: web.Request) -> web.Response:
        job_type = request.query.get("jobType")
        mode = request.query.get("concurrencyMode")
        jobs = [j for j in self.jobs.values()
                if job_type in (None, "V2Ingest") and mode in (None, "Parallel")]
        offset = decode_locator(request.query["queryLocator"]) \
            if request.query.get("queryLocator") else 0
        page = jobs[offset:offset + LIST_PAGE]
        end = offset + len(page)
        version = request.match_info["version"]
        next_url = (f"/services/data/v{version}/jobs/ingest?queryLocator={encode_locator(end)}"
                    if end < len(jobs) else None)
        return json_response({"done": next_url is None,
                              "records": [j.info(full=True) for j in page],
                              "nextRecordsUrl": next_url})

    async def upload(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state != "Open":
            raise SalesforceError(409, "INVALIDJOBSTATE",
                                  f"Job {job.id} is not open for data upload (state "
                                  f"{job.state})")
        if job.data is not None:
            raise SalesforceError(400, "BULK_API_ERROR",
                                  f"Found multiple contents for job: <{job.id}>, please 'Close'"
                                  " / 'Abort' / 'Delete' the current Job then create a new Job "
                                  "and make sure you only do 'PUT' once on a given Job.")
        if not request.content_type.startswith("text/csv"):
            raise SalesforceError(400, "INVALIDCONTENTTYPE",
                                  f"Unsupported content type: {request.content_type}; "
                                  "use text/csv")
        data = await request.read()
        if len(data) > MAX_UPLOAD_BYTES:
            raise SalesforceError(400, "BULK_API_ERROR",
                                  "Job data exceeds the 100 MB limit per upload")
        if not data.strip():
            raise SalesforceError(400, "BULK_API_ERROR", "Job data is empty")
        job.data = data
        return web.Response(status=201)

    async def set_state(self, request: web.Request) -> web.Response:
        job = self._job(request)
        body = await _json_body(request)
        wanted = body.get("state")
        if wanted == "UploadComplete":
            if job.state != "Open":
                raise SalesforceError(409, "INVALIDJOBSTATE",
                                      f"Job {job.id} is not open (state {job.state})")
            job.state = "UploadComplete"
            self._touch(job)
            job.task = asyncio.create_task(self._process(job))
        elif wanted == "Aborted":
            if job.state in TERMINAL:
                raise SalesforceError(409, "INVALIDJOBSTATE",
                                      f"Cannot abort a job in state {job.state}")
            job.state = "Aborted"
            self._touch(job)
        else:
            raise SalesforceError(400, "INVALIDJOBSTATE",
                                  f"Invalid state: {wanted}; expected UploadComplete or Aborted")
        return json_response(job.info(full=False))

    async def delete(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state not in ("UploadComplete", *TERMINAL) or (
                job.task is not None and not job.task.done()):
            raise SalesforceError(409, "INVALIDJOBSTATE",
                                  f"Cannot delete a job in state {job.state}")
        del self.jobs[job.id]
        return web.Response(status=204)

    def _touch(self, job: IngestJob) -> None:
        job.modstamp = format_datetime(self.clock())

    # -- processing -------------------------------------------------------------------------
    async def _process(self, job: IngestJob) -> None:
        try:
            await self._run(job)
        except Exception as exc:  # an emulator bug must not leave the job InProgress forever
            job.state = "Failed"
            job.error = f"UNKNOWN_EXCEPTION : {exc!r}"
            self._touch(job)

    async def _run(self, job: IngestJob) -> None:
        await asyncio.sleep(0)
        if job.state != "UploadComplete":  # aborted before processing began
            with contextlib.suppress(IngestFailure):
                job.unprocessed = self._parse(job)
            return
        job.state = "InProgress"
        self._touch(job)
        t0 = time.perf_counter()
        try:
            rows = self._parse(job)
        except IngestFailure as exc:
            job.state = "Failed"
            job.error = str(exc)
            self._touch(job)
            return
        self.batches_used += max(1, -(-len(rows) // INTERNAL_BATCH))
        obj = SCHEMA_LOWER[job.object.lower()]
        for start in range(0, len(rows), CHUNK):
            if job.state == "Aborted":
                job.unprocessed.extend(rows[start:])
                break
            self._write_chunk(job, obj, rows[start:start + CHUNK])
            await asyncio.sleep(0)
        job.processing_ms = int((time.perf_counter() - t0) * 1000)
        if job.state == "InProgress":
            job.state = "JobComplete"
        self._touch(job)

    def _parse(self, job: IngestJob) -> list[list[str]]:
        if job.data is None:
            raise IngestFailure("InvalidBatch : No job data was uploaded before UploadComplete")
        try:
            text = job.data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise IngestFailure("InvalidBatch : Job data is not UTF-8") from None
        header_end = text.find("\n")
        header_crlf = header_end > 0 and text[header_end - 1] == "\r"
        if header_crlf != (job.line_ending == "CRLF") and header_end >= 0:
            raise IngestFailure(f"ClientInputError : LineEnding is invalid on user data. "
                                f"Current LineEnding setting is {job.line_ending}")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[job.delimiter],
                            strict=True)
        try:
            table = [row for row in reader if row]
        except csv.Error as exc:
            raise IngestFailure(f"InvalidBatch : Failed to parse CSV: {exc}") from None
        if not table:
            raise IngestFailure("InvalidBatch : Job data has no header row")
        header = table[0]
        _check_header(job, [_field_name(job, column) for column in header])
        rows = table[1:]
        for n, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise IngestFailure(f"InvalidBatch : Row {n} has {len(row)} columns; the "
                                    f"header has {len(header)}")
        job.columns = header
        return rows

    def _write_chunk(self, job: IngestJob, obj: SObject, rows: list[list[str]]) -> None:
        names = [f.name for f in (obj.get(c.strip()) for c in job.columns) if f is not None]
        with self.state.transaction(origin=job.origin, user_id=job.created_by) as tx:
            for row in rows:
                mark = tx.savepoint()
                try:
                    sf_id, created = self._write_row(tx, job, obj, names, row)
                except SalesforceError as err:
                    tx.rollback_to(mark)
                    raw_id = row[names.index("Id")] if "Id" in names else ""
                    job.failed.append((raw_id, _error_text(err), row))
                else:
                    job.successful.append((sf_id, created, row))
                    self.records_written += 1

    def _write_row(self, tx: Transaction, job: IngestJob, obj: SObject, names: list[str],
                   row: list[str]) -> tuple[str, bool]:
        values: dict[str, Any] = {}
        for name, cell in zip(names, row, strict=True):
            if cell == "":
                continue  # empty cells leave the field as it is; #N/A sets it to null
            values[name] = None if cell == NULL_VALUE else _typed(obj, name, cell)
        op = job.operation
        if op in ("update", "delete"):
            sf_id = values.pop("Id", None)
            if not isinstance(sf_id, str):
                raise SalesforceError(400, "MISSING_ARGUMENT", "Id not specified in an update "
                                      "call", ["Id"])
            _check_id(obj, sf_id)
            if op == "update":
                tx.update(obj.name, sf_id, values)
            else:
                tx.delete(obj.name, sf_id)
            return to18(sf_id), False
        if op == "insert":
            if "Id" in values:
                raise SalesforceError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                                      "Id is not allowed in an insert", ["Id"])
            return tx.create(obj.name, values), True
        return self._upsert_row(tx, job, obj, values)

    def _upsert_row(self, tx: Transaction, job: IngestJob, obj: SObject,
                    values: dict[str, Any]) -> tuple[str, bool]:
        """Upsert on the job's external id field (or Id): update the one match, else create."""
        key = job.external_id or "Id"
        key_value = values.get(key)
        if not isinstance(key_value, str) or not key_value:
            raise SalesforceError(400, "MISSING_ARGUMENT",
                                  f"{key} not specified in an upsert call", [key])
        matches = _matches(self.state, obj, key, key_value)
        if len(matches) > 1:
            raise SalesforceError(300, "DUPLICATE_EXTERNAL_ID",
                                  f"{key}: more than one record found for external id field: "
                                  f"{matches}", [key])
        values.pop("Id", None)
        if matches:
            if key != "Id":
                values.pop(key)
            tx.update(obj.name, matches[0], values)
            return matches[0], False
        if key == "Id":
            raise SalesforceError(404, "INVALID_CROSS_REFERENCE_KEY",
                                  f"invalid cross reference id: {key_value}", ["Id"])
        return tx.create(obj.name, values), True

    # -- results ----------------------------------------------------------------------------
    def _results_job(self, request: web.Request) -> IngestJob:
        job = self._job(request)
        if job.state not in TERMINAL:
            raise SalesforceError(409, "INVALIDJOBSTATE",
                                  f"Results are available once the job has finished (state "
                                  f"{job.state})")
        return job

    def _csv(self, job: IngestJob, head: list[str], rows: list[list[str]]) -> web.Response:
        sep = DELIMITERS[job.delimiter]
        nl = LINE_ENDINGS[job.line_ending]
        lines = [sep.join(_csv_cell(c) for c in head)]
        lines.extend(sep.join(_csv_cell(c) for c in row) for row in rows)
        return web.Response(body=(nl.join(lines) + nl).encode(), content_type="text/csv",
                            charset="utf-8")

    async def successful(self, request: web.Request) -> web.Response:
        job = self._results_job(request)
        return self._csv(job, ["sf__Id", "sf__Created", *job.columns],
                         [[i, "true" if c else "false", *r] for i, c, r in job.successful])

    async def failed(self, request: web.Request) -> web.Response:
        job = self._results_job(request)
        return self._csv(job, ["sf__Id", "sf__Error", *job.columns],
                         [[i, e, *r] for i, e, r in job.failed])

    async def unprocessed(self, request: web.Request) -> web.Response:
        job = self._results_job(request)
        if not job.columns:  # never parsed: the upload as it came, or nothing at all
            return web.Response(body=job.data or b"", content_type="text/csv",
                                charset="utf-8")
        return self._csv(job, job.columns, job.unprocessed)


def _check_id(obj: SObject, sf_id: str) -> None:
    if not is_valid_id(sf_id):
        raise SalesforceError(400, "MALFORMED_ID",
                              f"{obj.name} ID: id value of incorrect type: {sf_id}", ["Id"])
    if not to18(sf_id).startswith(obj.key_prefix):
        raise SalesforceError(400, "INVALID_CROSS_REFERENCE_KEY",
                              f"invalid cross reference id: {sf_id}", ["Id"])


def _matches(state: OrgState, obj: SObject, key: str, value: str) -> list[str]:
    """Live records whose external id field (or Id) equals value."""
    if key == "Id":
        _check_id(obj, value)
        row = state.tables[obj.name].rows.get(to18(value))
        deleted = state.tables[obj.name].deleted_slot
        return [to18(value)] if row is not None and not (deleted >= 0 and row[deleted]) else []
    literal = value.replace("\\", "\\\\").replace("'", "\\'")
    return [r[0] for r in execute(state, f"SELECT Id FROM {obj.name} WHERE {key} = "
                                         f"'{literal}'").rows]


def _typed(obj: SObject, name: str, cell: str) -> Any:
    """A CSV cell as the value the write path expects for the field's type."""
    f = obj.get(name)
    assert f is not None
    if f.type == "int":
        try:
            return int(cell)
        except ValueError:
            raise SalesforceError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD",
                                  f"{f.label}: value not of required type: {cell}",
                                  [f.name]) from None
    if f.type == "boolean":
        lowered = cell.strip().lower()
        if lowered in ("1", "yes"):
            return True
        if lowered in ("0", "no"):
            return False
        if lowered not in ("true", "false"):
            raise SalesforceError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD",
                                  f"{f.label}: value not of required type: {cell}", [f.name])
        return lowered == "true"
    if f.type in ("double", "currency", "percent"):
        try:
            return float(cell)
        except ValueError:
            raise SalesforceError(400, "INVALID_TYPE_ON_FIELD_IN_RECORD",
                                  f"{f.label}: value not of required type: {cell}",
                                  [f.name]) from None
    return cell


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise SalesforceError(400, "JSON_PARSER_ERROR", "Invalid JSON body")
    return body


def _field_name(job: IngestJob, column: str) -> str:
    """The field a CSV header column names (case-insensitive), or the job fails."""
    f = SCHEMA_LOWER[job.object.lower()].get(column.strip())
    if f is None:
        raise IngestFailure(f"InvalidBatch : Field name not found : {column}")
    return f.name


def _check_header(job: IngestJob, names: list[str]) -> None:
    """No duplicate columns; the key column the operation needs; delete takes only Id."""
    if len(set(names)) != len(names):
        raise IngestFailure("InvalidBatch : Duplicate field name in the header row")
    needed = {"update": "Id", "delete": "Id", "upsert": job.external_id}.get(job.operation)
    if needed is not None and needed not in names:
        raise IngestFailure(f"InvalidBatch : Field name not found : {needed}"
                            if needed != "Id" else "InvalidBatch : Id column is required")
    if job.operation == "delete" and names != ["Id"]:
        raise IngestFailure("InvalidBatch : The 'delete' batch must contain only 'Id'")
