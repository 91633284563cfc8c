"""One exception tree for streamsync, sorted by what the caller should do. Every exception
class of the product lives here (tests/test_errors.py checks it).

    StreamsyncError          typed attributes: api, endpoint, status, retry_after_s
    ├── ConfigError          usage/config: bad config.toml or missing secret: refuse to start
    │   ├── SoqlError        an identifier, literal or filter not safe to send (also ValueError)
    │   ├── UnknownList      a consent list name that names no single Iterable list
    │   └── ReloadRefused    a new config (SIGHUP) not applied: invalid, or needs a restart
    ├── UsageError           usage/config: the command line is wrong (exit 2)
    ├── FatalError           fatal: cannot go on without an operator
    │   ├── AuthError        the token endpoint or Iterable refused the credentials
    │   ├── UnexpectedStatus an HTTP reply no adapter rule covers (an unexpected 4xx)
    │   ├── SalesforceError  Salesforce refused a call for a reason no retry fixes
    │   │   ├── QueryError   the SOQL is wrong or too long
    │   │   └── BulkJobFailed a Bulk API 2.0 job ended Failed or Aborted
    │   ├── BackfillError    a backfill cannot start or go on as asked
    │   ├── WritesFailed     a backfill stops: Iterable took none of a call's records
    │   ├── StoreBusy        another live run holds the store
    │   └── LeadershipLost   a fenced write refused: another worker leads this CDC channel
    ├── RetriableError       retriable: try again later, with backoff and jitter
    │   ├── RateLimited      429 / REQUEST_LIMIT_EXCEEDED / RateLimitExceeded
    │   ├── SessionExpired   401 / INVALID_SESSION_ID: re-authenticate, then retry
    │   ├── TransientError   5xx, 408, timeouts, dropped connections, unparsable replies
    │   │   └── CircuitOpen  a call not made while its destination's breaker is open
    │   └── Unreachable      a flush's Salesforce call failed: wait out, no attempt spent
    ├── RecordError          record: this record can never succeed as it is: dead-letter it
    │   ├── MalformedEvent   a CometD message that is not a well-formed CDC event
    │   │   └── UnexpectedEntity  an event of an object this service does not sync
    │   ├── MalformedConsentEvent  an Iterable subscribe/unsubscribe event that cannot be acted on
    │   └── BatchError       Iterable refused a whole request: split it to find the records
    │       ├── BatchRejected  field types mismatched (RequestFieldsTypesMismatched)
    │       └── BatchTooLarge  413 / BatchTooLarge: halve and resend
    └── Stopped              stop: asked to stop while a retry was waiting
        ├── WindowTaken      stop this backfill window: another process took it over
        └── Superseded       stop this re-sync: a reload changed the mapping again

Standing apart (not StreamsyncError, so no `except StreamsyncError` swallows them):
`Terminated` (stop: SIGTERM during a command, stops like Ctrl-C) and `ConfigProblems` (a
ValueError pydantic needs inside validators; config loading turns it into ConfigError).
Foreign exceptions (aiohttp, sqlite, json) are translated into this tree at the edge (adapters).
"""

from __future__ import annotations

from typing import Any, Protocol

MESSAGE_CHARS = 200


class _Describable(Protocol):
    def describe(self) -> str: ...


