"""`streamsync run` as a real subprocess: its config.toml, its environment, start/kill/terminate.

The emulators run in the test's event loop; the service talks to them over loopback. Each run
writes its log (stderr and stdout) to its own file so nothing blocks on a full pipe and the logs
can be scanned for secrets afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator

REPO_ROOT = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Tables of scalars, two levels deep at most ([a] and [a.b]); enough for config.toml."""
    lines: list[str] = []

    def table(name: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) or k == "mapping"}
        nested = {k: v for k, v in body.items() if isinstance(v, dict) and k != "mapping"}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for key, sub in nested.items():
            table(f"{name}.{key}", sub)

    for name, body in data.items():
        if not isinstance(body, dict):
            raise TypeError(f"top-level key {name!r} must be a table")
        table(name, body)
    return "\n".join(lines)


def service_config_data(sf: SalesforceEmulator, it: IterableEmulator, workdir: Path,
                        **sections: dict[str, Any]) -> dict[str, Any]:
    """A config for the two emulators with fast timings; `sections` are merged per table."""
    data: dict[str, Any] = {
        "salesforce": {"login_url": sf.instance_url, "auth": "client_credentials",
                       "client_id": sf.client_id, "api_version": sf.config.api_version,
                       "timeout_s": 10.0},
        "iterable": {"base_url": it.base_url, "project_type": it.config.project_type,
                     "rate_limit_per_s": 500.0, "timeout_s": 10.0},
        "queue": {"path": str(workdir / "streamsync.db"), "lease_s": 3.0,
                  "backoff_base_s": 0.05, "backoff_max_s": 0.5},
        "flush": {"linger_ms": 20},
        "ingest": {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0},
        "health": {"enabled": False},
        "logging": {"level": "INFO", "format": "json"},
        "objects": {"Lead": {}, "Contact": {}, "Account": {}},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def service_env(sf: SalesforceEmulator, it: IterableEmulator) -> dict[str, str]:
    """A minimal environment carrying the two secrets (and nothing else of the test's)."""
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
    env.update({"STREAMSYNC_SF_CLIENT_SECRET": sf.client_secret,
                "STREAMSYNC_ITERABLE_API_KEY": it.api_key,
                "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
    return env


class ServiceProcess:
    """One `python -m streamsync run --config X` process with its log file."""

    def __init__(self, config_path: Path, env: Mapping[str, str], log_path: Path) -> None:
        self.config_path = config_path
        self.env = dict(env)
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.started_wall = 0.0

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streamsync", "run", "--config", str(self.config_path),
                env=self.env, cwd=str(REPO_ROOT), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.started_at = time.monotonic()
        self.started_wall = time.time()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the service process was never started")
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def saw(self, event: str) -> bool:
        """True once the log holds a record of `event`."""
        return f'"event": "{event}"' in self.log_text() or f'"event":"{event}"' in \
            self.log_text()

    async def wait(self, timeout_s: float) -> int:
        if self.proc is None:
            raise RuntimeError("the service process was never started")
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def kill(self) -> int:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        return await self.wait(10.0)

    async def terminate(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        if self.proc is None:
            raise RuntimeError("the service process was never started")
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait(timeout_s)
        return code, time.monotonic() - sent

    async def ensure_dead(self) -> None:
        """Teardown: kill if still running."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
