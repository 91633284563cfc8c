"""Health endpoint, Prometheus metrics and the systemd notify protocol."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from streamsync.runtime.health import HealthServer, LoopMonitor, Readiness
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.notify import SystemdNotifier


async def test_health_ready_and_metrics_over_http() -> None:
    metrics = Metrics()
    metrics.queue_depth.set(7)
    metrics.events_received.labels(channel="/data/LeadChangeEvent").inc(3)
    state = {"ready": Readiness(False, "not subscribed")}
    server = HealthServer(metrics, lambda: state["ready"])
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["reason"] == "not subscribed"
            state["ready"] = Readiness(True)
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert r.headers["Content-Type"].startswith("text/plain")
    finally:
        await server.stop()
    assert "streamsync_queue_depth 7.0" in text
    assert 'streamsync_events_received_total{channel="/data/LeadChangeEvent"} 3.0' in text


async def test_health_binds_localhost_by_default() -> None:
    server = HealthServer(Metrics(), lambda: Readiness(True))
    await server.start()
    try:
        assert [host for host, _ in server.bound] == ["127.0.0.1"]
    finally:
        await server.stop()


def test_stalled_loop_fails_healthz() -> None:
    monitor = LoopMonitor(stall_s=0.0)
    assert not monitor.alive()


def test_notify_protocol_against_a_socket_standing_in_for_systemd(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    fake_systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    fake_systemd.bind(path)
    fake_systemd.settimeout(2)
    notifier = SystemdNotifier(path, watchdog_usec=2_000_000)
    try:
        assert notifier.ready("subscribed to 3 channels")
        assert fake_systemd.recv(4096).decode() == "READY=1\nSTATUS=subscribed to 3 channels"
        assert notifier.watchdog()
        assert fake_systemd.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping()
        assert fake_systemd.recv(4096) == b"STOPPING=1"
        assert notifier.watchdog_interval_s == 1.0
    finally:
        notifier.close()
        fake_systemd.close()


def test_notify_without_socket_is_a_no_op() -> None:
    notifier = SystemdNotifier(None)
    assert not notifier.enabled
    assert notifier.ready() is False
