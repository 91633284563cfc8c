"""Emulator state: projects and API keys, lagged write queues, write history and call counts."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .profiles import Project, ProjectType
from .updates import Receipt, Rejection, UserWrite, Write, apply_write, write_keys

Clock = Callable[[], float]
KeyKind = Literal["server_side", "read_only"]
QUEUES = ("bulk", "single")


@dataclass
class ApiKey:
    """An API key bound to one project."""

    key: str
    project_id: str
    kind: KeyKind = "server_side"
    enabled: bool = True

    @property
    def identifier(self) -> str:
        """The last 8 characters, which is all Iterable shows of a key."""
        return self.key[-8:]


class WriteQueue:
    """Writes waiting `lag_s` after receipt before they reach the profiles (FIFO)."""

    def __init__(self, name: str, lag_s: float) -> None:
        self.name = name
        self.lag_s = lag_s
        self.items: deque[tuple[float, Project, Write]] = deque()

    def next_due(self) -> float | None:
        """When the oldest waiting write is due, if any."""
        return self.items[0][0] if self.items else None


class EmulatorState:
    """Everything the emulator knows; tests read it through the Python API."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        bulk_lag_s: float = 0.0,
        single_lag_s: float = 0.0,
        record_history: bool = True,
    ) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.record_history = record_history
        self.projects: dict[str, Project] = {}
        self.keys: dict[str, ApiKey] = {}
        self.default_project_id: str | None = None
        self.queues: dict[str, WriteQueue] = {
            "bulk": WriteQueue("bulk", bulk_lag_s),
            "single": WriteQueue("single", single_lag_s),
        }
        self.call_counts: Counter[tuple[str, int]] = Counter()
        self.write_calls: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()
        self.requests_received = 0
        self.users_received = 0
        self._next_project = 1001
        self.wakeup = asyncio.Event()

    # -- projects and keys ---------------------------------------------------------------------

    def add_project(
        self,
        project_type: ProjectType = "email",
        api_key: str | None = None,
        name: str | None = None,
        create_new_fields: bool = True,
    ) -> tuple[Project, str]:
        """A new project with one server-side key; returns the project and the key."""
        project_id = str(self._next_project)
        self._next_project += 1
        project = Project(project_id, project_type, name, create_new_fields)
        self.projects[project_id] = project
        if self.default_project_id is None:
            self.default_project_id = project_id
        return project, self.add_key(project_id, api_key)

    def add_key(
        self, project_id: str, key: str | None = None, kind: KeyKind = "server_side"
    ) -> str:
        """Another key for a project (32 hex characters unless given)."""
        if project_id not in self.projects:
            raise KeyError(f"no project {project_id!r}")
        if kind not in ("server_side", "read_only"):
            raise ValueError(f"unknown key kind {kind!r}")
        key = key or secrets.token_hex(16)
        if key in self.keys:
            raise ValueError("that API key is already in use")
        self.keys[key] = ApiKey(key, project_id, kind)
        return key

    def disable_key(self, key: str) -> None:
        """Make a key answer 401 'Disabled API key or insufficient privileges'."""
        self.keys[key].enabled = False

    def project(self, project_id: str | None = None) -> Project:
        """A project by id (default: the first one created)."""
        pid = project_id if project_id is not None else self.default_project_id
        if pid is None or pid not in self.projects:
            raise KeyError(f"no project {project_id!r}")
        return self.projects[pid]

    # -- writes --------------------------------------------------------------------------------

    def next_request_no(self) -> int:
        """A number for each API request, in arrival order."""
        self.requests_received += 1
        return self.requests_received

    def submit(self, project: Project, writes: list[Write], queue: str) -> None:
        """Queue accepted writes; with no lag (and nothing waiting) they apply at once."""
        q = self.queues[queue]
        if q.lag_s <= 0 and not q.items:
            wall = self.wall_clock()
            mono = self.clock()
            for write in writes:
                self._apply(project, write, mono, wall)
            return
        for write in writes:
            q.items.append((write_receipt(write).mono_s + q.lag_s, project, write))
        self.wakeup.set()

    def apply_due(self, now: float | None = None) -> int:
        """Apply every queued write whose lag has passed (a single step); returns how many."""
        now = self.clock() if now is None else now
        applied = 0
        for q in self.queues.values():
            while q.items and q.items[0][0] <= now:
                _, project, write = q.items.popleft()
                self._apply(project, write, self.clock(), self.wall_clock())
                applied += 1
        return applied

    def flush(self, queue: str | None = None) -> int:
        """Apply every queued write now, lag or not (each queue in its own order)."""
        applied = 0
        for name, q in self.queues.items():
            if queue is not None and name != queue:
                continue
            while q.items:
                _, project, write = q.items.popleft()
                self._apply(project, write, self.clock(), self.wall_clock())
                applied += 1
        return applied

    def pending(self) -> dict[str, int]:
        """Writes waiting in each queue."""
        return {name: len(q.items) for name, q in self.queues.items()}

    def next_due(self) -> float | None:
        """The earliest due time over both queues."""
        dues = [d for d in (q.next_due() for q in self.queues.values()) if d is not None]
        return min(dues) if dues else None

    def _apply(self, project: Project, write: Write, mono: float, wall: float) -> None:
        profile, outcome = apply_write(project, write, wall)
        if profile is not None and not outcome.startswith("skipped"):
            self.note_change(write_receipt(write).endpoint)
        if not self.record_history:
            return
        receipt = write_receipt(write)
        entry: dict[str, Any] = {
            "endpoint": receipt.endpoint,
            "queue": receipt.queue,
            "request_no": receipt.request_no,
            "received_mono": receipt.mono_s,
            "received_wall": receipt.wall_s,
            "applied_mono": mono,
            "applied_wall": wall,
            "outcome": outcome,
            "email": profile.email if profile is not None else None,
            "userId": profile.user_id if profile is not None else None,
        }
        if isinstance(write, UserWrite):
            entry["dataFields"] = write.data
        keys = write_keys(write)
        if profile is not None:
            keys += [k for k in (profile.email, profile.user_id) if k is not None and k not in keys]
        for key in keys:
            project.history[key].append(entry)

    def record_rejection(self, project: Project, rejection: Rejection, receipt: Receipt) -> None:
        """File a write refused at receipt in the history of the key it was reported under."""
        if not self.record_history:
            return
        project.history[rejection.key].append(
            {
                "endpoint": receipt.endpoint,
                "queue": receipt.queue,
                "request_no": receipt.request_no,
                "received_mono": receipt.mono_s,
                "received_wall": receipt.wall_s,
                "applied_mono": None,
                "applied_wall": None,
                "outcome": f"rejected: {rejection.category}",
                "detail": rejection.detail,
            }
        )

    # -- observability -------------------------------------------------------------------------

    def snapshot(self, project_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Every profile keyed by email (userId for users without one, and in userId projects)."""
        project = self.project(project_id)
        out: dict[str, dict[str, Any]] = {}
        for profile in project.profiles():
            if project.project_type == "userId" or profile.email is None:
                key = profile.user_id
            else:
                key = profile.email
            assert key is not None
            out[key] = profile.snapshot_view()
        return out

    def history(self, key: str, project_id: str | None = None) -> list[dict[str, Any]]:
        """The writes received for an email or userId, in the order they were applied/refused."""
        project = self.project(project_id)
        found = project.history.get(key)
        if found is None:
            found = project.history.get(key.lower(), [])
        return list(found)

    def record_call(self, endpoint: str, status: int) -> None:
        """Count one answered call (status 0: connection dropped); 2xx writes count apart."""
        self.call_counts[(endpoint, status)] += 1
        if 200 <= status < 300 and not endpoint.startswith("GET "):
            self.write_calls[endpoint] += 1

    def note_change(self, endpoint: str, n: int = 1) -> None:
        """Count `n` things (users, events, lists) an endpoint changed."""
        if n:
            self.changes[endpoint] += n

    def writes(self) -> dict[str, dict[str, int]]:
        """Accepted write calls and changes made, per endpoint (a dry run shows none)."""
        return {
            "calls": dict(sorted(self.write_calls.items())),
            "changes": dict(sorted(self.changes.items())),
        }

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Calls to an endpoint (e.g. `POST /api/users/bulkUpdate`), optionally of one status."""
        return sum(
            n for (ep, st), n in self.call_counts.items()
            if ep == endpoint and (status is None or st == status)
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Calls per endpoint and status, JSON-ready."""
        out: dict[str, dict[str, int]] = {}
        for (endpoint, status), n in sorted(self.call_counts.items()):
            out.setdefault(endpoint, {})[str(status)] = n
        return out

    def reset(self) -> None:
        """Drop users, queued writes, history and counts; keep projects, keys and schemas."""
        for project in self.projects.values():
            project.clear_users()
        for q in self.queues.values():
            q.items.clear()
        self.call_counts.clear()
        self.write_calls.clear()
        self.changes.clear()


def write_receipt(write: Write) -> Receipt:
    """The receipt a write carries."""
    return write.receipt
