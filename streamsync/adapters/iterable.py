"""Iterable users API client: bulk updates with per-user failure attribution, single-user calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from streamsync.adapters.http import HttpResponse, UsageCounter, excerpt, send
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.errors import (
    AuthError,
    BatchError,
    BatchRejected,
    BatchTooLarge,
    RateLimited,
    RecordError,
    TransientError,
    UnexpectedStatus,
)
from streamsync.logs import get_logger

log = get_logger(__name__)

API = "iterable"
BULK_UPDATE = "bulkUpdate"
"""The endpoint name bulkUpdate calls are counted under (readiness watches it)."""
SUBSCRIPTIONS = "subscriptions"
"""The endpoint name of `PUT /api/subscriptions/{group}/{id}` calls."""
SUBSCRIPTION_GROUPS = ("emailList", "messageType", "messageChannel")
TRACK_BULK = "trackBulk"
"""The endpoint name events/trackBulk calls are counted under."""
Secret = str | Callable[[], str]

# failedUpdates list name → (identifier kind, reason recorded in the dead-letter table)
FAILURE_LISTS: dict[str, tuple[str, str]] = {
    "invalidEmails": ("email", "invalid_email"),
    "invalidUserIds": ("userId", "invalid_user_id"),
    "invalidDataEmails": ("email", "invalid_data"),
    "invalidDataUserIds": ("userId", "invalid_data"),
    "forgottenEmails": ("email", "forgotten"),
    "forgottenUserIds": ("userId", "forgotten"),
    "conflictEmails": ("email", "conflict"),
    "conflictUserIds": ("userId", "conflict"),
    "notFoundEmails": ("email", "not_found"),
    "notFoundUserIds": ("userId", "not_found"),
}
# Iterable error codes on single-user calls → per-record reason
RECORD_REASONS: dict[str, str] = {
    "InvalidEmailAddressError": "invalid_email",
    "InvalidUserIdError": "invalid_user_id",
    "EmailAlreadyExists": "conflict",
    "UserIdAlreadyExists": "conflict",
    "ExternalKeyConflict": "conflict",
    "ForgottenUserError": "forgotten",
    "UnknownEmailError": "not_found",
    "UnknownUserIdError": "not_found",
    "NotFound": "not_found",
    "RequestFieldsTypesMismatched": "type_mismatch",
    "UniqueFieldsLimitExceeded": "field_limit",
}


@dataclass(frozen=True, slots=True)
class UserFailure:
    """One user Iterable did not update, by the identifier it reported."""

    key: str
    kind: str  # "email" or "userId"
    reason: str


@dataclass(frozen=True, slots=True)
class BulkResult:
    """A 200 reply to bulkUpdate: counts, per-user failures, and field bookkeeping."""

    success_count: int
    fail_count: int
    failures: tuple[UserFailure, ...] = ()
    created_fields: tuple[str, ...] = ()
    filtered_out_fields: tuple[str, ...] = ()
    _by_email: dict[str, str] = field(default_factory=dict, repr=False)
    _by_user_id: dict[str, str] = field(default_factory=dict, repr=False)

    def reason_for(self, *, email: str | None = None, user_id: str | None = None) -> str | None:
        """The failure reason of the user sent with this email/userId, or None if it succeeded.
        Emails compare case-insensitively (Iterable stores them lower-cased)."""
        if email is not None:
            reason = self._by_email.get(email.lower())
            if reason is not None:
                return reason
        if user_id is not None:
            return self._by_user_id.get(user_id)
        return None


def parse_bulk_result(body: Any) -> BulkResult:
    """Build a BulkResult from a bulkUpdate 200 body (failedUpdates plus the deprecated
    top-level invalidEmails/invalidUserIds)."""
    if not isinstance(body, dict) or "successCount" not in body or "failCount" not in body:
        raise TransientError("iterable bulkUpdate: 200 reply lacks successCount/failCount")
    if not all(_is_count(body[name]) for name in ("successCount", "failCount")):
        raise TransientError("iterable bulkUpdate: 200 reply with successCount/failCount that "
                             "are not counts: "
                             f"{body['successCount']!r}/{body['failCount']!r}"[:200])
    lists: dict[str, list[Any]] = {}
    failed = body.get("failedUpdates")
    if isinstance(failed, dict):
        for name, values in failed.items():
            if isinstance(values, list):
                lists.setdefault(name, []).extend(values)
    for name in ("invalidEmails", "invalidUserIds"):
        values = body.get(name)
        if isinstance(values, list):
            lists.setdefault(name, []).extend(values)
    failures: list[UserFailure] = []
    by_email: dict[str, str] = {}
    by_user_id: dict[str, str] = {}
    for name, values in lists.items():
        if name.startswith("noOp"):
            continue  # nothing to change for those users: not a failure
        kind, reason = FAILURE_LISTS.get(
            name, ("userId" if name.endswith("UserIds") else "email", _snake(name))
        )
        target = by_email if kind == "email" else by_user_id
        for value in values:
            key = str(value)
            lookup = key.lower() if kind == "email" else key
            if lookup in target:
                continue  # listed in failedUpdates and the deprecated top level
            target[lookup] = reason
            failures.append(UserFailure(key, kind, reason))
    return BulkResult(
        success_count=int(body["successCount"]),
        fail_count=int(body["failCount"]),
        failures=tuple(failures),
        created_fields=tuple(str(f) for f in body.get("createdFields") or ()),
        filtered_out_fields=tuple(str(f) for f in body.get("filteredOutFields") or ()),
        _by_email=by_email,
        _by_user_id=by_user_id,
    )


def parse_group_failures(body: Any) -> tuple[UserFailure, ...]:
    """Users a `PUT /api/subscriptions/...` reply says it could not change: lists in `params`
    named like bulkUpdate's failure lists (the shape is undocumented, docs/iterable.md §12)."""
    params = body.get("params") if isinstance(body, dict) else None
    if not isinstance(params, dict):
        return ()
    out: list[UserFailure] = []
    for name, values in params.items():
        if not isinstance(values, list) or not name.endswith(("Emails", "UserIds")):
            continue
        kind, reason = FAILURE_LISTS.get(
            name, ("userId" if name.endswith("UserIds") else "email", _snake(name)))
        out.extend(UserFailure(str(v), kind, reason) for v in values)
    return tuple(out)
