"""systemd's notify protocol (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

The socket path and watchdog interval come from $NOTIFY_SOCKET and $WATCHDOG_USEC, which the
caller reads (through config) and passes in; without a socket every call is a no-op.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable


class SystemdNotifier:
    """Sends notify datagrams to systemd (or to a test socket standing in for it)."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._path = socket_path or None
        if self._path and self._path.startswith("@"):
            self._path = "\0" + self._path[1:]  # abstract namespace socket
        self.watchdog_interval_s = watchdog_usec / 2_000_000 if watchdog_usec else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines; False when there is no socket or it failed."""
        if self._path is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), self._path)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping WATCHDOG=1 from the event loop at half the configured interval while healthy."""
        if self.watchdog_interval_s is None or not self.enabled:
            return
        while True:
            if healthy():
                self.watchdog()
            await asyncio.sleep(self.watchdog_interval_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
