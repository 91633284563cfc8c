"""CometD delivery benchmark: events/s from the emulator's bus to one raw long-polling client."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamsync.emulators.salesforce.bus import EventBus  # noqa: E402
from streamsync.emulators.salesforce.cometd import CometdServer  # noqa: E402

TOKEN = "00D000000000001!bench"


def _lead_update(n: int) -> dict[str, Any]:
    record_id = f"00Q5g00000{n:08d}"
    return {
        "ChangeEventHeader": {
            "entityName": "Lead", "recordIds": [record_id], "changeType": "UPDATE",
            "changeOrigin": "com/salesforce/api/rest/66.0;client=bench",
            "transactionKey": f"00000000-0000-0000-0000-{n:012d}", "sequenceNumber": 1,
            "commitTimestamp": 1_700_000_000_000 + n, "commitNumber": 90_000_000_000 + n,
            "commitUser": "0055g00000AbCdEAAV",
            "changedFields": ["Email", "Phone", "Title", "Status", "LastModifiedDate"],
        },
        "Email": f"lead{n}@example.com", "Phone": f"+1 555 {n % 10_000:04d}",
        "Title": "Director of Operations", "Status": "Working - Contacted",
        "LastModifiedDate": "2026-11-27T03:00:00Z",
    }


class _RawClient:
    """Just enough Bayeux to handshake, subscribe and long-poll."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url, self.client_id, self._n = http, url, "", 0
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def send(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        for message in messages:
            self._n += 1
            message["id"] = str(self._n)
            if self.client_id:
                message["clientId"] = self.client_id
        async with self.http.post(self.url, data=orjson.dumps(list(messages)),
                                  headers=self.headers) as resp:
            body: list[dict[str, Any]] = orjson.loads(await resp.read())
        return body

    async def open(self, channel: str, replay: int) -> None:
        (hs,) = await self.send({"channel": "/meta/handshake", "version": "1.0",
                                 "supportedConnectionTypes": ["long-polling"]})
        self.client_id = hs["clientId"]
        await self.send({"channel": "/meta/connect", "connectionType": "long-polling"})
        (sub,) = await self.send({"channel": "/meta/subscribe", "subscription": channel,
                                  "ext": {"replay": {channel: replay}}})
        if not sub["successful"]:
            raise RuntimeError(f"subscribe failed: {sub}")

    async def poll(self) -> list[int]:
        body = await self.send({"channel": "/meta/connect", "connectionType": "long-polling"})
        return [m["data"]["event"]["replayId"] for m in body if "data" in m]


async def bench_cometd_async(events: int = 50_000, chunk: int = 500) -> dict[str, Any]:
    """bench_cometd for callers already inside an event loop."""
    bus = EventBus()
    server = CometdServer(bus, lambda token: "ok" if token == TOKEN else "invalid",
                          long_poll_s=5.0, daily_delivery_limit=10 * events)
    app = web.Application()
    server.register(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/cometd/66.0"
    try:
        async with aiohttp.ClientSession() as http:
            live = _RawClient(http, url)
            await live.open("/data/LeadChangeEvent", -1)
            received: list[int] = []
            polls = 0

            async def consume() -> None:
                nonlocal polls
                while len(received) < events:
                    received.extend(await live.poll())
                    polls += 1

            consumer = asyncio.create_task(consume())
            started = time.perf_counter()
            for start in range(0, events, chunk):
                for n in range(start, min(events, start + chunk)):
                    bus.publish("Lead", _lead_update(n))
                await asyncio.sleep(0)
            published_s = time.perf_counter() - started
            await asyncio.wait_for(consumer, 120)
            live_s = time.perf_counter() - started
            if received != list(range(1, events + 1)):
                raise RuntimeError("live delivery lost or reordered events")

            backlog = _RawClient(http, url)
            await backlog.open("/data/ChangeEvents", -2)
            started = time.perf_counter()
            drained = 0
            while drained < events:
                drained += len(await backlog.poll())
            backlog_s = time.perf_counter() - started
    finally:
        server.forget_all_clients()
        await runner.cleanup()
    return {
        "cometd_events": events,
        "cometd_publish_events_per_s": round(events / published_s),
        "cometd_live_events_per_s": round(events / live_s),
        "cometd_live_polls": polls,
        "cometd_backlog_events_per_s": round(events / backlog_s),
        "cometd_target_events_per_s": 5_000,
        "cometd_ok": events / live_s >= 5_000 and events / backlog_s >= 5_000,
    }


def bench_cometd(events: int = 50_000, chunk: int = 500) -> dict[str, Any]:
    """Publish `events` CDC events and measure their delivery to one long-polling subscriber:
    live (published while it polls) and as a -2 backlog. Returns figures as a dict."""
    return asyncio.run(bench_cometd_async(events, chunk))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=500, help="events published per loop turn")
    args = parser.parse_args()
    print(json.dumps(bench_cometd(args.events, args.chunk)))


if __name__ == "__main__":
    main()
