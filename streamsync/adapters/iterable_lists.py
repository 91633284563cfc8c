"""Iterable static lists: find and create lists, subscribe and unsubscribe users by email, read a
list's members (docs/iterable.md §13)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from streamsync.adapters.iterable import BulkResult, IterableClient, parse_bulk_result
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.errors import BatchError, RateLimited, TransientError

SUBSCRIBE = "listSubscribe"
UNSUBSCRIBE = "listUnsubscribe"
GET_USERS = "listUsers"
GET_USERS_PER_MINUTE = 5
"""GET /api/lists/getUsers: 5 requests per minute per project (docs/iterable.md §13)."""


@dataclass(frozen=True, slots=True)
class ListInfo:
    """One list of the project as GET /api/lists describes it."""

    id: int
    name: str
    list_type: str


def is_unknown_list(error: BatchError) -> bool:
    """A 400 whose msg names `error.lists.invalidListId(<id>)`: the list does not exist (or
    was created a moment ago, docs/iterable.md §13)."""
    return "invalidListId" in error.msg


class IterableLists:
    """The list endpoints on an `IterableClient` (same session, key and call counter).

    subscribe/unsubscribe wait for a slot of `limiter` (their own: Iterable documents no rate
    for them, `[lists] rate_limit_per_s` is the assumed one); getUsers waits for `reads` (5 per
    minute). A 429 slows the limiter down. Nothing is retried here: callers declare a
    `streamsync.retry.Policy`.
    """

    def __init__(self, client: IterableClient, limiter: RateLimiter,
                 reads: RateLimiter | None = None) -> None:
        self.client = client
        self.limiter = limiter
        self.reads = reads or RateLimiter(GET_USERS_PER_MINUTE / 60.0,
                                          burst=GET_USERS_PER_MINUTE, max_in_flight=1)

    async def lists(self) -> list[ListInfo]:
        """GET /api/lists: every list of the project."""
        resp = await self.client._call("GET", "/api/lists", "getLists")
        body = resp.json()
        raw = body.get("lists") if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise TransientError("iterable getLists: reply has no lists array")
        out = []
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("id"), int):
                out.append(ListInfo(int(item["id"]), str(item.get("name", "")),
                                    str(item.get("listType", ""))))
        return out

    async def create(self, name: str, description: str | None = None) -> int:
        """POST /api/lists; returns the new list's id."""
        body: dict[str, str] = {"name": name}
        if description:
            body["description"] = description
        resp = await self.client._call("POST", "/api/lists", "createList",
                                       data=orjson.dumps(body))
        reply = resp.json()
        list_id = reply.get("listId") if isinstance(reply, dict) else None
        if not isinstance(list_id, int) or isinstance(list_id, bool):
            raise TransientError("iterable createList: reply has no listId")
        return list_id

    async def subscribe(self, list_id: int, emails: list[str]) -> BulkResult:
        """POST /api/lists/subscribe: these emails join the list (unknown users are created in
        email-based projects). 400 invalidListId and other refusals are BatchError."""
        return await self._change("/api/lists/subscribe", SUBSCRIBE, list_id, emails)

    async def subscribe_when_sent(self, list_id: int, emails: Callable[[], list[str]]
                                  ) -> BulkResult:
        """`subscribe` of the emails `emails()` gives once the rate limiter granted the slot
        (runtime/lists/joiner.py fills a call with what arrived while it waited)."""
        return await self._change("/api/lists/subscribe", SUBSCRIBE, list_id, emails)

    async def unsubscribe(self, list_id: int, emails: list[str]) -> BulkResult:
        """POST /api/lists/unsubscribe: these emails leave the list (an unknown user is
        reported as notFound: it is on no list)."""
        return await self._change("/api/lists/unsubscribe", UNSUBSCRIBE, list_id, emails)

    async def _change(self, path: str, endpoint: str, list_id: int,
                      emails: list[str] | Callable[[], list[str]]) -> BulkResult:
        async with self.limiter.slot():
            chosen = emails() if callable(emails) else emails
            if not chosen:  # another call took them while this one waited for its slot
                return BulkResult(0, 0)
            body = orjson.dumps({"listId": list_id,
                                 "subscribers": [{"email": email} for email in chosen]})
            try:
                resp = await self.client._call("POST", path, endpoint, data=body)
            except RateLimited as exc:
                self.limiter.on_rate_limited(exc.retry_after_s)
                raise
        return parse_bulk_result(resp.json())

    async def users(self, list_id: int) -> list[str]:
        """GET /api/lists/getUsers: the list's members, one email (or userId) per line."""
        resp = await self.client._paced(self.reads, "GET", "/api/lists/getUsers", GET_USERS,
                                        params={"listId": str(list_id)})
        text = resp.body.decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]