@dataclass(frozen=True, slots=True)
class TrackResult:
    """A 200 reply to events/trackBulk: per-user failures and the event names refused."""

    result: BulkResult
    disallowed_names: frozenset[str]


def parse_track_result(body: Any) -> TrackResult:
    """BulkTrackResponse: the bulkUpdate shape plus `disallowedEventNames`."""
    names = body.get("disallowedEventNames") if isinstance(body, dict) else None
    return TrackResult(parse_bulk_result(body),
                       frozenset(str(n) for n in names) if isinstance(names, list)
                       else frozenset())


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    return out.removesuffix("_emails").removesuffix("_user_ids").strip("_") or "failed"


def _envelope(resp: HttpResponse) -> tuple[str, str, Any]:
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return "", excerpt(resp.body), None
    if isinstance(body, dict):
        return str(body.get("code", "")), str(body.get("msg", "")), body.get("params")
    return "", excerpt(resp.body), None


def mismatched_fields(params: Any) -> dict[str, dict[str, Any]]:
    """Field name → detail from RequestFieldsTypesMismatched params.validationErrors; keys look
    like `<project prefix>:::<fieldName>`."""
    errors = params.get("validationErrors") if isinstance(params, dict) else None
    out: dict[str, dict[str, Any]] = {}
    if isinstance(errors, dict):
        for key, detail in errors.items():
            name = str(key).split(":::", 1)[-1]
            out[name] = detail if isinstance(detail, dict) else {"detail": detail}
    return out


