"""The REST Composite resource (POST /services/data/vXX.X/composite): up to 25 subrequests on
sObject rows and queries, `@{referenceId.path}` references, allOrNone."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from .errors import SalesforceError, not_found
from .ids import is_valid_id, to18
from .rest import _json_object, _user, change_origin, json_response
from .schema import SCHEMA_LOWER, SObject
from .soql import execute
from .state import OrgState, Transaction

MAX_SUBREQUESTS = 25
MAX_QUERIES = 5
_REF_RE = re.compile(r"@\{([A-Za-z][A-Za-z0-9_]*)\.([^}]+)\}")
_PATH_RE = re.compile(r"^/services/data/v(\d+\.\d+)/(sobjects|query)(?:/(.*?))?/?$")
_STEP_RE = re.compile(r"([A-Za-z0-9_]+)|\[(\d+)\]")
_ROLLED_BACK = {"errorCode": "PROCESSING_HALTED",
                "message": "The transaction was rolled back since another operation in the "
                           "same transaction failed."}

Result = tuple[int, Any, dict[str, str]]  # status, body, headers


class _Unresolved(Exception):
    """A reference to a subrequest that failed, was not run or has no such value."""


class CompositeApi:
    """POST /services/data/v{version}/composite."""

    def __init__(self, state: OrgState) -> None:
        self.state = state

    def register(self, app: web.Application) -> None:
        for suffix in ("", "/"):
            app.router.add_post("/services/data/v{version}/composite" + suffix, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        subrequests = body.get("compositeRequest")
        if not isinstance(subrequests, list) or not subrequests \
                or not all(isinstance(s, dict) for s in subrequests):
            raise SalesforceError(400, "JSON_PARSER_ERROR",
                                  "compositeRequest must be a non-empty array of subrequests")
        if len(subrequests) > MAX_SUBREQUESTS:
            raise SalesforceError(400, "LIMIT_EXCEEDED", f"Composite request cannot have more "
                                  f"than {MAX_SUBREQUESTS} subrequests")
        refs = [s.get("referenceId") for s in subrequests]
        if not all(isinstance(r, str) and r for r in refs) or len(set(refs)) != len(refs):
            raise SalesforceError(400, "INVALID_INPUT", "Each subrequest needs a referenceId, "
                                  "unique within the request")
        queries = sum(1 for s in subrequests if "/query" in str(s.get("url", "")))
        if queries > MAX_QUERIES:
            raise SalesforceError(400, "LIMIT_EXCEEDED", f"Composite request cannot have more "
                                  f"than {MAX_QUERIES} query operations")
        version = request.match_info["version"]
        origin = change_origin(request, version)
        user = _user(request, self.state)
        if body.get("allOrNone") is True:
            return json_response({"compositeResponse": self._all_or_none(
                subrequests, version, origin, user)})
        out: list[dict[str, Any]] = []
        done: dict[str, Any] = {}
        for sub in subrequests:
            try:
                with self.state.transaction(origin=origin, user_id=user) as tx:
                    status, result, headers = self._run(tx, sub, done, version)
                    if status >= 400:
                        raise _Failed(status, result)
            except _Unresolved as exc:
                status, result, headers = 400, [{"errorCode": "PROCESSING_HALTED",
                                                 "message": str(exc)}], {}
            except _Failed as exc:
                status, result, headers = exc.status, exc.body, {}
            if status < 400:
                done[sub["referenceId"]] = result
            out.append(_item(sub, status, result, headers))
        return json_response({"compositeResponse": out})

    def _all_or_none(self, subrequests: list[dict[str, Any]], version: str, origin: str,
                     user: str) -> list[dict[str, Any]]:
        """One transaction: the first failure rolls every subrequest back."""
        results: list[Result] = []
        done: dict[str, Any] = {}
        try:
            with self.state.transaction(origin=origin, user_id=user) as tx:
                for sub in subrequests:
                    try:
                        status, result, headers = self._run(tx, sub, done, version)
                    except _Unresolved as exc:
                        status, result, headers = 400, [{"errorCode": "PROCESSING_HALTED",
                                                         "message": str(exc)}], {}
                    results.append((status, result, headers))
                    if status >= 400:
                        raise _Failed(status, result)
                    done[sub["referenceId"]] = result
        except _Failed:
            failed = len(results) - 1
            return [_item(sub, *results[n]) if n == failed else _item(sub, 400, [_ROLLED_BACK],
                                                                          {})
                    for n, sub in enumerate(subrequests)]
        return [_item(s, *r) for s, r in zip(subrequests, results, strict=True)]

    # -- one subrequest ------------------------------------------------------------------------
    def _run(self, tx: Transaction, sub: dict[str, Any], done: dict[str, Any],
             version: str) -> Result:
        method = str(sub.get("method", "")).upper()
        url = _resolve(str(sub.get("url", "")), done)
        body = sub.get("body")
        if body is not None:
            body = _resolve_body(body, done)
        parts = urlsplit(url)
        m = _PATH_RE.match(parts.path)
        if m is None:
            return _error(SalesforceError(400, "NOT_FOUND", f"The requested resource does not "
                                          f"exist or is not supported in composite: {url}"))
        kind, rest = m.group(2), (m.group(3) or "")
        try:
            if kind == "query":
                if method != "GET" or rest:
                    raise _method_not_allowed(method)
                return self._query(parts.query, version)
            return self._sobject(tx, method, rest.split("/"), body, parts.query, version)
        except SalesforceError as err:
            return _error(err)

    def _query(self, query: str, version: str) -> Result:
        q = parse_qs(query).get("q")
        if not q:
            raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
        result = execute(self.state, q[0], version=version)
        if result.aggregate is not None:
            return 200, {"totalSize": len(result.aggregate), "done": True,
                         "records": result.aggregate}, {}
        render = result.render
        records = [render(r) for r in result.rows[:2000]] if render is not None else []
        if len(result.rows) > 2000:
            raise SalesforceError(400, "QUERY_TOO_COMPLICATED", "A query in a composite request "
                                  "returns at most 2000 records here; add a LIMIT")
        return 200, {"totalSize": result.total_size, "done": True, "records": records}, {}

    def _sobject(self, tx: Transaction, method: str, path: list[str], body: Any, query: str,
                 version: str) -> Result:
        obj = SCHEMA_LOWER.get(path[0].lower()) if path and path[0] else None
        if obj is None:
            raise not_found()
        if obj.name in ("User", "Group") and method != "GET":
            raise SalesforceError(400, "INVALID_TYPE_FOR_OPERATION",
                                  f"entity type {obj.name} does not support {method}")
        base = f"/services/data/v{version}/sobjects/{obj.name}"
        if len(path) == 1:
            if method != "POST":
                raise _method_not_allowed(method)
            sf_id = tx.create(obj.name, _values(body))
            return 201, {"id": sf_id, "success": True, "errors": []}, {
                "Location": f"{base}/{sf_id}"}
        if len(path) != 2:
            raise not_found()
        sf_id = path[1]
        if method == "GET":
            return 200, self._get(obj, sf_id, query, version), {}
        if not is_valid_id(sf_id):
            raise SalesforceError(400, "MALFORMED_ID",
                                  f"{obj.name} ID: id value of incorrect type: {sf_id}", ["Id"])
        if not to18(sf_id).startswith(obj.key_prefix):
            raise not_found()
        if method == "PATCH":
            values = {k: v for k, v in _values(body).items() if k.lower() != "id"}
            tx.update(obj.name, sf_id, values)
            return 204, None, {}
        if method == "DELETE":
            tx.delete(obj.name, sf_id)
            return 204, None, {}
        raise _method_not_allowed(method)

    def _get(self, obj: SObject, sf_id: str, query: str, version: str) -> Any:
        if not is_valid_id(sf_id) or not to18(sf_id).startswith(obj.key_prefix):
            raise not_found()
        wanted = parse_qs(query).get("fields")
        names = [n.strip() for n in wanted[0].split(",")] if wanted else [
            f.name for f in obj.fields]
        unknown = [n for n in names if obj.get(n) is None]
        if unknown:
            raise SalesforceError(400, "INVALID_FIELD",
                                  f"No such column '{unknown[0]}' on entity '{obj.name}'")
        soql = f"SELECT {', '.join(names)} FROM {obj.name} WHERE Id = '{to18(sf_id)}'"
        result = execute(self.state, soql, version=version)
        if not result.rows or result.render is None:
            raise not_found()
        return result.render(result.rows[0])


class _Failed(Exception):
    """A failed subrequest: roll its transaction back, report its error."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _item(sub: dict[str, Any], status: int, body: Any, headers: dict[str, str]
          ) -> dict[str, Any]:
    return {"body": body, "httpHeaders": headers, "httpStatusCode": status,
            "referenceId": sub["referenceId"]}


