"""The trackBulk batches the decide step hands straight to the send loops (docs/events.md §4).

Each batch's rows are held in the store under the batch's own token until it is sent, so no
store lease reads them back. A lease's ready events rarely fill whole batches (in the bench's
burst, 3 % of the changes have no email to land on, so 2,000 candidates make 1,000 + ~940):
cut per lease, a burst took ~22 trackBulk calls for 20 batches' worth. So the last batch,
while no send loop has taken it, is topped up by the next decisions before new batches are cut.
A send loop that is free takes a batch at once, partial or not: topping up never delays one.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.store.events import PendingEvent


@dataclass
class HandPlan:
    """Batches cut for one decided lease: `batches` to hand once their rows are held;
    `reopened`, the untaken last batch as it was, topped up as `batches[0]`."""

    batches: list[list[PendingEvent]] = field(default_factory=list)
    reopened: list[PendingEvent] | None = None

    def held(self) -> dict[str, str]:
        """Event id -> token of every row of this lease in the plan (the reopened batch's
        earlier rows are held already)."""
        earlier = {p.candidate.event_id for p in self.reopened or ()}
        return {p.candidate.event_id: p.token for batch in self.batches for p in batch
                if p.candidate.event_id not in earlier}


class Handoff:
    """Batches handed to the send loops, oldest first, at most `max_batches` in memory."""

    def __init__(self, batch_max: int, max_batches: int) -> None:
        self._batch_max = batch_max
        self._max = max_batches
        self._batches: collections.deque[list[PendingEvent]] = collections.deque()

    def __len__(self) -> int:
        return len(self._batches)

    def take(self) -> list[PendingEvent] | None:
        """The oldest batch for a send loop, or None."""
        return self._batches.popleft() if self._batches else None

    def plan(self, leased: Sequence[PendingEvent], ready: Mapping[str, dict[str, Any]]
             ) -> HandPlan:
        """Cut `ready` (event id -> item, in order): first into the untaken last batch while
        it has room (taken out until `hand` or `undo`), then into new batches within room."""
        plan = HandPlan()
        rows = {p.candidate.event_id: p for p in leased}
        ids = list(ready)
        if self._batches and len(self._batches[-1]) < self._batch_max and ids:
            plan.reopened = self._batches.pop()
            fill = ids[:self._batch_max - len(plan.reopened)]
            ids = ids[len(fill):]
            token = plan.reopened[0].token
            plan.batches.append([*plan.reopened, *(_held(rows[i], ready[i], token)
                                                   for i in fill)])
        room = self._max - len(self._batches) - len(plan.batches)
        for start in range(0, min(len(ids), max(0, room) * self._batch_max), self._batch_max):
            token = secrets.token_hex(8)
            plan.batches.append([_held(rows[i], ready[i], token)
                                 for i in ids[start:start + self._batch_max]])
        return plan

    def hand(self, plan: HandPlan) -> None:
        """The plan's batches to the send loops (their rows are held in the store now)."""
        self._batches.extend(plan.batches)

    def undo(self, plan: HandPlan) -> None:
        """The plan was not stored: the reopened batch goes back as it was."""
        if plan.reopened is not None:
            self._batches.append(plan.reopened)


def _held(row: PendingEvent, item: dict[str, Any], token: str) -> PendingEvent:
    return PendingEvent(row.candidate, item, row.attempts, row.enqueued_at, token)