def error_for(resp: HttpResponse) -> Exception:
    """Map a non-2xx Iterable reply (of any endpoint) to the error tree."""
    status = resp.status
    code, msg, params = _envelope(resp)
    where = f"iterable {resp.endpoint}"
    if status == 429 or code == "RateLimitExceeded":
        return RateLimited(f"{where}: rate limited: {msg}")
    if status in (408, 425) or status >= 500 or code in ("DatabaseError", "GenericError"):
        return TransientError(f"{where}: HTTP {status} {code}: {msg}")
    if status in (401, 403) or code in (
        "BadApiKey", "BadAuthorizationHeader", "Unauthorized", "Forbidden"
    ):
        return AuthError(f"{where}: the API key was refused (HTTP {status} {code}): {msg}")
    if status == 404 and not code:
        # Iterable's ingress answers unknown routes with an HTML 404: a wrong base URL, not a
        # problem of the records in the request.
        return UnexpectedStatus(API, resp.endpoint, status, msg)
    if status == 413 or code == "BatchTooLarge":
        return BatchTooLarge(status, code or "BatchTooLarge", msg or "request body too large")
    if code == "RequestFieldsTypesMismatched":
        return BatchRejected(status, code, msg, params, mismatched_fields(params))
    return BatchError(status, code or f"HTTP_{status}", msg, params)


def describe_mismatches(fields: Mapping[str, Mapping[str, Any]]) -> str:
    """Each field Iterable refused with the type it expects and the type it got, e.g.
    `field title: Iterable expects date, the record sends string` (never the value itself)."""
    parts = []
    for name in sorted(fields):
        detail = fields[name]
        expected = detail.get("expectedType")
        incoming = detail.get("incomingTypes")
        sent = incoming[0] if isinstance(incoming, list) and incoming else None
        text = f"field {name}"
        if expected:
            text += f": Iterable expects {expected}"
            if sent:
                text += f", the record sends {sent}"
        parts.append(text)
    return "; ".join(parts)


def _record_error(error: Exception) -> Exception:
    """On single-user calls a request rejection concerns that one user: a RecordError."""
    if isinstance(error, BatchTooLarge):
        return RecordError("too_large", error.msg)
    if isinstance(error, BatchRejected):
        return RecordError("type_mismatch", describe_mismatches(error.fields) or error.msg)
    if isinstance(error, BatchError):
        reason = RECORD_REASONS.get(error.code)
        if reason is None:
            # A JSON 404 or "User does not exist" means the user is unknown (an HTML 404, a
            # wrong base URL, is an UnexpectedStatus and never gets here).
            unknown = "does not exist" in error.msg.lower() or error.status == 404
            reason = "not_found" if unknown else "rejected"
        return RecordError(reason, f"{error.code}: {error.msg}")
    return error


