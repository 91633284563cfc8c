"""Fault plan: the next N calls to a path fail with a status, hang, drop the connection or lag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

FaultKind = Literal["status", "hang", "drop", "slow"]
KINDS: Final[frozenset[str]] = frozenset({"status", "hang", "drop", "slow"})
ANY_PATH: Final = "*"

_DEFAULT_BODIES: Final[dict[int, dict[str, Any]]] = {
    429: {"msg": "Exceeded rate limit.", "code": "RateLimitExceeded", "params": {}},
    500: {"msg": "Internal server error", "code": "GenericError", "params": None},
    502: {"msg": "Bad gateway", "code": "GenericError", "params": None},
    503: {"msg": "Service unavailable", "code": "GenericError", "params": None},
}


@dataclass
class Fault:
    """One armed fault; `remaining` calls left before it disarms."""

    kind: FaultKind
    path: str
    remaining: int
    method: str | None = None
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        if self.method is not None and self.method != method:
            return False
        return self.path == ANY_PATH or self.path == path or (
            self.path.endswith("*") and path.startswith(self.path[:-1])
        )

    def reply_body(self) -> Any:
        """The body a `status` fault answers with."""
        if self.body is not None:
            return self.body
        return _DEFAULT_BODIES.get(
            self.status, {"msg": f"HTTP {self.status}", "code": "GenericError", "params": None}
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready view of the fault."""
        return {
            "kind": self.kind,
            "path": self.path,
            "method": self.method,
            "remaining": self.remaining,
            "status": self.status,
            "body": self.body,
            "headers": self.headers,
            "delay_s": self.delay_s,
        }


class FaultPlan:
    """Armed faults, consumed in the order they were added.

    `path` is an exact request path (`/api/users/bulkUpdate`), a prefix ending in `*`
    (`/api/users/*`), or `*` for every API call. A `hang` sleeps `delay_s` (default one hour, i.e.
    past any client timeout) before answering normally; a `slow` fault delays the call by
    `delay_s` and then answers normally; a `drop` closes the connection without an answer.
    """

    HANG_S: Final = 3600.0

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.triggered: list[dict[str, Any]] = []

    def add(
        self,
        kind: FaultKind,
        path: str = ANY_PATH,
        times: int = 1,
        *,
        method: str | None = None,
        status: int = 503,
        body: Any = None,
        headers: dict[str, str] | None = None,
        delay_s: float | None = None,
    ) -> Fault:
        """Arm a fault for the next `times` matching calls."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(KINDS)}")
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError(f"a status fault needs a 4xx/5xx status, got {status}")
        if delay_s is None:
            delay_s = self.HANG_S if kind == "hang" else 0.0
        fault = Fault(
            kind=kind,
            path=path,
            remaining=times,
            method=method.upper() if method else None,
            status=status,
            body=body,
            headers=dict(headers or {}),
            delay_s=delay_s,
        )
        self._faults.append(fault)
        return fault

    def fail_next(
        self,
        path: str = ANY_PATH,
        times: int = 1,
        status: int = 503,
        body: Any = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> Fault:
        """The next `times` calls to `path` answer `status` with `body` (default: Iterable-like)."""
        return self.add(
            "status", path, times, method=method, status=status, body=body, headers=headers
        )

    def hang_next(
        self, path: str = ANY_PATH, times: int = 1, delay_s: float | None = None
    ) -> Fault:
        """The next `times` calls to `path` hang for `delay_s` (default one hour) first."""
        return self.add("hang", path, times, delay_s=delay_s)

    def drop_next(self, path: str = ANY_PATH, times: int = 1) -> Fault:
        """The next `times` calls to `path` have their connection closed without an answer."""
        return self.add("drop", path, times)

    def slow_next(self, path: str = ANY_PATH, times: int = 1, delay_s: float = 1.0) -> Fault:
        """The next `times` calls to `path` are answered normally after `delay_s`."""
        return self.add("slow", path, times, delay_s=delay_s)

    def __bool__(self) -> bool:
        return bool(self._faults)

    def clear(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        """The armed faults, as JSON-ready dicts."""
        return [f.describe() for f in self._faults]

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first fault matching the request, if any."""
        if not self._faults:
            return None
        for i, fault in enumerate(self._faults):
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                self.triggered.append({"kind": fault.kind, "method": method, "path": path})
                return fault
        return None
