"""One exception tree for streamsync, sorted by what the caller should do.

    StreamsyncError
    ├── ConfigError          bad config.toml or missing secret: refuse to start, name the key
    ├── UsageError           the command line is wrong (exit 2): an unknown channel, a bad time
    ├── FatalError           cannot go on without an operator (credentials rejected for good)
    │   └── AuthError        the token endpoint said no (invalid_grant, bad key)
    ├── RetriableError       try again later, with backoff and jitter
    │   ├── RateLimited      429 / REQUEST_LIMIT_EXCEEDED; carries retry_after_s when sent
    │   ├── SessionExpired   INVALID_SESSION_ID / 401::Authentication invalid: re-auth, then retry
    │   └── TransientError   5xx, timeouts, dropped connections, malformed replies
    └── RecordError          one record can never succeed as it is: dead-letter it with `reason`

Foreign exceptions (aiohttp, sqlite, json) are translated into this tree at the edge (adapters).
`Terminated` stands apart: SIGTERM arrived during a command, which stops like Ctrl-C.
"""

from __future__ import annotations

MESSAGE_CHARS = 200


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


class Terminated(Exception):
    """SIGTERM arrived during a command: it was cancelled as Ctrl-C cancels it."""


class FatalError(StreamsyncError):
    """An error no retry can fix; the service stops and says why."""


class AuthError(FatalError):
    """Credentials were rejected by the identity provider."""


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


class Stopped(StreamsyncError):
    """Asked to stop while a retry was waiting (start-up waiting out an outage, for one)."""


class RecordError(StreamsyncError):
    """A single record that cannot be synced as it is; goes to the dead-letter table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
