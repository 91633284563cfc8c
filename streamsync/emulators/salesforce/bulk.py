"""Bulk API 2.0 query jobs: create, poll, CSV results by locator, abort, delete."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .errors import SalesforceError
from .ids import IdSequence
from .rest import RECORDS_KEY, USER_KEY, json_response
from .soql import Compiler, Query, execute, parse
from .state import OrgState, format_datetime

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^",
              "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
DEFAULT_MAX_RECORDS = 50_000
STEPS = ("UploadComplete", "InProgress", "JobComplete")


@dataclass
class QueryJob:
    id: str
    operation: str
    query: str
    object: str
    created_by: str
    created: str
    api_version: str
    delimiter: str
    line_ending: str
    state: str = "UploadComplete"
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    processed: int = 0
    processing_ms: int = 0
    error: str | None = None

    def info(self, *, full: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object,
            "createdById": self.created_by, "createdDate": self.created,
            "systemModstamp": self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV",
            "apiVersion": float(self.api_version), "lineEnding": self.line_ending,
            "columnDelimiter": self.delimiter,
        }
        if full:
            body.update({"jobType": "V2Query", "numberRecordsProcessed": self.processed,
                         "retries": 0, "totalProcessingTime": self.processing_ms,
                         "isPkChunkingSupported": True})
            if self.error:
                body["errorMessage"] = self.error
        return body


def _cell(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = ""
    else:
        text = str(value)
    return '"' + text.replace('"', '""') + '"'


def encode_locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def decode_locator(locator: str) -> int:
    try:
        padded = locator + "=" * (-len(locator) % 4)
        return int(base64.b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise SalesforceError(400, "INVALIDLOCATOR", f"Invalid locator: {locator}") from None


class BulkQueryApi:
    """Handlers under /services/data/v{version}/jobs/query."""

    def __init__(self, state: OrgState, *, daily_jobs_max: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.jobs: dict[str, QueryJob] = {}
        self.ids = IdSequence("750")
        self.clock = clock
        self.daily_jobs_max = daily_jobs_max
        self.jobs_created = 0
        self.bytes_served = 0

    def register(self, app: web.Application) -> None:
        base = "/services/data/v{version}/jobs/query"
        r = app.router
        for suffix in ("", "/"):
            r.add_post(base + suffix, self.create)
            r.add_get(base + suffix, self.list_jobs)
            r.add_get(base + "/{job}" + suffix, self.get)
            r.add_patch(base + "/{job}" + suffix, self.abort)
            r.add_delete(base + "/{job}" + suffix, self.delete)
            r.add_get(base + "/{job}/results" + suffix, self.results)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Invalid JSON body") from None
        if not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "Invalid JSON body")
        operation = body.get("operation", "query")
        if operation not in ("query", "queryAll"):
            raise SalesforceError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise SalesforceError(400, "INVALIDJOB", "query is required")
        delimiter = body.get("columnDelimiter") or "COMMA"
        line_ending = body.get("lineEnding") or "LF"
        if delimiter not in DELIMITERS or line_ending not in LINE_ENDINGS:
            raise SalesforceError(400, "INVALIDJOB", "Invalid columnDelimiter or lineEnding")
        if self.jobs_created >= self.daily_jobs_max:
            raise SalesforceError(400, "EXCEEDEDQUOTA",
                                  "You have exceeded the daily limit of query jobs")
        parsed = parse(query)
        if any(i.aggregate for i in parsed.select):
            raise SalesforceError(400, "API_ERROR",
                                  "Aggregate Relationships not supported in Bulk Query")
        version = request.match_info["version"]
        # Fields are checked now: a bad field fails job creation, as on Salesforce.
        obj_name = self._validate(parsed, version)
        job = QueryJob(self.ids.next(), operation, query, obj_name,
                       request.get(USER_KEY) or self.state.integration_user_id,
                       format_datetime(self.clock()), version, delimiter, line_ending)
        self.jobs[job.id] = job
        self.jobs_created += 1
        return json_response(job.info(full=False))

    def _validate(self, parsed: Query, version: str) -> str:
        comp = Compiler(self.state, parsed, version=version)
        _, columns = comp.renderer()
        for name, _getter in columns:
            leaf = name.split(".")[-1]
            if leaf.endswith("Address"):
                raise SalesforceError(400, "API_ERROR",
                                      "Selecting compound data not supported in Bulk Query")
        return comp.obj.name

    def _job(self, request: web.Request) -> QueryJob:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def _advance(self, job: QueryJob) -> None:
        if job.state == "UploadComplete":
            job.state = "InProgress"
        elif job.state == "InProgress":
            self._run(job)

    def _run(self, job: QueryJob) -> None:
        t0 = time.perf_counter()
        try:
            result = execute(self.state, job.query, include_deleted=job.operation == "queryAll",
                             version=job.api_version)
        except SalesforceError as err:
            job.state = "Failed"
            job.error = err.message
            return
        getters = [g for _, g in result.columns]
        job.columns = [c for c, _ in result.columns]
        job.rows = [tuple(g(r) for g in getters) for r in result.rows]
        job.processed = len(job.rows)
        job.processing_ms = int((time.perf_counter() - t0) * 1000)
        job.state = "JobComplete"

    async def list_jobs(self, request: web.Request) -> web.Response:
        return json_response({"done": True, "records": [j.info(full=False)
                                                        for j in self.jobs.values()],
                              "nextRecordsUrl": None})

    async def get(self, request: web.Request) -> web.Response:
        job = self._job(request)
        self._advance(job)
        return json_response(job.info(full=True))

    async def abort(self, request: web.Request) -> web.Response:
        job = self._job(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict) or body.get("state") != "Aborted":
            raise SalesforceError(400, "INVALIDJOBSTATE", "Invalid state, expected Aborted")
        if job.state in ("JobComplete", "Failed", "Aborted"):
            raise SalesforceError(400, "INVALIDJOBSTATE",
                                  f"Cannot abort a job in state {job.state}")
        job.state = "Aborted"
        return json_response(job.info(full=False))

    async def delete(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state in ("UploadComplete", "InProgress"):
            raise SalesforceError(400, "INVALIDJOBSTATE",
                                  "Cannot delete a job that is still in progress")
        del self.jobs[job.id]
        return web.Response(status=204)

    async def results(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        if request.match_info["version"] != job.api_version:
            raise SalesforceError(409, "API_ERROR", "The job was created with API version "
                                  f"{job.api_version}; use the same version")
        if job.state != "JobComplete":
            raise SalesforceError(400, "INVALIDJOBSTATE",
                                  f"Job is not complete (state {job.state})")
        offset = decode_locator(request.query["locator"]) if request.query.get("locator") else 0
        raw_max = request.query.get("maxRecords")
        try:
            max_records = int(raw_max) if raw_max else DEFAULT_MAX_RECORDS
        except ValueError:
            raise SalesforceError(400, "INVALIDMAXRECORDS", "maxRecords must be an integer"
                                  ) from None
        if max_records < 1:
            raise SalesforceError(400, "INVALIDMAXRECORDS", "maxRecords must be positive")
        end = min(offset + max_records, len(job.rows))
        sep = DELIMITERS[job.delimiter]
        nl = LINE_ENDINGS[job.line_ending]
        lines = [sep.join(f'"{c}"' for c in job.columns)]
        lines.extend(sep.join(_cell(v) for v in row) for row in job.rows[offset:end])
        body = (nl.join(lines) + nl).encode()
        self.bytes_served += len(body)
        request[RECORDS_KEY] = end - offset
        locator = encode_locator(end) if end < len(job.rows) else "null"
        resp = web.Response(body=body, content_type="text/csv", charset="utf-8", headers={
            "Sforce-Locator": locator, "Sforce-NumberOfRecords": str(end - offset)})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression()
        return resp
