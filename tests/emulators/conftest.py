"""Shared fixtures of the Salesforce emulator tests: a module defines `emu` (a started
emulator seeded as its tests need); `http` is then a REST session authorized on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from streamsync.emulators.salesforce import SalesforceEmulator


@pytest.fixture
async def http(emu: SalesforceEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on the module's `emu`, based at its instance URL, with a bearer token."""
    headers = {"Authorization": f"Bearer {emu.issue_token()}"}
    async with aiohttp.ClientSession(base_url=emu.instance_url, headers=headers) as s:
        yield s
