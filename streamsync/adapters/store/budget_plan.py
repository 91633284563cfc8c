"""The shared Iterable rate budget's booking rule, pure arithmetic shared by every backend.

A budget is a schedule of send slots: `tat` is the time of the next free slot of the whole
budget (a generic cell-rate algorithm with no burst: slots are `1 / rate` apart), and each kind of
drawer (`service`, `backfill`) has a lane `tat` of its own that advances at its guaranteed share
of the rate. A process books a few slots at a time in one store transaction (`claim`), then sends
at those times. Times are the store's clock (the database's, shared by every process on it).

The rule (docs/design.md §10.1):
- a claim within its kind's share (lane not more than `horizon_s` ahead) may book slots up to
  `horizon_s` ahead of now: each kind is guaranteed its share (service 60 %, backfill 40 %);
- a claim beyond its share books only while the budget is idle (next free slot within
  `IDLE_HORIZON_S`), at most `IDLE_SLOTS` slots: what one kind leaves, the other may take;
- the store's clock stepping back (a wall-clock correction) never stalls the budget: a `tat`
  more than `MAX_AHEAD_S` ahead can only come from that and is reset to now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

DrawerKind = Literal["service", "backfill"]
KINDS: Final[tuple[DrawerKind, ...]] = ("service", "backfill")
SHARES: Final[dict[DrawerKind, float]] = {"service": 0.6, "backfill": 0.4}
"""The guaranteed share of the ceiling per kind of drawer (sums to 1)."""
HORIZON_S: Final = 1.0
"""How far ahead a claim within its share may book."""
IDLE_HORIZON_S: Final = 0.2
"""A claim beyond its share is granted only while the next free slot is this close."""
IDLE_SLOTS: Final = 2
"""At most this many slots per claim beyond the share (keeps the other kind's wait short)."""
MAX_AHEAD_S: Final = 30.0
"""No legitimate booking reaches this far ahead: a `tat` beyond it means the clock went back."""
ALL: Final = "all"
"""The lane name of the whole budget's schedule."""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a drawer asks for: up to `want` slots at `rate_per_s` (its configured ceiling, or
    less while it recovers from a 429), after pushing the budget `pause_s` ahead (a 429)."""

    kind: DrawerKind
    want: int
    rate_per_s: float
    pause_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"drawer kind must be one of {KINDS}, not {self.kind!r}")
        if self.want < 1:
            raise ValueError(f"want must be at least 1, got {self.want}")
        if self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {self.rate_per_s}")


@dataclass(frozen=True, slots=True)
class Booking:
    """The outcome of a claim: the slots booked (store-clock times, ascending), the store's
    clock when booked, and when to ask again if none were (`retry_at`)."""

    now: float
    slots: tuple[float, ...]
    retry_at: float | None
    tat: float
    lane_tat: float


def book(now: float, tat: float | None, lane_tat: float | None, req: ClaimRequest) -> Booking:
    """Book slots for `req` at store time `now` given the budget's and the lane's `tat` (None
    when never booked). Returns the slots and the new `tat` values to store."""
    interval = 1.0 / req.rate_per_s
    lane_interval = interval / SHARES[req.kind]
    tat = _sane(now, tat)
    lane_tat = _sane(now, lane_tat)
    if req.pause_s > 0:
        tat = max(tat, now + req.pause_s)
    start = tat
    lane_start = max(now, lane_tat)
    within_share = lane_start <= now + HORIZON_S
    if within_share and start <= now + HORIZON_S:
        count = req.want
        lane_tat = lane_start + count * lane_interval
    elif start <= now + IDLE_HORIZON_S:
        count = min(req.want, IDLE_SLOTS)
    else:
        idle_at = start - IDLE_HORIZON_S
        share_at = max(lane_start - HORIZON_S, start - HORIZON_S)
        return Booking(now, (), max(now, min(idle_at, share_at)), tat, lane_tat)
    slots = tuple(start + i * interval for i in range(count))
    return Booking(now, slots, None, start + count * interval, lane_tat)


def _sane(now: float, tat: float | None) -> float:
    """A stored `tat`, or now when none is stored, it lies in the past, or the clock went back."""
    if tat is None or tat < now or tat > now + MAX_AHEAD_S:
        return now
    return tat
