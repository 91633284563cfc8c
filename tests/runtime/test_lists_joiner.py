"""runtime/lists/joiner.py: requests waiting for the same slot share one call, up to the cap;
a call's error reaches every request it carried, and nothing is left waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from streamsync.adapters.iterable import BulkResult, parse_bulk_result
from streamsync.errors import TransientError
from streamsync.runtime.lists.joiner import SubscribeJoiner


class Endpoint:
    """A send that waits for `release` before taking its emails (a rate-limit slot)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def send(self, list_id: int, emails: Callable[[], list[str]]) -> BulkResult:
        await self.release.wait()
        taken = emails()
        self.calls.append(taken)
        if self.fail_next:
            self.fail_next = False
            raise TransientError("iterable listSubscribe: HTTP 503")
        return parse_bulk_result({"successCount": len(taken), "failCount": 0,
                                  "failedUpdates": {"invalidEmails": ["bad@x.io"]}})


async def test_requests_waiting_for_the_slot_share_full_calls() -> None:
    endpoint = Endpoint()
    joiner = SubscribeJoiner(endpoint.send, max_subscribers=5, senders=1)
    parts = [[f"{i}{j}@x.io" for j in range(2)] for i in range(6)] + [["bad@x.io"]]
    waiting = [asyncio.create_task(joiner.subscribe(7, part)) for part in parts]
    await asyncio.sleep(0)
    endpoint.release.set()
    results = await asyncio.gather(*waiting)
    assert [len(c) for c in endpoint.calls] == [4, 4, 5]  # whole requests, at most 5
    assert sorted(e for c in endpoint.calls for e in c) == sorted(e for p in parts for e in p)
    assert all(r.reason_for(email="bad@x.io") == "invalid_email" for r in results)


async def test_an_error_reaches_every_request_of_the_call_and_the_rest_go_on() -> None:
    endpoint = Endpoint()
    endpoint.fail_next = True
    joiner = SubscribeJoiner(endpoint.send, max_subscribers=2, senders=1)
    first = asyncio.create_task(joiner.subscribe(7, ["a@x.io", "b@x.io"]))
    second = asyncio.create_task(joiner.subscribe(7, ["c@x.io"]))
    await asyncio.sleep(0)
    endpoint.release.set()
    with pytest.raises(TransientError):
        await first
    assert (await second).success_count == 1
    assert endpoint.calls == [["a@x.io", "b@x.io"], ["c@x.io"]]
