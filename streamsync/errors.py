"""One exception tree for streamsync, sorted by what the caller should do.

    StreamsyncError
    ├── ConfigError          bad config.toml or missing secret: refuse to start, name the key
    ├── FatalError           cannot go on without an operator (credentials rejected for good)
    │   └── AuthError        the token endpoint said no (invalid_grant, bad key)
    ├── RetriableError       try again later, with backoff and jitter
    │   ├── RateLimited      429 / REQUEST_LIMIT_EXCEEDED; carries retry_after_s when sent
    │   ├── SessionExpired   INVALID_SESSION_ID / 401::Authentication invalid: re-auth, then retry
    │   └── TransientError   5xx, timeouts, dropped connections, malformed replies
    └── RecordError          one record can never succeed as it is: dead-letter it with `reason`

Foreign exceptions (aiohttp, sqlite, json) are translated into this tree at the edge (adapters).
"""

from __future__ import annotations


class StreamsyncError(Exception):
    """Base of every error streamsync raises on purpose."""


class ConfigError(StreamsyncError):
    """The configuration is invalid; the message names the offending key."""


class FatalError(StreamsyncError):
    """An error no retry can fix; the service stops and says why."""


class AuthError(FatalError):
    """Credentials were rejected by the identity provider."""


class RetriableError(StreamsyncError):
    """A transient fault: the same call may succeed later."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(RetriableError):
    """The remote side asked us to slow down (HTTP 429 or a request limit)."""


class SessionExpired(RetriableError):
    """The access token expired or was revoked: re-authenticate, then retry."""


class TransientError(RetriableError):
    """5xx, timeout, dropped connection or a reply that could not be parsed."""


class RecordError(StreamsyncError):
    """A single record that cannot be synced as it is; goes to the dead-letter table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
