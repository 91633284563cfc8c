"""The fault plan: latency, and the next N calls to a path failing, hanging or dropping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Action = Literal["fail", "hang", "drop"]


@dataclass
class FaultRule:
    """The next `remaining` calls whose path starts with `path_prefix` get `action`."""

    action: Action
    path_prefix: str
    remaining: int
    method: str | None = None
    status: int = 500
    body: bytes = b""
    content_type: str = "application/json"
    hang_s: float | None = None  # None: until the client gives up
    hits: int = 0
    headers: dict[str, str] | None = None  # extra reply headers of a "fail" (Retry-After)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "path": self.path_prefix, "remaining": self.remaining,
                "method": self.method, "status": self.status, "hits": self.hits}


@dataclass
class FaultPlan:
    """Latency settings and one-shot fault rules, consulted on every API call."""

    latency_ms: float = 0.0
    per_record_ms: float = 0.0
    rules: list[FaultRule] = field(default_factory=list)

    def set_latency(self, latency_ms: float, per_record_ms: float = 0.0) -> None:
        if latency_ms < 0 or per_record_ms < 0:
            raise ValueError("latency must be >= 0")
        self.latency_ms = latency_ms
        self.per_record_ms = per_record_ms

    def fail_next(self, path_prefix: str, count: int = 1, *, status: int = 500,
                  body: Any = None, content_type: str = "application/json",
                  method: str | None = None,
                  headers: dict[str, str] | None = None) -> FaultRule:
        """The next `count` calls to the path prefix answer `status` with `body` (and
        `headers`, e.g. a Retry-After)."""
        if body is None:
            body = [{"message": "An unexpected error occurred. Please include this ErrorId if "
                     "you contact support: 1234567890-12345 (-1234567890)",
                     "errorCode": "UNKNOWN_EXCEPTION"}]
        raw = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else orjson.dumps(body))
        return self._add(FaultRule("fail", path_prefix, count, method, status, raw,
                                   content_type, headers=headers))

    def hang_next(self, path_prefix: str, count: int = 1, *, seconds: float | None = None,
                  method: str | None = None) -> FaultRule:
        """The next `count` calls never answer (or answer after `seconds`)."""
        return self._add(FaultRule("hang", path_prefix, count, method, hang_s=seconds))

    def drop_next(self, path_prefix: str, count: int = 1, *,
                  method: str | None = None) -> FaultRule:
        """The next `count` calls get their connection closed without a reply."""
        return self._add(FaultRule("drop", path_prefix, count, method))

    def _add(self, rule: FaultRule) -> FaultRule:
        if rule.remaining < 1:
            raise ValueError("count must be >= 1")
        self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first matching rule, consuming one of its calls."""
        for rule in self.rules:
            if rule.remaining > 0 and path.startswith(rule.path_prefix) and (
                    rule.method is None or rule.method.upper() == method.upper()):
                rule.remaining -= 1
                rule.hits += 1
                if rule.remaining == 0:
                    self.rules.remove(rule)
                return rule
        return None

    def clear(self) -> None:
        self.rules.clear()
        self.latency_ms = 0.0
        self.per_record_ms = 0.0

    def delay_s(self, records: int) -> float:
        return (self.latency_ms + self.per_record_ms * records) / 1000.0

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "per_record_ms": self.per_record_ms,
                "rules": [r.to_json() for r in self.rules]}
