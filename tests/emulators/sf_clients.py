"""Third-party clients pointed at a running Salesforce emulator over plain HTTP.

- `simple_salesforce(emu)`: simple-salesforce with a session token; its https:// URLs are sent
  to the emulator's http:// port by a requests adapter.
- `json_of(resp, status)`: a reply's JSON body, asserting its status.
- `cdc_events(emu, channel, count)`: the first `count` retained change events of a channel,
  received through aiosfstream-ng (password grant, replay from the oldest retained event)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import requests
from aiosfstream_ng.auth import PasswordAuthenticator
from aiosfstream_ng.client import Client
from aiosfstream_ng.replay import ReplayOption
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce

from streamsync.emulators.salesforce import SalesforceEmulator


async def json_of(resp: aiohttp.ClientResponse, status: int = 200) -> Any:
    """The reply's JSON body; the test fails (showing the body) on another status."""
    body = await resp.json()
    assert resp.status == status, body
    return body


class PlainHttp(HTTPAdapter):
    """Rewrites https://<any host>/path to http://<target>/path."""

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__()

    def send(self, request: requests.PreparedRequest,  # type: ignore[override]
             **kwargs: Any) -> requests.Response:
        u = urlsplit(str(request.url))
        request.url = urlunsplit(("http", self.target, u.path, u.query, u.fragment))
        return super().send(request, **kwargs)


def simple_salesforce(emu: SalesforceEmulator, version: str = "66.0") -> Any:
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", PlainHttp(urlsplit(emu.instance_url).netloc))
    return Salesforce(instance_url=emu.instance_url, session_id=emu.issue_token(),
                      session=session, version=version)


class _LocalPasswordAuthenticator(PasswordAuthenticator):
    def __init__(self, token_url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._local_token_url = token_url

    @property
    def _token_url(self) -> str:
        return self._local_token_url


async def cdc_events(emu: SalesforceEmulator, channel: str, count: int,
                     timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The payloads of the first `count` events on `channel`, oldest retained first."""
    auth = _LocalPasswordAuthenticator(emu.token_url, consumer_key=emu.client_id,
                                       consumer_secret=emu.client_secret,
                                       username=emu.username, password=emu.password)
    client = Client(auth, replay=ReplayOption.ALL_EVENTS, connection_timeout=0)
    await client.open()
    try:
        await client.subscribe(channel)
        messages = [await asyncio.wait_for(client.receive(), timeout_s) for _ in range(count)]
    finally:
        await client.close()
    assert all(m["channel"] == channel for m in messages)
    return [m["data"]["payload"] for m in messages]