def _error(err: SalesforceError) -> Result:
    return err.status, err.body(), {}


def _method_not_allowed(method: str) -> SalesforceError:
    return SalesforceError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")


def _values(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SalesforceError(400, "JSON_PARSER_ERROR",
                              "Cannot deserialize instance of sObject from a non-object value")
    return {k: v for k, v in body.items() if k != "attributes"}


def _lookup(done: dict[str, Any], ref: str, path: str) -> Any:
    if ref not in done:
        raise _Unresolved(f"Invalid reference specified. No value for {ref}.{path} found in "
                          f"{ref}. Provided referenceId ('{ref}') refers to a subrequest that "
                          "failed, was not run or comes later.")
    value = done[ref]
    for name, index in _STEP_RE.findall(path.replace(".", " ")):
        try:
            value = value[int(index)] if index else value[name]
        except (KeyError, IndexError, TypeError):
            raise _Unresolved(f"Invalid reference specified. No value for {ref}.{path} found "
                              f"in {ref}.") from None
    return value


def _resolve(text: str, done: dict[str, Any]) -> str:
    return _REF_RE.sub(lambda m: str(_lookup(done, m.group(1), m.group(2))), text)


def _resolve_body(body: Any, done: dict[str, Any]) -> Any:
    if isinstance(body, str):
        whole = _REF_RE.fullmatch(body)
        if whole is not None:
            return _lookup(done, whole.group(1), whole.group(2))
        return _resolve(body, done)
    if isinstance(body, dict):
        return {k: _resolve_body(v, done) for k, v in body.items()}
    if isinstance(body, list):
        return [_resolve_body(v, done) for v in body]
    return body
