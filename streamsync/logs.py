"""Structured logging: JSON lines off a terminal (journald-friendly), readable lines on one.

Every log call names a stable event and passes key-value fields:

    log = get_logger(__name__)
    log.info("flush.batch_sent", object="Lead", users=1000, status=200)

Values whose key looks like a secret are redacted, and `Redactor` masks any configured secret
value that would otherwise end up in a message or a field.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import orjson

SECRET_KEY_HINTS = (
    "secret", "password", "token", "api_key", "apikey", "private_key", "authorization", "assertion"
)
REDACTED = "[redacted]"


class Redactor:
    """Masks known secret values wherever they appear in a log record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def field(self, key: str, value: Any) -> Any:
        lowered = key.lower()
        if any(hint in lowered for hint in SECRET_KEY_HINTS) and not lowered.endswith(
            ("_count", "_s", "_ms", "_total")
        ):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        return value


_REDACTOR = Redactor()


def redactor() -> Redactor:
    """The process-wide redactor; config loading registers every secret with it."""
    return _REDACTOR


class StructuredLogger:
    """A thin wrapper over `logging.Logger` that takes an event name and fields."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: Mapping[str, Any], exc: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": dict(fields)}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc=True)


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    raw = getattr(record, "fields", {})
    return {k: _REDACTOR.field(k, v) for k, v in raw.items()}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _REDACTOR.text(record.getMessage()),
        }
        body.update(_fields(record))
        if record.exc_info:
            body["exc"] = _REDACTOR.text(self.formatException(record.exc_info))
        return orjson.dumps(body, default=str).decode()


class HumanFormatter(logging.Formatter):
    """`12:00:01 INFO  flush.batch_sent object=Lead users=1000` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {_REDACTOR.text(record.getMessage())} {pairs}"
        if record.exc_info:
            line += "\n" + _REDACTOR.text(self.formatException(record.exc_info))
        return line.rstrip()


def setup_logging(
    level: str = "info", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Configure the root logger once: JSON when `stream` is not a terminal, unless forced."""
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
