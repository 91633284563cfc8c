"""The HTTP edge: session factory, status/network error mapping and UsageCounter."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamsync.adapters.http import (
    Call,
    UsageCounter,
    default_status_error,
    make_session,
    parse_retry_after,
    raise_for_status,
    send,
    stream,
)
from streamsync.errors import AuthError, RateLimited, TransientError, UnexpectedStatus


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[TestServer]:
    scheme = "https" if ssl_context else "http"
    server = TestServer(app, host="127.0.0.1", port=0, scheme=scheme)
    await server.start_server(ssl=ssl_context)
    try:
        yield server
    finally:
        if RELEASE in app:
            app[RELEASE].set()  # let hanging handlers finish so the server closes at once
        await server.close()


RELEASE = web.AppKey("release", asyncio.Event)


def _app() -> web.Application:
    never = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"status {code}", headers=headers)

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await never.wait()
        return web.Response(text="too late")

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response(text="too late")

    async def garbled(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"<html>oops</html>", content_type="text/html")

    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app[RELEASE] = never
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/drop", drop)
    app.router.add_get("/hang", hang)
    app.router.add_get("/garbled", garbled)
    app.router.add_get("/truncated", truncated)
    return app


async def test_ok_reply_is_read_and_counted() -> None:
    counter = UsageCounter()
    async with serve(_app()) as server, make_session(5.0) as session:
        resp = await send(
            session, "GET", str(server.make_url("/ok")), api="t", endpoint="ok", counter=counter
        )
    assert resp.ok and resp.json() == {"hello": "world"}
    assert counter.total("t", status=200) == 1
    assert counter.snapshot() == {"t": {"ok": {"200": 1}}}


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (429, RateLimited),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (408, TransientError),
        (401, AuthError),
        (403, AuthError),
        (404, UnexpectedStatus),
        (400, UnexpectedStatus),
    ],
)
async def test_statuses_map_to_the_error_tree(code: int, error: type[Exception]) -> None:
    counter = UsageCounter()
    async with serve(_app()) as server, make_session(5.0) as session:
        resp = await send(
            session, "GET", str(server.make_url(f"/status/{code}")), api="t", endpoint="s",
            counter=counter,
        )
    with pytest.raises(error) as info:
        raise_for_status(resp)
    assert str(code) in str(info.value)
    assert counter.by_status("t") == {str(code): 1}


async def test_429_carries_retry_after_seconds_and_http_date() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    async with serve(_app()) as server, make_session(5.0) as session:
        url = str(server.make_url("/status/429"))
        r1 = await send(session, "GET", url, api="t", endpoint="s", params={"retry_after": "7"})
        r2 = await send(
            session, "GET", url, api="t", endpoint="s",
            params={"retry_after": when.strftime("%a, %d %b %Y %H:%M:%S GMT")},
        )
        r3 = await send(session, "GET", url, api="t", endpoint="s")
    with pytest.raises(RateLimited) as e1:
        raise_for_status(r1)
    assert e1.value.retry_after_s == 7.0
    with pytest.raises(RateLimited) as e2:
        raise_for_status(r2)
    assert e2.value.retry_after_s is not None and 25 <= e2.value.retry_after_s <= 31
    with pytest.raises(RateLimited) as e3:
        raise_for_status(r3)
    assert e3.value.retry_after_s is None


async def test_dropped_connection_is_transient_and_counted() -> None:
    counter = UsageCounter()
    async with serve(_app()) as server, make_session(5.0) as session:
        with pytest.raises(TransientError, match="network failure"):
            await send(
                session, "GET", str(server.make_url("/drop")), api="t", endpoint="d",
                counter=counter,
            )
    assert counter.by_status("t") == {"network": 1}


async def test_truncated_body_is_transient() -> None:
    async with serve(_app()) as server, make_session(5.0) as session:
        with pytest.raises(TransientError):
            await send(session, "GET", str(server.make_url("/truncated")), api="t", endpoint="x")


async def test_hang_becomes_a_timeout_not_a_stall() -> None:
    counter = UsageCounter()
    async with serve(_app()) as server, make_session(30.0) as session:
        with pytest.raises(TransientError, match="no reply in time"):
            await send(
                session, "GET", str(server.make_url("/hang")), api="t", endpoint="h",
                counter=counter, timeout_s=0.2,
            )
    assert counter.by_status("t") == {"timeout": 1}


async def test_session_timeout_applies_without_a_per_call_override() -> None:
    async with serve(_app()) as server, make_session(0.2) as session:
        with pytest.raises(TransientError, match="no reply in time"):
            await send(session, "GET", str(server.make_url("/hang")), api="t", endpoint="h")


async def test_refused_connection_is_transient() -> None:
    async with serve(_app()) as server:
        url = str(server.make_url("/ok"))
    async with make_session(2.0) as session:
        with pytest.raises(TransientError, match="network failure"):
            await send(session, "GET", url, api="t", endpoint="ok")


async def test_non_json_body_is_a_transient_garbled_reply() -> None:
    async with serve(_app()) as server, make_session(5.0) as session:
        resp = await send(session, "GET", str(server.make_url("/garbled")), api="t", endpoint="g")
    with pytest.raises(TransientError, match="not JSON"):
        resp.json()


async def test_stream_maps_status_and_mid_body_drop() -> None:
    async with serve(_app()) as server, make_session(5.0) as session:
        with pytest.raises(TransientError):
            async with stream(session, "GET", str(server.make_url("/status/503")), Call("t", "s")):
                raise AssertionError("the body of a 503 must not be handed out")
        with pytest.raises(TransientError):
            async with stream(session, "GET", str(server.make_url("/truncated")),
                              Call("t", "s")) as raw:
                await raw.read()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    async with serve(_app(), server_ctx) as server:
        url = str(server.make_url("/ok"))
        assert url.startswith("https://")
        async with make_session(5.0) as session:
            with pytest.raises(TransientError, match="network failure"):
                await send(session, "GET", url, api="t", endpoint="ok")
        async with make_session(5.0, ssl=False) as session:
            assert (await send(session, "GET", url, api="t", endpoint="ok")).ok


async def test_make_session_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        make_session(0)


async def test_make_session_sends_json_with_orjson() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with serve(app) as server, make_session(5.0) as session:
        async with session.post(server.make_url("/echo"), json={"a": [1, 2]}) as resp:
            assert await resp.read() == b'{"a":[1,2]}'


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Fri, 27 Nov 2026 03:00:10 GMT", now_s=1795748400.0) == 10.0
    assert parse_retry_after("Fri, 27 Nov 2026 03:00:10 GMT", now_s=1795748500.0) == 0.0


def test_usage_counter_filters_and_listeners() -> None:
    seen: list[tuple[str, str, str]] = []
    counter = UsageCounter()
    counter.subscribe(lambda *key: seen.append(key))
    counter.record("salesforce", "query", 200)
    counter.record("salesforce", "query", 200)
    counter.record("salesforce", "describe", 401)
    counter.record("iterable", "bulkUpdate", 429)
    counter.record("iterable", "bulkUpdate", "timeout")
    assert counter.total() == 5
    assert counter.total("salesforce") == 3
    assert counter.total("salesforce", endpoint="query") == 2
    assert counter.total(status=429) == 1
    assert counter.by_status("iterable") == {"429": 1, "timeout": 1}
    assert seen[0] == ("salesforce", "query", "200") and len(seen) == 5
    counter.set_usage("salesforce", 10, 100)
    assert counter.usage("salesforce") == (10, 100) and counter.usage("iterable") is None


async def test_session_pool_limit_is_applied() -> None:
    async with make_session(5.0, limit=3) as session:
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit == 3


async def test_an_unsafe_cookie_jar_returns_cookies_to_an_ip_host() -> None:
    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(text="set")
        resp.set_cookie("BAYEUX_BROWSER", "abc123")
        return resp

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.cookies.get("BAYEUX_BROWSER", "none"))

    app = web.Application()
    app.router.add_get("/set", set_cookie)
    app.router.add_get("/echo", echo)
    async with serve(app) as server:
        for jar, expected in ((None, b"none"), (aiohttp.CookieJar(unsafe=True), b"abc123")):
            async with make_session(5.0, cookie_jar=jar) as session:
                await send(session, "GET", str(server.make_url("/set")), api="t", endpoint="c")
                resp = await send(
                    session, "GET", str(server.make_url("/echo")), api="t", endpoint="c"
                )
                assert resp.body == expected


async def test_send_with_error_for_raises_the_mapped_error_or_returns_the_reply() -> None:
    class Teapot(Exception):
        pass

    async with serve(_app()) as server, make_session(5.0) as session:
        ok = await send(session, "GET", str(server.make_url("/ok")), api="t", endpoint="ok",
                        error_for=default_status_error)
        assert ok.json() == {"hello": "world"}
        with pytest.raises(RateLimited) as info:
            await send(session, "GET", str(server.make_url("/status/429")), api="t",
                       endpoint="s", error_for=default_status_error)
        assert (info.value.api, info.value.endpoint, info.value.status) == ("t", "s", 429)
        with pytest.raises(Teapot):
            await send(session, "GET", str(server.make_url("/status/418")), api="t",
                       endpoint="s", error_for=lambda resp: Teapot(resp.status))
        teapot = await send(session, "GET", str(server.make_url("/status/418")), api="t",
                            endpoint="s")
        assert teapot.status == 418  # without error_for the status is the caller's