class IterableClient:
    """Calls Iterable's users API with the `Api-Key` header (never logged, hidden in repr).

    It does not retry (callers declare a `streamsync.retry.Policy`). With a `bulk_limiter` (one
    RateLimiter shared by every writer of the project), each bulkUpdate waits for an in-flight
    place and a send slot, and a 429 slows the limiter down. Every call is counted in `counter` per
    endpoint and status.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: Secret,
        counter: UsageCounter | None = None,
        *,
        timeout_s: float | None = None,
        bulk_limiter: RateLimiter | None = None,
        subscription_limiter: RateLimiter | None = None,
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.counter = counter if counter is not None else UsageCounter()
        self._timeout_s = timeout_s
        self.bulk_limiter = bulk_limiter
        self.subscription_limiter = subscription_limiter

    def __repr__(self) -> str:
        return f"IterableClient(base_url={self.base_url!r}, api_key=[redacted])"

    def _headers(self, with_body: bool) -> dict[str, str]:
        key = self._api_key() if callable(self._api_key) else self._api_key
        headers = {"Api-Key": key, "Accept": "application/json"}
        if with_body:
            headers["Content-Type"] = "application/json"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        return await send(
            self._session,
            method,
            self.base_url + path,
            api=API,
            endpoint=endpoint,
            counter=self.counter,
            headers=self._headers(data is not None),
            params=params,
            data=data,
            timeout_s=self._timeout_s,
            error_for=error_for,
        )

    async def _paced(self, limiter: RateLimiter | None, method: str, path: str, endpoint: str,
                     *, data: bytes | None = None, params: Mapping[str, str] | None = None
                     ) -> HttpResponse:
        """`_call` in one of `limiter`'s send slots (none: at once); a 429 slows the limiter
        down before it is raised, the one place that does for every paced endpoint."""
        if limiter is None:
            return await self._call(method, path, endpoint, data=data, params=params)
        async with limiter.slot():
            try:
                return await self._call(method, path, endpoint, data=data, params=params)
            except RateLimited as exc:
                limiter.on_rate_limited(exc.retry_after_s)
                raise

    async def _single(self, method: str, path: str, endpoint: str, **body: Any) -> HttpResponse:
        """`_call` for one user: a request rejection is that user's RecordError."""
        try:
            return await self._call(method, path, endpoint, **body)
        except BatchError as exc:
            raise _record_error(exc) from exc

    async def bulk_update(self, body: bytes) -> BulkResult:
        """POST /api/users/bulkUpdate with a pre-encoded body `{"users": [...], ...}`.

        200 → BulkResult (per-user failures by reason); 400 RequestFieldsTypesMismatched →
        BatchRejected; 413/BatchTooLarge → BatchTooLarge; other 400 → BatchError;
        429 → RateLimited; 5xx, timeouts, network → TransientError; 401 → AuthError.
        """
        resp = await self._paced(self.bulk_limiter, "POST", "/api/users/bulkUpdate",
                                 BULK_UPDATE, data=body)
        return parse_bulk_result(resp.json())

    async def track_bulk(self, body: bytes, limiter: RateLimiter | None = None) -> TrackResult:
        """POST /api/events/trackBulk with a pre-encoded `{"events": [...]}` body; errors map
        as for bulk_update. `limiter`: the trackBulk rate limiter (10 requests/s)."""
        resp = await self._paced(limiter, "POST", "/api/events/trackBulk", TRACK_BULK,
                                 data=body)
        return parse_track_result(resp.json())

    async def user_events(self, *, email: str | None = None, user_id: str | None = None,
                          limit: int = 200) -> list[dict[str, Any]]:
        """GET /api/events/{email} (or byUserId): a user's most recent events, newest first."""
        if (email is None) == (user_id is None):
            raise ValueError("give exactly one of email and user_id")
        path = (f"/api/events/{quote(email, safe='@')}" if email is not None
                else f"/api/events/byUserId/{quote(str(user_id), safe='')}")
        resp = await self._call("GET", path, "getEvents", params={"limit": str(limit)})
        body = resp.json()
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            raise TransientError("iterable getEvents: reply has no events list")
        return [e for e in events if isinstance(e, dict)]

    async def update_user(self, user: Mapping[str, Any]) -> None:
        """POST /api/users/update for one user (`email` or `userId`, `dataFields`, ...).
        A rejection of that user (invalid email, type mismatch, conflict) is a RecordError."""
        await self._single("POST", "/api/users/update", "update", data=orjson.dumps(user))

    async def update_email(
        self,
        new_email: str,
        *,
        current_email: str | None = None,
        current_user_id: str | None = None,
    ) -> None:
        """POST /api/users/updateEmail: move a profile to `new_email`, keeping its history."""
        if (current_email is None) == (current_user_id is None):
            raise ValueError("give exactly one of current_email and current_user_id")
        body: dict[str, str] = {"newEmail": new_email}
        if current_email is not None:
            body["currentEmail"] = current_email
        else:
            body["currentUserId"] = str(current_user_id)
        await self._single(
            "POST", "/api/users/updateEmail", "updateEmail", data=orjson.dumps(body)
        )

    async def get_user(
        self, *, email: str | None = None, user_id: str | None = None
    ) -> dict[str, Any] | None:
        """The user profile (`{"email", "userId", "dataFields"}`) or None when unknown
        (Iterable answers 200 `{}` for an unknown user)."""
        if (email is None) == (user_id is None):
            raise ValueError("give exactly one of email and user_id")
        if email is not None:
            resp = await self._single(
                "GET", "/api/users/getByEmail", "getUser", params={"email": email}
            )
        else:
            resp = await self._single(
                "GET", "/api/users/byUserId", "getUser", params={"userId": str(user_id)}
            )
        body = resp.json()
        if not isinstance(body, dict):
            raise TransientError("iterable getUser: reply is not a JSON object")
        user = body.get("user")
        return user if isinstance(user, dict) else None

    async def delete_user(self, *, email: str | None = None, user_id: str | None = None) -> bool:
        """Delete a user; True if Iterable deleted one, False if there was none (idempotent)."""
        if (email is None) == (user_id is None):
            raise ValueError("give exactly one of email and user_id")
        if email is not None:
            path = f"/api/users/{quote(email, safe='@')}"
        else:
            path = f"/api/users/byUserId/{quote(str(user_id), safe='')}"
        try:
            await self._single("DELETE", path, "deleteUser")
        except RecordError as exc:
            if exc.reason == "not_found":
                return False
            raise
        return True

    async def get_fields(self) -> dict[str, str]:
        """GET /api/users/getFields: field name (dotted for nested) → type."""
        resp = await self._call("GET", "/api/users/getFields", "getFields")
        body = resp.json()
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            raise TransientError("iterable getFields: reply has no fields object")
        return {str(k): str(v) for k, v in fields.items()}

    async def update_subscription_group(
        self, group: str, group_id: int, *, subscribe: bool,
        emails: Sequence[str] = (), user_ids: Sequence[str] = (),
    ) -> tuple[UserFailure, ...]:
        """PUT /api/subscriptions/{group}/{id}?action=subscribe|unsubscribe for many users: one
        group changed, the users' other subscriptions untouched (docs/iterable.md §12). Returns
        the users the reply says were not changed. Paced by `subscription_limiter`."""
        if group not in SUBSCRIPTION_GROUPS:
            raise ValueError(f"unknown subscription group {group!r}")
        body = orjson.dumps({"users": list(emails), "usersByUserId": list(user_ids)})
        path = f"/api/subscriptions/{group}/{int(group_id)}"
        params = {"action": "subscribe" if subscribe else "unsubscribe"}
        resp = await self._paced(self.subscription_limiter, "PUT", path, SUBSCRIPTIONS,
                                 data=body, params=params)
        return parse_group_failures(resp.json())

    async def _listing(self, path: str, endpoint: str, key: str) -> list[dict[str, Any]]:
        resp = await self._call("GET", path, endpoint)
        body = resp.json()
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise TransientError(f"iterable {endpoint}: reply has no {key} list")
        return [item for item in items if isinstance(item, dict)]

    async def get_channels(self) -> list[dict[str, Any]]:
        """GET /api/channels: `[{"id", "name", "channelType", "messageMedium"}]`."""
        return await self._listing("/api/channels", "channels", "channels")

    async def get_message_types(self) -> list[dict[str, Any]]:
        """GET /api/messageTypes: `[{"id", "name", "channelId", "subscriptionPolicy", ...}]`."""
        return await self._listing("/api/messageTypes", "messageTypes", "messageTypes")

    async def get_lists(self) -> list[dict[str, Any]]:
        """GET /api/lists: `[{"id", "name", "listType", ...}]` (names are not unique)."""
        return await self._listing("/api/lists", "lists", "lists")
