"""Salesforce REST and Bulk API 2.0 client: paged queries, describe, limits, sObject writes."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from streamsync.adapters.http import (
    Call,
    HttpResponse,
    UsageCounter,
    excerpt,
    send,
    status_error,
    stream,
)
from streamsync.adapters.salesforce_auth import SalesforceAuth, Token
from streamsync.errors import (
    BulkJobFailed,
    QueryError,
    RateLimited,
    SalesforceError,
    SessionExpired,
    TransientError,
)
from streamsync.logs import get_logger
from streamsync.retry import NO_RETRY, Policy

log = get_logger(__name__)

API = "salesforce"
QUERY_ERROR_CODES = frozenset(
    {
        "MALFORMED_QUERY",
        "INVALID_FIELD",
        "INVALID_TYPE",
        "QUERY_TOO_COMPLICATED",
        "INVALID_QUERY_FILTER_OPERATOR",
        "MALFORMED_ID",
    }
)
BULK_RUNNING_STATES = frozenset({"UploadComplete", "InProgress", "Open"})
LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
CSV_CHUNK_BYTES = 64 * 1024
NUMERIC_TYPES = frozenset({"double", "currency", "percent", "long"})


@dataclass(frozen=True, slots=True)
class QueryPage:
    """One page of a REST query: its records (as Salesforce sent them) and the paging state."""

    records: list[dict[str, Any]]
    total_size: int
    done: bool


MAX_COLLECTION = 200
"""Records per sObject Collections call (docs/salesforce.md §5.1)."""


@dataclass(frozen=True, slots=True)
class SaveResult:
    """One record's outcome in an sObject Collections reply."""

    record_id: str | None
    success: bool
    errors: tuple[tuple[str, str], ...] = ()  # (statusCode, message)

    def describe(self) -> str:
        return "; ".join(f"{code}: {message}" for code, message in self.errors) or "failed"


def _save_result(item: Any) -> SaveResult:
    if not isinstance(item, dict) or not isinstance(item.get("success"), bool):
        raise TransientError("salesforce composite/sobjects: a result has no success flag")
    errors = tuple(
        (str(e.get("statusCode", "")), str(e.get("message", "")))
        for e in item.get("errors") or () if isinstance(e, dict))
    record_id = item.get("id")
    return SaveResult(record_id if isinstance(record_id, str) else None, item["success"], errors)


def parse_limit_info(value: str | None) -> tuple[int, int] | None:
    """(used, allowed) from `Sforce-Limit-Info: api-usage=N/M`, or None."""
    if not value:
        return None
    match = LIMIT_INFO.search(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def _first_error(body: Any) -> tuple[str, str]:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", "")), str(body[0].get("message", ""))
    if isinstance(body, dict):
        return str(body.get("errorCode", body.get("error", ""))), str(
            body.get("message", body.get("error_description", ""))
        )
    return "", ""


def error_for(resp: HttpResponse) -> Exception:
    """Map a non-2xx Salesforce reply to the error tree."""
    status = resp.status
    try:
        code, message = _first_error(orjson.loads(resp.body)) if resp.body else ("", "")
    except orjson.JSONDecodeError:
        code, message = "", excerpt(resp.body)
    message = message or excerpt(resp.body)
    where = f"salesforce {resp.endpoint}"
    if status == 401:
        return SessionExpired(f"{where}: {code or 'HTTP 401'}: {message}")
    if code == "REQUEST_LIMIT_EXCEEDED" or status == 429:
        return RateLimited(f"{where}: {code or 'HTTP 429'}: {message}")
    if status == 408 or status >= 500 or code in ("QUERY_TIMEOUT", "SERVER_UNAVAILABLE"):
        return TransientError(f"{where}: HTTP {status} {code}: {message}")
    if code == "INVALID_QUERY_LOCATOR":
        # The server dropped the cursor (idle too long): running the query again fixes it.
        return TransientError(f"{where}: query cursor expired, restart the query: {message}")
    if status in (414, 431):
        return QueryError(status, code or "URI_TOO_LONG", message or "request URI too long",
                          resp.endpoint)
    if code in QUERY_ERROR_CODES:
        return QueryError(status, code, message, resp.endpoint)
    return SalesforceError(status, code or f"HTTP_{status}", message, resp.endpoint)


def coerce_csv_value(sf_type: str, raw: str) -> Any:
    """A Bulk CSV cell as REST would type it, given the field's describe type: booleans and
    numbers become bool/int/float; anything else stays a string. Raises ValueError if the
    cell does not fit the type."""
    kind = sf_type.lower()
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"not a boolean: {raw!r}")
        return raw.lower() == "true"
    if kind == "int":
        return int(raw)
    if kind in NUMERIC_TYPES:
        return float(raw)
    return raw


