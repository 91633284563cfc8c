"""REST API: query/queryAll with cursors, sObject CRUD, collections, describe, limits."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .errors import SalesforceError, not_found
from .ids import IdSequence, is_valid_id, to18
from .schema import BY_PREFIX, EXTERNAL_ID_FIELDS, SCHEMA, SCHEMA_LOWER, Field, SObject, describe
from .soql import QueryResult, execute
from .state import OrgState, Transaction

JSON = "application/json"
MAX_COLLECTION = 200
CURSOR_IDLE_S = 15 * 60
MAX_CURSORS = 200
RECORDS_KEY = web.RequestKey("records", int)
USER_KEY = web.RequestKey("user_id", str)
LIMITS_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("limits_provider")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON)


def error_response(err: SalesforceError) -> web.Response:
    return json_response(err.body(), err.status)


@dataclass
class Cursor:
    result: QueryResult
    batch_size: int
    version: str
    last_used_s: float


def batch_size_of(request: web.Request) -> int:
    """Sforce-Query-Options: batchSize=N, clamped to 200..2000 (default 2000)."""
    raw = request.headers.get("Sforce-Query-Options", "")
    for part in raw.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "batchsize":
            try:
                return max(200, min(2000, int(value)))
            except ValueError:
                return 2000
    return 2000


def change_origin(request: web.Request, version: str) -> str:
    origin = f"com/salesforce/api/rest/{version}"
    opts = request.headers.get("Sforce-Call-Options", "")
    for part in opts.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "client" and value:
            return f"{origin};client={value.strip()}"
    return origin


class RestApi:
    """Handlers under /services/data/v{version}/."""

    def __init__(self, state: OrgState, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.cursors: OrderedDict[str, Cursor] = OrderedDict()
        self.locators = IdSequence("01g")

    def register(self, app: web.Application) -> None:
        r = app.router
        base = "/services/data/v{version}"
        r.add_get("/services/data", self.versions)
        r.add_get("/services/data/", self.versions)
        for suffix in ("", "/"):
            r.add_get(base + suffix, self.resources)
            r.add_get(base + "/query" + suffix, self.query)
            r.add_get(base + "/queryAll" + suffix, self.query_all)
            r.add_get(base + "/limits" + suffix, self.limits)
            r.add_get(base + "/sobjects" + suffix, self.global_describe)
            r.add_get(base + "/sobjects/{sobject}" + suffix, self.sobject_info)
            r.add_post(base + "/sobjects/{sobject}" + suffix, self.create)
            r.add_get(base + "/sobjects/{sobject}/describe" + suffix, self.describe)
            r.add_route("*", base + "/sobjects/{sobject}/{id}" + suffix, self.record)
            r.add_route("*", base + "/sobjects/{sobject}/{field}/{value}" + suffix,
                        self.by_external_id)
            r.add_route("*", base + "/composite/sobjects" + suffix, self.collection)
        r.add_get(base + "/query/{locator}", self.query_more)
        r.add_get(base + "/queryAll/{locator}", self.query_more)

    # -- misc -----------------------------------------------------------------------------------
    async def versions(self, request: web.Request) -> web.Response:
        return json_response([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v}
                              for v in ("58.0", "59.0", "60.0", "61.0", "62.0", "63.0", "64.0",
                                        "65.0", "66.0")])

    async def resources(self, request: web.Request) -> web.Response:
        v = request.match_info["version"]
        base = f"/services/data/v{v}"
        return json_response({k: f"{base}/{k}" for k in (
            "limits", "query", "queryAll", "sobjects", "composite", "jobs")})

    async def limits(self, request: web.Request) -> web.Response:
        app_limits = request.app.get(LIMITS_KEY)
        body = app_limits() if app_limits else {}
        return json_response(body)

    async def global_describe(self, request: web.Request) -> web.Response:
        v = request.match_info["version"]
        sobjects = []
        for obj in SCHEMA.values():
            d = describe(obj, v)
            sobjects.append({k: d[k] for k in ("name", "label", "labelPlural", "keyPrefix",
                                                "custom", "createable", "updateable",
                                                "deletable", "queryable", "urls")})
        return json_response({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})

    async def sobject_info(self, request: web.Request) -> web.Response:
        obj = self._obj(request)
        d = describe(obj, request.match_info["version"])
        return json_response({"objectDescribe": {k: v for k, v in d.items() if k != "fields"},
                              "recentItems": []})

    async def describe(self, request: web.Request) -> web.Response:
        obj = self._obj(request)
        return json_response(describe(obj, request.match_info["version"]))

    def _obj(self, request: web.Request) -> Any:
        obj = SCHEMA_LOWER.get(request.match_info["sobject"].lower())
        if obj is None:
            raise not_found()
        return obj

    # -- query ----------------------------------------------------------------------------------
    async def query(self, request: web.Request) -> web.Response:
        return self._query(request, include_deleted=False)

    async def query_all(self, request: web.Request) -> web.Response:
        return self._query(request, include_deleted=True)

    def _query(self, request: web.Request, *, include_deleted: bool) -> web.Response:
        version = request.match_info["version"]
        q = request.query.get("q")
        if q is None:
            raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
        result = execute(self.state, q, include_deleted=include_deleted, version=version)
        if result.aggregate is not None:
            return json_response({"totalSize": len(result.aggregate), "done": True,
                                  "records": result.aggregate})
        if result.render is None:
            return json_response({"totalSize": result.total_size, "done": True, "records": []})
        cursor = Cursor(result, batch_size_of(request), version, self.clock())
        return self._page(request, cursor, None, 0)

    async def query_more(self, request: web.Request) -> web.Response:
        locator, _, offset_raw = request.match_info["locator"].rpartition("-")
        cursor = self.cursors.get(locator)
        if cursor is None or not offset_raw.isdigit() or (
                self.clock() - cursor.last_used_s > CURSOR_IDLE_S):
            self.cursors.pop(locator, None)
            raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        cursor.last_used_s = self.clock()
        self.cursors.move_to_end(locator)
        return self._page(request, cursor, locator, int(offset_raw))

    def _page(self, request: web.Request, cursor: Cursor, locator: str | None,
              offset: int) -> web.Response:
        result = cursor.result
        rows = result.rows
        end = min(offset + cursor.batch_size, len(rows))
        render = result.render
        assert render is not None
        records = [render(r) for r in rows[offset:end]]
        request[RECORDS_KEY] = len(records)
        body: dict[str, Any] = {"totalSize": result.total_size, "done": end >= len(rows)}
        if end < len(rows):
            if locator is None:
                locator = self.locators.next()
                self.cursors[locator] = cursor
                while len(self.cursors) > MAX_CURSORS:
                    self.cursors.popitem(last=False)
            body["nextRecordsUrl"] = f"/services/data/v{cursor.version}/query/{locator}-{end}"
        elif locator is not None:
            self.cursors.pop(locator, None)
        body["records"] = records
        return json_response(body)

    # -- sObject rows ---------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        obj = self._obj(request)
        if obj.name in ("User", "Group"):
            raise SalesforceError(400, "INVALID_TYPE_FOR_OPERATION",
                                  f"entity type {obj.name} does not support insert")
        values = await _json_object(request)
        version = request.match_info["version"]
        with self.state.transaction(origin=change_origin(request, version),
                                    user_id=_user(request, self.state)) as tx:
            sf_id = tx.create(obj.name, values)
        return json_response({"id": sf_id, "success": True, "errors": []}, 201)

    async def record(self, request: web.Request) -> web.Response:
        obj = self._obj(request)
        sf_id = request.match_info["id"]
        method = request.method
        if method == "POST" and request.query.get("_HttpMethod", "").upper() == "PATCH":
            method = "PATCH"
        version = request.match_info["version"]
        if method == "GET":
            return self._get_record(request, obj.name, sf_id, version)
        if method not in ("PATCH", "DELETE"):
            raise SalesforceError(405, "METHOD_NOT_ALLOWED",
                                  f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,"
                                  "DELETE,HEAD")
        if not is_valid_id(sf_id):
            raise SalesforceError(400, "MALFORMED_ID",
                                  f"{obj.name} ID: id value of incorrect type: {sf_id}", ["Id"])
        if not to18(sf_id).startswith(obj.key_prefix):
            raise not_found()
        with self.state.transaction(origin=change_origin(request, version),
                                    user_id=_user(request, self.state)) as tx:
            if method == "PATCH":
                values = await _json_object(request)
                if any(k.lower() == "id" for k in values):
                    values = {k: v for k, v in values.items() if k.lower() != "id"}
                tx.update(obj.name, sf_id, values)
            else:
                tx.delete(obj.name, sf_id)
        return web.Response(status=204)

    def _get_record(self, request: web.Request, obj_name: str, sf_id: str,
                    version: str) -> web.Response:
        obj = SCHEMA[obj_name]
        if not is_valid_id(sf_id):
            raise not_found()
        wanted = request.query.get("fields")
        names = [n.strip() for n in wanted.split(",")] if wanted else [
            f.name for f in obj.fields]
        soql = f"SELECT {', '.join(names)} FROM {obj.name} WHERE Id = '{to18(sf_id)}'"
        result = execute(self.state, soql, version=version)
        if not result.rows or result.render is None:
            raise not_found()
        return json_response(result.render(result.rows[0]))

    # -- external ids (upsert) ------------------------------------------------------------------
    async def by_external_id(self, request: web.Request) -> web.Response:
        obj = self._obj(request)
        version = request.match_info["version"]
        name = request.match_info["field"]
        value = request.match_info["value"]
        f = obj.get(name)
        if f is None or (f.name not in EXTERNAL_ID_FIELDS and f.name != "Id"):
            raise SalesforceError(404, "NOT_FOUND", "Provided external ID field does not exist "
                                  f"or is not accessible: {name}")
        matches = self._external_matches(obj, f, value)
        if len(matches) > 1:
            return json_response([f"/services/data/v{version}/sobjects/{obj.name}/{m}"
                                  for m in matches], 300)
        method = request.method
        if method == "POST" and request.query.get("_HttpMethod", "").upper() == "PATCH":
            method = "PATCH"
        if method == "GET":
            if not matches:
                raise not_found()
            return self._get_record(request, obj.name, matches[0], version)
        if method == "DELETE":
            if not matches:
                raise not_found()
            with self.state.transaction(origin=change_origin(request, version),
                                        user_id=_user(request, self.state)) as tx:
                tx.delete(obj.name, matches[0])
            return web.Response(status=204)
        if method != "PATCH":
            raise SalesforceError(405, "METHOD_NOT_ALLOWED",
                                  f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,"
                                  "DELETE,HEAD")
        values = await _json_object(request)
        if any(k.lower() == f.name.lower() for k in values) and f.name != "Id":
            raise SalesforceError(400, "INVALID_FIELD", f"{f.name} is specified in the URL; "
                                  "it should not be specified in the sobject data.")
        with self.state.transaction(origin=change_origin(request, version),
                                    user_id=_user(request, self.state)) as tx:
            if matches:
                tx.update(obj.name, matches[0], values)
                sf_id, created = matches[0], False
            elif f.name == "Id":
                raise not_found()
            else:
                sf_id, created = tx.create(obj.name, {**values, f.name: value}), True
        return json_response({"id": sf_id, "success": True, "errors": [], "created": created},
                             201 if created else 200)

    def _external_matches(self, obj: SObject, f: Field, value: str) -> list[str]:
        """Ids of the records whose external id field (or Id) equals value."""
        if f.name == "Id":
            sf_id = to18(value) if is_valid_id(value) else ""
            return [sf_id] if sf_id in self.state.tables[obj.name].rows else []
        literal = value.replace("\\", "\\\\").replace("'", "\\'")
        return [r[0] for r in execute(
            self.state, f"SELECT Id FROM {obj.name} WHERE {f.name} = '{literal}'").rows]

    # -- collections ----------------------------------------------------------------------------
    async def collection(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        origin = change_origin(request, version)
        user = _user(request, self.state)
        if request.method == "DELETE":
            ids = [i for i in request.query.get("ids", "").split(",") if i]
            all_or_none = request.query.get("allOrNone", "false").lower() == "true"
            if not ids or len(ids) > MAX_COLLECTION:
                raise _limit_error()
            items: list[tuple[str, Any]] = [("delete", i) for i in ids]
        elif request.method in ("POST", "PATCH"):
            body = await _json_object(request)
            records = body.get("records")
            if not isinstance(records, list) or not records:
                raise SalesforceError(400, "JSON_PARSER_ERROR", "records is required")
            if len(records) > MAX_COLLECTION:
                raise _limit_error()
            all_or_none = bool(body.get("allOrNone", False))
            op = "create" if request.method == "POST" else "update"
            items = [(op, r) for r in records]
        else:
            raise SalesforceError(405, "METHOD_NOT_ALLOWED",
                                  f"HTTP Method '{request.method}' not allowed")
        results: list[dict[str, Any]] = []
        failed = False
        with self.state.transaction(origin=origin, user_id=user) as tx:
            for op, item in items:
                mark = tx.savepoint()
                try:
                    sf_id = self._collection_item(tx, op, item)
                    results.append({"id": sf_id, "success": True, "errors": []})
                except SalesforceError as err:
                    failed = True
                    tx.rollback_to(mark)
                    entry: dict[str, Any] = {"success": False, "errors": [err.collection_error()]}
                    if op != "create":
                        entry["id"] = item if op == "delete" else (
                            item.get("id") if isinstance(item, dict) else None)
                    results.append(entry)
            if failed and all_or_none:
                tx.rollback()
                results = [_rolled_back(r) for r in results]
        return json_response(results)

    def _collection_item(self, tx: Transaction, op: str, item: Any) -> str:
        if op == "delete":
            sf_id = str(item)
            if not is_valid_id(sf_id):
                raise SalesforceError(400, "MALFORMED_ID", f"malformed id {sf_id}", [])
            obj = _obj_by_id(sf_id)
            tx.delete(obj, sf_id)
            return to18(sf_id)
        if not isinstance(item, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "record must be an object")
        attrs = item.get("attributes") or {}
        type_name = attrs.get("type") if isinstance(attrs, dict) else None
        if not type_name or str(type_name).lower() not in SCHEMA_LOWER:
            raise SalesforceError(400, "INVALID_TYPE",
                                  "sObject type must be specified in attributes.type")
        values = {k: v for k, v in item.items() if k != "attributes"}
        if op == "create":
            return tx.create(str(type_name), values)
        sf_id = values.pop("id", None) or values.pop("Id", None)
        if not isinstance(sf_id, str):
            raise SalesforceError(400, "MISSING_ARGUMENT", "Id not specified in an update call",
                                  ["Id"])
        tx.update(str(type_name), sf_id, values)
        return to18(sf_id) if is_valid_id(sf_id) else sf_id


def _rolled_back(r: dict[str, Any]) -> dict[str, Any]:
    if r["success"]:
        return {"id": r["id"], "success": False, "errors": [{
            "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
            "message": "Record rolled back because not all records were valid and the request "
                       "was using AllOrNone header", "fields": []}]}
    return r


def _limit_error() -> SalesforceError:
    return SalesforceError(400, "EXCEEDED_ID_LIMIT",
                           "record limit reached. cannot submit more than 200 records into "
                           "this call")


def _obj_by_id(sf_id: str) -> str:
    obj = BY_PREFIX.get(sf_id[:3])
    if obj is None:
        raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
    return obj.name


def _user(request: web.Request, state: OrgState) -> str:
    user = request.get(USER_KEY)
    return user if user else state.integration_user_id


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise SalesforceError(400, "JSON_PARSER_ERROR",
                              f"Unexpected character: was expecting a JSON value ({exc})") from None
    if not isinstance(body, dict):
        raise SalesforceError(400, "JSON_PARSER_ERROR",
                              "Cannot deserialize instance of sObject from a non-object value")
    return body
