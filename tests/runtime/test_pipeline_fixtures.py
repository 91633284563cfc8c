"""The shared fixtures connect to both emulators."""

from __future__ import annotations

from tests.conftest import Clients


async def test_fixtures_reach_both_emulators(clients: Clients) -> None:
    records = [r async for r in clients.salesforce.records("SELECT Id, Email FROM Contact")]
    assert len(records) == 12
    assert await clients.iterable.get_user(email="nobody@example.com") is None
