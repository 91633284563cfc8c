"""Security checks: secrets never leave the process, localhost health, TLS verified, 0600 store."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]
import pytest

from streamsync.adapters.http import UsageCounter, make_session
from streamsync.adapters.salesforce_auth import SalesforceAuth
from streamsync.config import HealthConfig, parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator, SalesforceEmulatorConfig
from streamsync.errors import StreamsyncError
from streamsync.runtime.app import Service

SF_SECRET = "sf-consumer-secret-Zq8w1xKJ"
IT_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OWNER_ONLY = 0o600


def _write_config(path: Path, sf_url: str, sf: SalesforceEmulator, it: IterableEmulator,
                  store: Path, health: str = "port = 0") -> Path:
    path.write_text(f"""
[salesforce]
login_url = "{sf_url}"
auth = "client_credentials"
client_id = "{sf.client_id}"
api_version = "{sf.config.api_version}"
timeout_s = 5

[iterable]
base_url = "{it.base_url}"
project_type = "email"
timeout_s = 5

[queue]
path = "{store}"
backoff_base_s = 0.05
backoff_max_s = 0.2

[flush]
linger_ms = 10

[health]
{health}
""")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STREAMSYNC_", "SSL_CERT_"))}
    env.update({"STREAMSYNC_SF_CLIENT_SECRET": SF_SECRET, "STREAMSYNC_ITERABLE_API_KEY": IT_KEY,
                "PYTHONUNBUFFERED": "1", **extra})
    return env


async def _wait_for(log: Path, needle: bytes, proc: asyncio.subprocess.Process,
                    timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in await asyncio.to_thread(log.read_bytes):
        if proc.returncode is not None or time.monotonic() > deadline:
            tail = (await asyncio.to_thread(log.read_text))[-3000:]
            raise AssertionError(f"no {needle!r} in the service log:\n{tail}")
        await asyncio.sleep(0.05)


def _health_port(log: Path) -> int:
    for line in log.read_text().splitlines():
        if '"health.listening"' in line:
            return int(orjson.loads(line)["port"])
    raise AssertionError("the service did not log health.listening")


def _cli(config: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "streamsync", *args, "--config", str(config)],
                          capture_output=True, text=True, env=_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture
async def service_process(tmp_path: Path, sf_emulator: SalesforceEmulator,
                          iterable_emulator: IterableEmulator
                          ) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, Path]]:
    """`streamsync run` at debug level with the secrets in its environment; (proc, log, config)."""
    store = tmp_path / "state" / "streamsync.db"
    config = _write_config(tmp_path / "config.toml", sf_emulator.instance_url, sf_emulator,
                           iterable_emulator, store)
    log = tmp_path / "service.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamsync", "run", "--config", str(config),
            "--log-level", "debug", "--log-json", stdout=err, stderr=err, env=_env())
    try:
        await _wait_for(log, b"service.ready", proc)
        yield proc, log, config
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.salesforce(client_secret=SF_SECRET)
@pytest.mark.iterable(api_key=IT_KEY)
async def test_no_secret_in_logs_metrics_or_status(
    service_process: tuple[asyncio.subprocess.Process, Path, Path],
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
) -> None:
    proc, log, config = service_process
    # A reply that echoes the API key back (a misbehaving proxy), more often than the writer
    # retries in place: its text reaches the stored errors and the logs, masked.
    iterable_emulator.faults.add("status", "/api/users/bulkUpdate", 4, status=500,
                                 body={"msg": f"bad key {IT_KEY}", "code": "GenericError"})
    sf_emulator.sessions.expire_all()  # a re-authentication is logged too
    lead = sf_emulator.select_ids("Lead", "IsDeleted = false AND Email != null", limit=1)[0]
    sf_emulator.state.update("Lead", lead, {"FirstName": "Secretless"})
    await _wait_for(log, b'"event":"retry.scheduled","call":"writer"', proc)
    deadline = time.monotonic() + 20
    while not any((p.get("dataFields") or {}).get("firstName") == "Secretless"
                  for p in iterable_emulator.state.snapshot().values()):
        assert time.monotonic() < deadline, "the change never reached Iterable"
        await asyncio.sleep(0.05)

    port = _health_port(log)
    async with aiohttp.ClientSession() as http:
        pages = []
        for path in ("/metrics", "/healthz", "/readyz"):
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                pages.append(await resp.text())
    status = (_cli(config, "status", "--json") + _cli(config, "status", "--errors", "50")
              + _cli(config, "dlq", "list"))
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    logged = log.read_text()

    # The test is meaningful: the service worked, logged at debug level and errors were kept.
    assert "salesforce.auth.token_obtained" in logged and "[redacted]" in status + logged
    assert "recent_errors" in status and "streamsync_" in pages[0]
    tokens = list(getattr(sf_emulator.sessions, "_by_token", {}))  # every access token issued
    assert tokens
    for secret in (SF_SECRET, IT_KEY, *tokens):
        for name, text in (("log", logged), ("status", status), ("metrics", "".join(pages))):
            assert secret not in text, f"a secret ({secret[:6]}...) appears in the {name} output"


@pytest.mark.salesforce(client_secret=SF_SECRET)
@pytest.mark.iterable(api_key=IT_KEY)
async def test_store_files_are_owner_only_and_health_listens_on_localhost(
    service_process: tuple[asyncio.subprocess.Process, Path, Path], tmp_path: Path,
) -> None:
    proc, log, _ = service_process
    state = tmp_path / "state"
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    assert {"streamsync.db", "streamsync.db-wal", "streamsync.db-shm"} <= set(files)
    assert all(mode == OWNER_ONLY for mode in files.values()), {k: oct(v)
                                                                  for k, v in files.items()}
    assert stat.S_IMODE(state.stat().st_mode) == 0o700

    listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, "the health endpoint is not listening"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert any(addr.port == _health_port(log) for addr in listening)


async def test_health_binds_to_localhost_by_default(
    tmp_path: Path, sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
) -> None:
    assert HealthConfig().host == "127.0.0.1"
    data: dict[str, Any] = {
        "salesforce": {"login_url": sf_emulator.instance_url, "auth": "client_credentials",
                       "client_id": sf_emulator.client_id},
        "iterable": {"base_url": iterable_emulator.base_url},
        "queue": {"path": str(tmp_path / "s.db")},
        "health": {"port": 0},  # no host given
    }
    config = parse_config(data, {"STREAMSYNC_SF_CLIENT_SECRET": sf_emulator.client_secret,
                                 "STREAMSYNC_ITERABLE_API_KEY": iterable_emulator.api_key})
    assert config.health.host == "127.0.0.1"
    service = Service(config, shutdown_s=5)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        for _ in range(200):
            if service.health is not None and service.health.bound:
                break
            await asyncio.sleep(0.01)
        assert service.health is not None
        assert [host for host, _ in service.health.bound] == ["127.0.0.1"]
    finally:
        stop.set()
        assert await task == 0


# ------------------------------------------------------------------------------------- TLS


@pytest.fixture
async def tls_emulator(tmp_path: Path) -> AsyncIterator[SalesforceEmulator]:
    emu = SalesforceEmulator(SalesforceEmulatorConfig(tls=True, tls_dir=str(tmp_path / "tls"),
                                                      client_secret=SF_SECRET))
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


def _auth(http: aiohttp.ClientSession, emu: SalesforceEmulator) -> SalesforceAuth:
    return SalesforceAuth(http, login_url=emu.instance_url, flow="client_credentials",
                          client_id=emu.client_id, client_secret=SF_SECRET,
                          counter=UsageCounter(), timeout_s=5)


async def test_tls_is_verified_by_default(tls_emulator: SalesforceEmulator) -> None:
    assert tls_emulator.instance_url.startswith("https://")
    http = make_session(5)
    try:
        with pytest.raises(StreamsyncError) as caught:
            await _auth(http, tls_emulator).instance_url()
    finally:
        await http.close()
    assert "certificate" in str(caught.value).lower()


async def test_tls_succeeds_with_the_emulator_ca(tls_emulator: SalesforceEmulator) -> None:
    assert tls_emulator.cert_path is not None
    context = ssl.create_default_context(cafile=str(tls_emulator.cert_path))
    http = make_session(5, ssl=context)
    try:
        assert await _auth(http, tls_emulator).instance_url() == tls_emulator.instance_url
    finally:
        await http.close()


@pytest.mark.iterable(api_key=IT_KEY)
async def test_the_cli_trusts_a_ca_named_by_ssl_cert_file_and_nothing_else(
    tls_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
) -> None:
    config = _write_config(tmp_path / "config.toml", tls_emulator.instance_url, tls_emulator,
                           iterable_emulator, tmp_path / "s.db", health="enabled = false")
    argv = [sys.executable, "-m", "streamsync", "check-config", "--config", str(config)]

    async def check(env: dict[str, str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    refused, with_ca = await asyncio.gather(
        check(_env()), check(_env(SSL_CERT_FILE=str(tls_emulator.cert_path))))
    assert refused[0] != 0 and "certificate" in refused[1].lower(), refused[1]
    assert with_ca[0] == 0, with_ca[1]


@pytest.mark.iterable(api_key=IT_KEY)
async def test_a_ca_bundle_named_in_the_config_is_trusted_and_nothing_else(
    tls_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
) -> None:
    assert tls_emulator.cert_path is not None
    config = _write_config(tmp_path / "config.toml", tls_emulator.instance_url, tls_emulator,
                           iterable_emulator, tmp_path / "s.db", health="enabled = false")
    text = config.read_text().replace(
        "timeout_s = 5\n", f'timeout_s = 5\nca_file = "{tls_emulator.cert_path}"\n', 1)
    trusted = tmp_path / "trusted.toml"
    trusted.write_text(text)
    missing = tmp_path / "missing.toml"
    missing.write_text(text.replace(str(tls_emulator.cert_path), str(tmp_path / "nope.pem")))

    async def check(path: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamsync", "check-config", "--config", str(path),
            env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    ok, bad_path = await asyncio.gather(check(trusted), check(missing))
    assert ok[0] == 0, ok[1]
    assert bad_path[0] == 2 and "salesforce.ca_file" in bad_path[1], bad_path[1]
