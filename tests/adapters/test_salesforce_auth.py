"""SalesforceAuth against the Salesforce emulator: every flow, errors, caching, single flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from streamsync.adapters.http import UsageCounter, make_session
from streamsync.adapters.salesforce_auth import SalesforceAuth, Token
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.errors import AuthError, ConfigError, TransientError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


@pytest.fixture
async def emu() -> AsyncIterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(SalesforceEmulatorConfig(jwt_public_key_pem=PUBLIC_PEM))
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


def _auth(emu: SalesforceEmulator, session: object, flow: str, **kw: object) -> SalesforceAuth:
    base: dict[str, object] = {
        "login_url": emu.instance_url,
        "flow": flow,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "username": emu.username,
        "password": emu.password,
        "refresh_token": emu.config.refresh_token,
        "private_key": PRIVATE_PEM,
    }
    base.update(kw)
    return SalesforceAuth(session, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize("flow", ["jwt", "client_credentials", "refresh_token", "password"])
async def test_each_flow_obtains_a_working_token(emu: SalesforceEmulator, flow: str) -> None:
    async with make_session(5.0) as session:
        auth = _auth(emu, session, flow)
        token = await auth.token()
    assert token.instance_url == emu.instance_url
    assert emu.sessions.check(token.access_token) == "ok"
    assert token.authorization == f"Bearer {token.access_token}"
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer" if flow == "jwt" else flow
    assert emu.token_endpoint.calls == {grant: 1}


async def test_jwt_with_the_salesforce_audience(emu: SalesforceEmulator) -> None:
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "jwt", audience="https://login.salesforce.com")
        assert emu.sessions.check((await auth.token()).access_token) == "ok"


async def test_jwt_signed_with_another_key_is_an_auth_error(emu: SalesforceEmulator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    async with make_session(5.0) as session:
        with pytest.raises(AuthError, match="invalid_grant: invalid assertion"):
            await _auth(emu, session, "jwt", private_key=pem).token()


async def test_jwt_with_an_unusable_key_is_an_auth_error(emu: SalesforceEmulator) -> None:
    async with make_session(5.0) as session:
        with pytest.raises(AuthError, match="cannot sign"):
            await _auth(emu, session, "jwt", private_key="not a key").token()


async def test_bad_password_is_an_auth_error_without_the_secret(
    emu: SalesforceEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "password", password="hunter2-wrong")
        with pytest.raises(AuthError) as info:
            await auth.token()
    assert "invalid_grant: authentication failure" in str(info.value)
    assert "hunter2-wrong" not in str(info.value)
    assert "hunter2-wrong" not in repr(auth)
    assert "hunter2-wrong" not in caplog.text


async def test_bad_refresh_token_reports_the_error_description(emu: SalesforceEmulator) -> None:
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "refresh_token", refresh_token="5Aep-revoked")
        with pytest.raises(AuthError, match="expired access/refresh token"):
            await auth.token()


async def test_password_flow_warns_once_about_its_retirement(
    emu: SalesforceEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "password")
        await auth.token()
        auth.invalidate()
        await auth.token()
    event = "salesforce.auth.password_flow_deprecated"
    warnings = [r for r in caplog.records if r.getMessage() == event]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert getattr(warnings[0], "fields", {})["retirement_date"] == "2027-02-20"


async def test_token_is_cached_and_concurrent_callers_share_one_request(
    emu: SalesforceEmulator,
) -> None:
    counter = UsageCounter()
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "client_credentials", counter=counter)
        tokens = await asyncio.gather(*(auth.token() for _ in range(20)))
        again = await auth.token()
    assert len({t.access_token for t in tokens}) == 1 and again is tokens[0]
    assert await auth.access_token() == again.access_token
    assert await auth.instance_url() == emu.instance_url
    assert emu.token_endpoint.calls == {"client_credentials": 1}
    assert counter.total("salesforce", endpoint="oauth2/token") == 1
    assert auth.refreshes == 1


async def test_invalidate_drops_only_the_stale_token(emu: SalesforceEmulator) -> None:
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "client_credentials")
        first = await auth.token()
        auth.invalidate(first)
        second = await auth.token()
        assert second.access_token != first.access_token
        auth.invalidate(first)  # a late 401 of a request made with the old token
        assert auth.cached is second
        auth.invalidate()
        assert auth.cached is None


async def test_concurrent_failure_is_shared_and_the_next_call_retries(
    emu: SalesforceEmulator,
) -> None:
    emu.faults.fail_next("/services/oauth2/token", 1, status=503, body=b"busy")
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "client_credentials")
        results = await asyncio.gather(*(auth.token() for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, TransientError) for r in results)
        assert isinstance(await auth.token(), Token)
    assert emu.token_endpoint.calls == {"client_credentials": 1}  # the 503 never reached it


async def test_dropped_and_hanging_token_requests_are_transient(emu: SalesforceEmulator) -> None:
    emu.faults.drop_next("/services/oauth2/token")
    emu.faults.hang_next("/services/oauth2/token")
    async with make_session(5.0) as session:
        auth = _auth(emu, session, "client_credentials", timeout_s=0.3)
        with pytest.raises(TransientError, match="network failure"):
            await auth.token()
        with pytest.raises(TransientError, match="no reply in time"):
            await auth.token()
        assert isinstance(await auth.token(), Token)


def test_missing_credentials_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="private_key"):
        SalesforceAuth(None, login_url="https://x", flow="jwt", client_id="c",  # type: ignore[arg-type]
                       username="u")
    with pytest.raises(ConfigError, match="client_secret"):
        SalesforceAuth(None, login_url="https://x", flow="client_credentials",  # type: ignore[arg-type]
                       client_id="c")
    with pytest.raises(ConfigError, match="unknown flow"):
        SalesforceAuth(None, login_url="https://x", flow="saml", client_id="c")  # type: ignore[arg-type]


async def test_secrets_may_be_callables_and_never_show_in_repr(emu: SalesforceEmulator) -> None:
    reads = 0

    def secret() -> str:
        nonlocal reads
        reads += 1
        return emu.client_secret

    async with make_session(5.0) as session:
        auth = _auth(emu, session, "client_credentials", client_secret=secret)
        token = await auth.token()
    assert reads == 1
    assert emu.client_secret not in repr(auth)
    assert token.access_token not in repr(token)


async def test_rotated_refresh_tokens_are_used_and_handed_over() -> None:
    seen: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(str(form["refresh_token"]))
        n = len(seen)
        return web.json_response({
            "access_token": f"00D!access{n}", "instance_url": "http://127.0.0.1:1/",
            "token_type": "Bearer", "refresh_token": f"5Aep-rotated-{n}",
        })

    app = web.Application()
    app.router.add_post("/services/oauth2/token", token)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    handed: list[str] = []
    try:
        async with make_session(5.0) as session:
            auth = SalesforceAuth(
                session, login_url=str(server.make_url("")), flow="refresh_token",
                client_id="ck", refresh_token="5Aep-original", on_refresh_token=handed.append,
            )
            first = await auth.token()
            auth.invalidate(first)
            second = await auth.token()
    finally:
        await server.close()
    assert seen == ["5Aep-original", "5Aep-rotated-1"]
    assert handed == ["5Aep-rotated-1", "5Aep-rotated-2"]
    assert first.instance_url == "http://127.0.0.1:1"  # no trailing slash
    assert second.access_token == "00D!access2"


async def test_a_token_reply_without_access_token_is_transient() -> None:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"instance_url": "http://x"})

    app = web.Application()
    app.router.add_post("/services/oauth2/token", token)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with make_session(5.0) as session:
            auth = SalesforceAuth(session, login_url=str(server.make_url("")),
                                  flow="client_credentials", client_id="c", client_secret="s")
            with pytest.raises(TransientError, match="access_token"):
                await auth.token()
    finally:
        await server.close()
