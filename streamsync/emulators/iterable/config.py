"""Settings of the Iterable emulator; the running emulator reads them on every call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .profiles import ProjectType

TypeMismatchMode = Literal["per_user", "batch"]
FOUR_MB = 4 * 1024 * 1024


@dataclass
class IterableEmulatorConfig:
    """How the emulated Iterable behaves.

    - `project_type`, `api_key`, `create_new_fields`: the first project (more can be added).
    - `latency_ms` per call plus `latency_per_user_ms` per user of a bulk request.
    - `lag_s`: delay between receipt and a write reaching the profiles; `bulk_lag_s` and
      `single_lag_s` override it per queue (bulkUpdate vs update/updateEmail/delete), which is
      how the documented bulk-vs-single ordering caveat is reproduced.
    - `max_body_bytes` (4 MB) and `oversize_status`: 413 (an HTML page from the ingress) or 400
      (`BatchTooLarge`). `max_users_per_request`: None means no cap (Iterable documents none).
    - `type_mismatch`: "per_user" lists users in `failedUpdates.invalidData*` with HTTP 200;
      "batch" rejects the whole request with 400 `RequestFieldsTypesMismatched`.
    - `max_fields`: unique user fields per project (nested fields count).
    - `rate_limits`: False starts with every limit lifted; `burst` overrides bucket sizes per
      endpoint group; `retry_after`: None (no header), "auto", or a number of seconds.
    - `clock`/`wall_clock`: injectable monotonic and wall clocks (tests pass fakes).

    Subscriptions, lists, events (sources and inferred parts:
    streamsync/emulators/iterable/README.md):
    - `opt_in_message_types`: the project has the CSM-enabled opt-in feature (an OptIn type is
      seeded); off, `subscribedMessageTypeIds` is refused.
    - `subscriptions_api`: the CSM-enabled /api/subscriptions endpoints (off: 404 NotFound);
      `subscriptions_status`: 200 or 202 for their successful replies.
    - `list_ids_field`: the profile's list array name: "auto" (emailListIds in email-based
      projects, userListIds otherwise), "emailListIds" or "userListIds".
    - `max_subscription_requests`, `max_list_subscribers`, `max_events_per_request`: item caps
      (Iterable documents none; 1000 each by default; None lifts them).
    - `events_create_users`: track/trackBulk create unknown users (default: reported notFound).
    - `export_lag_s`: how long a subscribe/unsubscribe event takes to appear in the export.
    - `webhook_url`: where system webhooks go (None: no deliveries); see webhooks.py.
    """

    project_type: ProjectType = "email"
    api_key: str | None = None
    create_new_fields: bool = True
    latency_ms: float = 20.0
    latency_per_user_ms: float = 0.0
    lag_s: float = 0.0
    bulk_lag_s: float | None = None
    single_lag_s: float | None = None
    max_body_bytes: int = FOUR_MB
    oversize_status: Literal[413, 400] = 413
    max_users_per_request: int | None = None
    type_mismatch: TypeMismatchMode = "per_user"
    max_fields: int = 1000
    rate_limits: bool = True
    burst: dict[str, float] = field(default_factory=dict)
    retry_after: float | str | None = None
    record_history: bool = True
    opt_in_message_types: bool = True
    subscriptions_api: bool = True
    subscriptions_status: Literal[200, 202] = 200
    list_ids_field: Literal["auto", "emailListIds", "userListIds"] = "auto"
    max_subscription_requests: int | None = 1000
    max_list_subscribers: int | None = 1000
    max_events_per_request: int | None = 1000
    events_create_users: bool = False
    export_lag_s: float = 0.0
    webhook_url: str | None = None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.oversize_status not in (413, 400):
            raise ValueError(f"oversize_status must be 413 or 400, got {self.oversize_status}")
        if self.type_mismatch not in ("per_user", "batch"):
            raise ValueError(f"type_mismatch must be per_user or batch, got {self.type_mismatch}")
        if self.max_body_bytes < 1 or self.max_fields < 1:
            raise ValueError("max_body_bytes and max_fields must be positive")
        if self.latency_ms < 0 or self.latency_per_user_ms < 0 or self.lag_s < 0:
            raise ValueError("latencies and lags cannot be negative")
        if self.export_lag_s < 0:
            raise ValueError("export_lag_s cannot be negative")
        if self.subscriptions_status not in (200, 202):
            raise ValueError(
                f"subscriptions_status must be 200 or 202, got {self.subscriptions_status}"
            )
        if self.list_ids_field not in ("auto", "emailListIds", "userListIds"):
            raise ValueError("list_ids_field must be auto, emailListIds or userListIds")

    def list_field(self, project_type: str) -> str:
        """The name a profile's list array goes by in this project."""
        if self.list_ids_field != "auto":
            return self.list_ids_field
        return "emailListIds" if project_type == "email" else "userListIds"

    @property
    def effective_bulk_lag_s(self) -> float:
        """Lag of the bulk queue."""
        return self.lag_s if self.bulk_lag_s is None else self.bulk_lag_s

    @property
    def effective_single_lag_s(self) -> float:
        """Lag of the single-user queue."""
        return self.lag_s if self.single_lag_s is None else self.single_lag_s