class StreamsyncError(Exception):
    """Base of every error streamsync raises on purpose. The typed attributes say where it
    happened (`api`, `endpoint`, HTTP `status`) and how long the remote side asked us to wait
    (`retry_after_s`); logs, metrics and readiness read these, never the message text."""

    api: str | None = None
    endpoint: str | None = None
    status: int | None = None
    retry_after_s: float | None = None

    def __init__(self, message: str = "", *, api: str | None = None,
                 endpoint: str | None = None, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.api = api
        self.endpoint = endpoint
        self.status = status
        self.retry_after_s = retry_after_s


class ConfigError(StreamsyncError):
    """The configuration is invalid; the message names the offending key."""


class UsageError(StreamsyncError):
    """The command line is wrong (exit 2), e.g. an unknown channel or a bad --from value."""


class SoqlError(ConfigError, ValueError):
    """A SOQL identifier, literal or filter that is not safe to send."""


class UnknownList(ConfigError):
    """A configured Iterable list name that names no single list (consent.remove_from_lists)."""


class ReloadRefused(ConfigError):
    """A new config (SIGHUP) is not applied; `reason` says why, `keys` what needs a restart."""

    def __init__(self, reason: str, keys: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keys = keys or []


class ConfigProblems(ValueError):
    """Several problems under one config key, raised inside a pydantic validator (which needs a
    ValueError): (sub-key, message) pairs; config loading reports them as ConfigError."""

    def __init__(self, items: list[tuple[str | tuple[str | int, ...], str]],
                 message: str) -> None:
        super().__init__(message)
        self.items = items


class Terminated(Exception):
    """SIGTERM arrived during a command: it was cancelled as Ctrl-C cancels it."""


class FatalError(StreamsyncError):
    """An error no retry can fix; the service stops and says why."""


class AuthError(FatalError):
    """Credentials were rejected by the identity provider."""


class UnexpectedStatus(FatalError):
    """A non-retriable HTTP reply that no adapter rule covers (an unexpected 4xx)."""

    def __init__(self, api: str, endpoint: str, status: int, detail: str) -> None:
        super().__init__(f"{api} {endpoint} answered HTTP {status}: {detail}", api=api,
                         endpoint=endpoint, status=status)
        self.detail = detail


class SalesforceError(FatalError):
    """Salesforce refused a call for a reason no retry fixes (an unexpected 4xx)."""

    def __init__(self, status: int, error_code: str, message: str, endpoint: str) -> None:
        super().__init__(f"salesforce {endpoint}: HTTP {status} {error_code}: {message}",
                         api="salesforce", endpoint=endpoint, status=status)
        self.error_code = error_code
        self.sf_message = message


class QueryError(SalesforceError):
    """The SOQL itself is wrong or too long (MALFORMED_QUERY, INVALID_FIELD, HTTP 414):
    fix the configuration or the query builder; retrying cannot help."""


class BulkJobFailed(SalesforceError):
    """A Bulk API 2.0 query job ended in state Failed or Aborted."""


class BackfillError(FatalError):
    """The backfill cannot start or go on as asked (unknown object, ambiguous resume...)."""


class WritesFailed(FatalError):
    """Iterable took none of a call's records (unreachable, down, key refused): the run stops
    with its checkpoints before that call, so it is not marked finished and `--resume` sends
    the call again. `advice` says what to do."""

    def __init__(self, message: str, advice: str) -> None:
        super().__init__(message)
        self.advice = advice


class StoreBusy(FatalError):
    """Another live `streamsync run` holds the store; `holder` describes it (None: unknown)."""

    def __init__(self, store_path: object, holder: _Describable | None) -> None:
        who = holder.describe() if holder is not None else "holder unknown"
        super().__init__(
            f"store {store_path} is in use by another `streamsync run` ({who}); stop that one "
            "first, or give this one its own [queue].path")
        self.holder = holder


class LeadershipLost(FatalError):
    """The store refused a write fenced by a channel's leadership token: another worker took
    the channel over (its lease expired). Ends this worker's subscription of the channel, not
    the service: the worker goes back to following (runtime/subscriptions.py)."""

    def __init__(self, channel: str, token: int | None, current: int | None) -> None:
        held = "nobody" if current is None else f"token {current}"
        super().__init__(f"leadership of {channel} lost: this worker's token {token} is stale "
                         f"(the store has {held})")
        self.channel = channel
        self.token = token
        self.current = current


class RetriableError(StreamsyncError):
    """A transient fault: the same call may succeed later. `retry_in_place` False: later, not
    now (retry.Policy passes it on at once)."""

    retry_in_place = True


class RateLimited(RetriableError):
    """The remote side asked us to slow down (HTTP 429 or a request limit)."""


class SessionExpired(RetriableError):
    """The access token expired or was revoked: re-authenticate, then retry."""


class TransientError(RetriableError):
    """5xx, timeout, dropped connection or a reply that could not be parsed."""


class CircuitOpen(TransientError):
    """A call not made: its destination's breaker is open (it is down). Not retried in place
    (the breaker says when to try again); the records go back to the queue."""

    retry_in_place = False


class Unreachable(RetriableError):
    """A Salesforce call of a flush failed for a reason of Salesforce's, not of the records:
    the rows wait out the outage of `destination` without spending an attempt."""

    def __init__(self, destination: str, error: RetriableError) -> None:
        super().__init__(f"{destination}: {error}", api=error.api, endpoint=error.endpoint,
                         status=error.status, retry_after_s=error.retry_after_s)
        self.destination = destination
        self.error = error


class Stopped(StreamsyncError):
    """Asked to stop while a retry was waiting (start-up waiting out an outage, for one)."""


class Superseded(Stopped):
    """A mapping re-sync was replaced (a reload changed the mapping again) while it ran."""


class WindowTaken(Stopped):
    """This process's lease on a backfill window expired and another process took the window
    over: stop working on it (its checkpoint is the other process's now)."""


class RecordError(StreamsyncError):
    """A single record that cannot be synced as it is; goes to the dead-letter table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MalformedEvent(RecordError):
    """A CometD message that is not a well-formed CDC event; carries what could be read."""

    def __init__(self, detail: str, *, channel: str | None = None,
                 replay_id: int | None = None) -> None:
        super().__init__("malformed_event", detail)  # models.EventProblem's codes
        self.channel = channel
        self.replay_id = replay_id


class MalformedConsentEvent(RecordError):
    """An Iterable subscribe/unsubscribe event (system webhook body or export line) that
    lacks what acting on it needs: a known event name, a user, a creation time."""

    def __init__(self, detail: str) -> None:
        super().__init__("malformed_consent_event", detail)


class UnexpectedEntity(MalformedEvent):
    """A well-formed event for an object this service does not sync."""

    def __init__(self, entity: str, *, channel: str | None = None,
                 replay_id: int | None = None) -> None:
        super().__init__(f"events of {entity!r} are not configured", channel=channel,
                         replay_id=replay_id)
        self.reason = "unknown_entity"
        self.entity = entity


class BatchError(RecordError):
    """Iterable refused a whole request (HTTP 400 BadParams, BadJsonBody, ...): nothing in it
    was applied. The records are the cause: the writer splits the batch to find them (a retry
    as is cannot succeed); `reason` is what a single record would be dead-lettered for."""

    default_reason = "rejected"

    def __init__(self, status: int, code: str, msg: str, params: Any = None) -> None:
        super().__init__(self.default_reason, f"{code}: {msg}")
        self.args = (f"iterable rejected the request: HTTP {status} {code}: {msg}",)
        self.api = "iterable"
        self.status = status
        self.code = code
        self.msg = msg
        self.params = params


class BatchRejected(BatchError):
    """400 RequestFieldsTypesMismatched: some users carry values whose type does not match the
    project's field types. `fields` maps each offending field name to Iterable's detail
    (expectedType, incomingTypes, offendingValue); the caller isolates the offending users."""

    default_reason = "type_mismatch"  # models.DeadLetterReason's codes

    def __init__(self, status: int, code: str, msg: str, params: Any,
                 fields: dict[str, dict[str, Any]]) -> None:
        super().__init__(status, code, msg, params)
        self.fields = fields


class BatchTooLarge(BatchError):
    """413, or 400 BatchTooLarge: the body or user count is over the limit; split and resend."""

    default_reason = "too_large"


def describe_error(error: BaseException) -> dict[str, object]:
    """Log fields of `error`: its class, the typed attributes it has, and its message cut to
    MESSAGE_CHARS (the logger masks any secret in it)."""
    fields: dict[str, object] = {"error": type(error).__name__}
    for name in ("api", "endpoint", "status", "retry_after_s", "reason"):
        value = getattr(error, name, None)
        if value is not None:
            fields[name] = value
    message = str(error)
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "..."
    fields["message"] = message
    return fields
