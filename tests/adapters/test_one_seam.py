"""Every request to Salesforce (REST, Bulk, OAuth, CometD) and to Iterable passes through the
one HTTP seam, `streamsync.adapters.http.send` (or `stream` for bodies read incrementally):
a counting hook on aiohttp's request looks for one of them on the awaiting stack."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from streamsync.adapters import http
from streamsync.adapters.cometd import CometdSubscriber
from streamsync.config import Config
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import Clients

SEAM = {http.send.__code__, http.stream.__wrapped__.__code__}  # type: ignore[attr-defined]


@pytest.fixture
def requests_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[tuple[str, bool]]]:
    """(path, passed the seam) of every request aiohttp makes."""
    seen: Counter[tuple[str, bool]] = Counter()
    real = aiohttp.ClientSession._request

    async def counting(self: aiohttp.ClientSession, method: str, url: Any,
                       *args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        through = False
        while frame is not None:
            if frame.f_code in SEAM:
                through = True
                break
            frame = frame.f_back  # type: ignore[assignment]
        seen[(str(aiohttp.client.URL(url).path), through)] += 1
        return await real(self, method, url, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", counting)
    yield seen


def test_the_hook_tells_a_bypass_from_the_seam() -> None:
    """A request made straight on the session is seen as not through the seam."""
    assert http.send.__code__ in SEAM and len(SEAM) == 2


async def test_a_request_made_around_the_seam_is_caught(
        requests_seen: Counter[tuple[str, bool]], clients: Clients,
        sf_emulator: SalesforceEmulator) -> None:
    async with clients.session.get(sf_emulator.instance_url + "/services/data") as resp:
        await resp.read()
    assert requests_seen == Counter({("/services/data", False): 1})


async def test_every_request_of_both_apis_passes_the_one_send_function(
        requests_seen: Counter[tuple[str, bool]], clients: Clients, config: Config,
        sf_emulator: SalesforceEmulator) -> None:
    sf, it = clients.salesforce, clients.iterable
    await sf.describe("Lead")
    async for _page in sf.query("SELECT Id FROM Lead"):
        pass
    async for _rows in sf.bulk_query("SELECT Id FROM Lead"):
        pass
    await it.get_fields()
    await it.bulk_update(b'{"users": [{"email": "seam@example.com", "dataFields": {}}]}')
    await it.update_user({"email": "seam2@example.com", "dataFields": {}})

    async def token() -> str:
        return (await clients.auth.token()).access_token

    async def nothing(*_: Any) -> None:
        return None

    sub = CometdSubscriber(clients.session, instance_url=sf_emulator.instance_url,
                           api_version=config.salesforce.api_version, get_token=token,
                           invalidate_token=lambda: None, channels=["/data/LeadChangeEvent"],
                           replay_from=nothing, on_replay_invalid=nothing,
                           long_poll_timeout_s=1.0, min_handshake_interval_s=0.0)
    await sub.poll_once()
    await sub.close()

    paths = {path for path, _ in requests_seen}
    assert [key for key in requests_seen if not key[1]] == []
    for wanted in ("/services/oauth2/token", "/api/users/bulkUpdate", "/api/users/update",
                   "/api/users/getFields"):
        assert wanted in paths
    assert any(p.startswith("/cometd/") for p in paths)
    assert any(p.endswith("/sobjects/Lead/describe") for p in paths)
    assert any("/jobs/query" in p for p in paths)