def _nest(row: dict[str, str], field_types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Bulk CSV row shaped like a REST record: empty strings are nulls, dotted columns
    (`Owner.Email`) become nested objects (None when every field of the parent is null), and
    columns named in `field_types` are typed by `coerce_csv_value`."""
    out: dict[str, Any] = {}
    for column, raw in row.items():
        value: Any = raw if raw != "" else None
        if value is not None and field_types:
            sf_type = field_types.get(column)
            if sf_type is not None:
                try:
                    value = coerce_csv_value(sf_type, raw)
                except ValueError as exc:
                    raise TransientError(
                        f"salesforce bulk results: column {column} is not a {sf_type}: {exc}"
                    ) from exc
        if "." not in column:
            out[column] = value
            continue
        *parents, leaf = column.split(".")
        node = out
        for parent in parents:
            child = node.get(parent)
            if not isinstance(child, dict):
                child = {}
                node[parent] = child
            node = child
        node[leaf] = value
    for key, value in list(out.items()):
        if isinstance(value, dict) and _all_null(value):
            out[key] = None
    return out


def _all_null(node: dict[str, Any]) -> bool:
    return all(v is None or (isinstance(v, dict) and _all_null(v)) for v in node.values())


def split_complete_records(text: str) -> tuple[str, str]:
    """Split CSV text into (complete records, incomplete tail) at the last line break that is
    outside a quoted field (RFC 4180 quotes are balanced at every record end)."""
    lines = text.split("\n")
    quotes = 0
    boundary = -1
    for index, line in enumerate(lines[:-1]):
        quotes += line.count('"')
        if quotes % 2 == 0:
            boundary = index
    if boundary < 0:
        return "", text
    head = "\n".join(lines[: boundary + 1]) + "\n"
    return head, text[len(head):]


class SalesforceClient:
    """Calls Salesforce REST (query, queryAll, describe, limits, sObjects) and Bulk API 2.0.

    Every call carries the current token; a 401 invalidates it and the call is repeated once
    with a fresh one. GETs are retried by `retry` (a policy the caller declares); writes are
    never retried here. At most `max_in_flight` REST calls are outstanding at once (Bulk result
    downloads, read while the caller consumes rows, are not gated so a consumer that makes
    further calls cannot deadlock). Calls are counted in `counter`, and the
    `Sforce-Limit-Info` usage is recorded there too.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        auth: SalesforceAuth,
        api_version: str,
        counter: UsageCounter | None = None,
        *,
        batch_size: int | None = None,
        call_options_client: str | None = None,
        retry: Policy = NO_RETRY,
        timeout_s: float | None = None,
        bulk_poll_s: float = 1.0,
        bulk_max_poll_s: float = 10.0,
        bulk_max_records: int = 50_000,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        max_in_flight: int = 10,
    ) -> None:
        if batch_size is not None and not 200 <= batch_size <= 2000:
            raise ValueError(f"batch_size must be within 200..2000, got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._session = session
        self.auth = auth
        self.api_version = api_version.lstrip("v")
        self.counter = counter if counter is not None else UsageCounter()
        self.batch_size = batch_size
        self.call_options_client = call_options_client
        self.retry = retry
        self._timeout_s = timeout_s
        self.bulk_poll_s = bulk_poll_s
        self.bulk_max_poll_s = bulk_max_poll_s
        self.bulk_max_records = bulk_max_records
        self._sleep = sleep if sleep is not None else asyncio.sleep
        # Salesforce allows 25 concurrent long-running requests per org: stay well below.
        self._gate = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        self.peak_in_flight = 0

    def __repr__(self) -> str:
        return f"SalesforceClient(api_version={self.api_version!r}, auth={self.auth!r})"

    @property
    def data_path(self) -> str:
        return f"/services/data/v{self.api_version}"

    # -- plumbing -----------------------------------------------------------------------------

    def _headers(self, token: Token, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": token.authorization, "Accept": "application/json"}
        if self.call_options_client:
            headers["Sforce-Call-Options"] = f"client={self.call_options_client}"
        if extra:
            headers.update(extra)
        return headers

    def _note_usage(self, resp: HttpResponse) -> None:
        usage = parse_limit_info(resp.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.counter.set_usage(API, *usage)

    async def _once(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """One call, re-authenticating once on 401. Raises the mapped error on non-2xx."""
        for attempt in (1, 2):
            token = await self.auth.token()
            extra = dict(headers or {})
            data = None
            if json_body is not None:
                data = orjson.dumps(json_body)
                extra["Content-Type"] = "application/json"
            async with self._gate:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    resp = await send(
                        self._session,
                        method,
                        token.instance_url + path,
                        api=API,
                        endpoint=endpoint,
                        counter=self.counter,
                        headers=self._headers(token, extra),
                        params=params,
                        data=data,
                        timeout_s=self._timeout_s,
                    )
                finally:
                    self.in_flight -= 1
            self._note_usage(resp)
            if resp.ok:
                return resp
            error = status_error(resp, error_for)
            if isinstance(error, SessionExpired) and attempt == 1:
                log.info("salesforce.session_expired", endpoint=endpoint)
                self.auth.invalidate(token)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(
        self, path: str, endpoint: str, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        return await self.retry.call(
            lambda: self._once("GET", path, endpoint, params=params, headers=headers)
        )

    # -- REST query ---------------------------------------------------------------------------

    async def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[QueryPage]:
        """Pages of a SOQL query, following `nextRecordsUrl` until done. Only one page is held
        at a time. `include_deleted` uses the queryAll resource (deleted and archived rows)."""
        resource = "queryAll" if include_deleted else "query"
        headers = (
            {"Sforce-Query-Options": f"batchSize={self.batch_size}"} if self.batch_size else None
        )
        resp = await self._get(
            f"{self.data_path}/{resource}", resource, params={"q": soql}, headers=headers
        )
        while True:
            body = resp.json()
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise TransientError(f"salesforce {resource}: reply has no records list")
            done = bool(body.get("done", True))
            next_url = body.get("nextRecordsUrl")
            yield QueryPage(body["records"], int(body.get("totalSize", 0)), done)
            if done or not isinstance(next_url, str) or not next_url:
                return
            resp = await self._get(next_url, f"{resource}/more", headers=headers)

    async def query_all(self, soql: str) -> AsyncIterator[QueryPage]:
        """Pages of the queryAll resource: like `query`, plus deleted and archived records."""
        async for page in self.query(soql, include_deleted=True):
            yield page

    async def records(
        self, soql: str, *, include_deleted: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record of a query, page by page."""
        async for page in self.query(soql, include_deleted=include_deleted):
            for record in page.records:
                yield record

    async def count(self, soql: str) -> int:
        """`totalSize` of a query, e.g. `SELECT COUNT() FROM Lead WHERE ...` (one call)."""
        resp = await self._get(f"{self.data_path}/query", "query", params={"q": soql})
        body = resp.json()
        if not isinstance(body, dict) or "totalSize" not in body:
            raise TransientError("salesforce query: COUNT() reply has no totalSize")
        return int(body["totalSize"])

    async def describe(self, sobject: str) -> dict[str, Any]:
        """The describe of one object: fields (name, type, relationshipName, referenceTo...)."""
        resp = await self._get(
            f"{self.data_path}/sobjects/{quote(sobject, safe='')}/describe", "describe"
        )
        body = resp.json()
        if not isinstance(body, dict):
            raise TransientError("salesforce describe: reply is not a JSON object")
        return body

    async def limits(self) -> dict[str, Any]:
        """`/limits/`: {"DailyApiRequests": {"Max": n, "Remaining": n}, ...}."""
        resp = await self._get(f"{self.data_path}/limits/", "limits")
        body = resp.json()
        if not isinstance(body, dict):
            raise TransientError("salesforce limits: reply is not a JSON object")
        return body

    # -- sObject writes (demo and test workloads) --------------------------------------------

    async def sobject_create(self, sobject: str, fields: Mapping[str, Any]) -> str:
        """Create one record; returns its Id."""
        resp = await self._once(
            "POST", f"{self.data_path}/sobjects/{quote(sobject, safe='')}/", "sobject_create",
            json_body=dict(fields),
        )
        body = resp.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise TransientError("salesforce sobject create: reply has no id")
        return str(body["id"])

    async def sobject_update(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Update fields of one record (PATCH, 204)."""
        await self._once(
            "PATCH",
            f"{self.data_path}/sobjects/{quote(sobject, safe='')}/{quote(record_id, safe='')}",
            "sobject_update",
            json_body=dict(fields),
        )

    async def sobject_delete(self, sobject: str, record_id: str) -> None:
        """Delete one record (204); a missing record raises SalesforceError NOT_FOUND."""
        await self._once(
            "DELETE",
            f"{self.data_path}/sobjects/{quote(sobject, safe='')}/{quote(record_id, safe='')}",
            "sobject_delete",
        )

    async def update_records(self, records: Sequence[Mapping[str, Any]], *,
                             all_or_none: bool = False) -> list[SaveResult]:
        """PATCH /composite/sobjects: update up to 200 records in one call, each
        `{"attributes": {"type": ...}, "id": ..., <fields>}`; one SaveResult per record, in
        request order (docs/salesforce.md §5.1). Not retried here: the caller's policy repeats
        the whole call, which sets the same values again."""
        if not 1 <= len(records) <= MAX_COLLECTION:
            raise ValueError(f"sObject Collections take 1..{MAX_COLLECTION} records, "
                             f"got {len(records)}")
        resp = await self._once(
            "PATCH", f"{self.data_path}/composite/sobjects", "composite_sobjects",
            json_body={"allOrNone": all_or_none, "records": [dict(r) for r in records]},
        )
        body = resp.json()
        if not isinstance(body, list) or len(body) != len(records):
            raise TransientError("salesforce composite/sobjects: the reply is not one result "
                                 "per record")
        return [_save_result(item) for item in body]

    # -- Bulk API 2.0 query -------------------------------------------------------------------

    async def create_bulk_query_job(self, soql: str, *, include_deleted: bool = False) -> str:
        """Create a Bulk API 2.0 query job; returns its id."""
        resp = await self._once(
            "POST",
            f"{self.data_path}/jobs/query",
            "bulk_create",
            json_body={
                "operation": "queryAll" if include_deleted else "query",
                "query": soql,
                "contentType": "CSV",
                "columnDelimiter": "COMMA",
                "lineEnding": "LF",
            },
        )
        body = resp.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise TransientError("salesforce bulk query: create reply has no job id")
        log.info("salesforce.bulk_job_created", job_id=body["id"])
        return str(body["id"])

    async def bulk_job(self, job_id: str) -> dict[str, Any]:
        """The job's info (state, numberRecordsProcessed, ...)."""
        resp = await self._get(f"{self.data_path}/jobs/query/{quote(job_id, safe='')}", "bulk_poll")
        body = resp.json()
        if not isinstance(body, dict):
            raise TransientError("salesforce bulk query: job info is not a JSON object")
        return body

    async def wait_bulk_query_job(self, job_id: str) -> dict[str, Any]:
        """Poll the job with growing intervals until JobComplete; Failed/Aborted raise."""
        delay_s = self.bulk_poll_s
        while True:
            info = await self.bulk_job(job_id)
            state = str(info.get("state", ""))
            if state == "JobComplete":
                return info
            if state not in BULK_RUNNING_STATES:
                message = str(info.get("errorMessage") or f"job ended in state {state}")
                raise BulkJobFailed(200, state or "UNKNOWN_STATE", message, "bulk_poll")
            await self._sleep(delay_s)
            delay_s = min(self.bulk_max_poll_s, delay_s * 1.5)

    async def bulk_query_results(
        self,
        job_id: str,
        *,
        locator: str | None = None,
        field_types: Mapping[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of a completed job, page by page (by locator), parsed as the CSV streams in.
        Rows are shaped like REST records (see `_nest`): values are strings or None, except
        the columns typed by `field_types` (column, e.g. `Account.NumberOfEmployees` → the
        describe type, e.g. `int`), so the same mapping serves REST and Bulk reads."""
        path = f"{self.data_path}/jobs/query/{quote(job_id, safe='')}/results"
        while True:
            params = {"maxRecords": str(self.bulk_max_records)}
            if locator:
                params["locator"] = locator
            next_locator: str | None = None
            async for row, page_locator in self._results_page(path, params, field_types):
                next_locator = page_locator
                yield row
            if next_locator is None:
                return
            locator = next_locator

    async def _results_page(
        self, path: str, params: Mapping[str, str], field_types: Mapping[str, str] | None
    ) -> AsyncIterator[tuple[dict[str, Any], str | None]]:
        for attempt in (1, 2):
            token = await self.auth.token()
            try:
                async with stream(
                    self._session,
                    "GET",
                    token.instance_url + path,
                    Call(API, "bulk_results", self.counter),
                    headers=self._headers(token, {"Accept": "text/csv"}),
                    params=params,
                    timeout_s=self._timeout_s,
                    error_for=error_for,
                ) as raw:
                    raw_locator = raw.headers.get("Sforce-Locator")
                    page_locator = None if raw_locator in (None, "", "null") else raw_locator
                    empty = True
                    async for row in _csv_rows(raw.content.iter_chunked(CSV_CHUNK_BYTES)):
                        empty = False
                        yield _nest(row, field_types), page_locator
                    if empty and page_locator is not None:
                        raise TransientError(
                            "salesforce bulk results: empty page with a further locator"
                        )
                    return
            except SessionExpired:
                if attempt == 2:
                    raise
                self.auth.invalidate(token)

    async def bulk_query(
        self,
        soql: str,
        *,
        include_deleted: bool = False,
        field_types: Mapping[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Create a Bulk API 2.0 query job, wait for it, and stream its rows."""
        job_id = await self.create_bulk_query_job(soql, include_deleted=include_deleted)
        await self.wait_bulk_query_job(job_id)
        async for row in self.bulk_query_results(job_id, field_types=field_types):
            yield row


async def _csv_rows(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, str]]:
    """Parse CSV (header row first) from byte chunks without holding the whole body."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    header: list[str] | None = None
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        complete, pending = split_complete_records(pending)
        if complete:
            header, rows = _parse(complete, header)
            for row in rows:
                yield row
    pending += decoder.decode(b"", final=True)
    if pending.strip():
        header, rows = _parse(pending, header)
        for row in rows:
            yield row


def _parse(
    text: str, header: list[str] | None
) -> tuple[list[str] | None, list[dict[str, str]]]:
    out: list[dict[str, str]] = []
    for values in csv.reader(io.StringIO(text, newline="")):
        if not values:
            continue
        if header is None:
            header = values
            continue
        if len(values) != len(header):
            raise TransientError(
                f"salesforce bulk results: a row has {len(values)} columns, header {len(header)}"
            )
        out.append(dict(zip(header, values, strict=True)))
    return header, out
