"""Shared helpers for the Iterable emulator tests: a fake clock and a small HTTP caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from streamsync.emulators.iterable import IterableEmulator, IterableEmulatorConfig


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    """Status, headers and parsed body of one call."""

    status: int
    body: Any
    headers: dict[str, str]
    text: str


class Api:
    """Calls an emulator over real HTTP."""

    def __init__(self, emu: IterableEmulator, session: aiohttp.ClientSession) -> None:
        self.emu = emu
        self.session = session
        self.key = emu.api_key

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = {"Api-Key": key if key is not None else self.key, "Content-Type": "application/json"}
        hdrs.update(headers or {})
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        async with self.session.request(
            method, self.emu.base_url + path, data=data, headers=hdrs, params=params
        ) as resp:
            text = await resp.text()
            try:
                parsed = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                parsed = None
            return Reply(resp.status, parsed, dict(resp.headers), text)

    async def bulk(self, users: list[dict[str, Any]], **extra: Any) -> Reply:
        return await self.call("POST", "/api/users/bulkUpdate", {"users": users, **extra})

    async def update(self, **body: Any) -> Reply:
        return await self.call("POST", "/api/users/update", body)

    async def get_email(self, email: str) -> Reply:
        return await self.call("GET", f"/api/users/{email}")

    async def get_user_id(self, user_id: str) -> Reply:
        return await self.call("GET", f"/api/users/byUserId/{user_id}")


def quiet_config(**kw: Any) -> IterableEmulatorConfig:
    """A config with no latency and lifted rate limits unless overridden."""
    kw.setdefault("latency_ms", 0.0)
    kw.setdefault("rate_limits", False)
    return IterableEmulatorConfig(**kw)


async def started(config: IterableEmulatorConfig) -> tuple[IterableEmulator, aiohttp.ClientSession]:
    emu = IterableEmulator(config)
    await emu.start("127.0.0.1", 0)
    return emu, aiohttp.ClientSession()


MakeApi = Callable[..., Awaitable[Api]]


@asynccontextmanager
async def api_factory() -> AsyncIterator[MakeApi]:
    """Yields `make(**config)`, which starts emulators that are all stopped on exit."""
    apis: list[Api] = []

    async def make(**kw: Any) -> Api:
        api = await open_api(**kw)
        apis.append(api)
        return api

    try:
        yield make
    finally:
        for api in apis:
            await close_api(api)


async def open_api(**kw: Any) -> Api:
    """An emulator with `quiet_config(**kw)` and a session; close with `close_api`."""
    emu, session = await started(quiet_config(**kw))
    return Api(emu, session)


async def close_api(api: Api) -> None:
    await api.session.close()
    await api.emu.stop()
