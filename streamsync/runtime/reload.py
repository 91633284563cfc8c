"""Reloading config.toml in a running service (SIGHUP, `systemctl reload`): what a reload may
change, and the new config's mappings checked against Salesforce before anything is applied.

Only the objects' sync settings are applied in place (mapping, filter, identity, policies);
the CometD subscription, the store, the HTTP clients and the health server stay as they are.
A change anywhere else (store path, endpoints, bind addresses, tuning, the set of objects or
their channels) needs a restart: the reload says which keys and keeps the running config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import StoreAPI
from streamsync.config import Config, load_config
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import (
    ConfigError,
    FatalError,
    ReloadRefused,
    RetriableError,
    StreamsyncError,
    describe_error,
)
from streamsync.logs import get_logger
from streamsync.runtime.components import Components
from streamsync.runtime.describes import startup_mappings
from streamsync.runtime.mapping_state import object_syncs, schedule_resyncs
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncPipeline
from streamsync.runtime.resync import Resyncer, open_resyncer
from streamsync.runtime.resync_holds import Leader

log = get_logger(__name__)

RELOAD_RETRY_S = 2.0
"""A reload the store could not take (unreachable) is tried again after this long."""

RELOADABLE_OBJECT_KEYS: Final = frozenset({
    "filter", "identity", "email_field", "user_id_field", "delete_policy", "delete_flag_field",
    "null_policy", "out_of_scope", "out_of_scope_flag_field", "convert_dates", "mapping",
})
"""Keys of `[objects.<Name>]` a reload applies; any other change needs a restart."""


def _differing(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            out.extend(_differing(was, now, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def restart_needed(old: Config, new: Config) -> list[str]:
    """The keys whose change a reload cannot apply (empty: it can apply the new config)."""
    out = _differing(old.model_dump(exclude={"objects"}), new.model_dump(exclude={"objects"}),
                     "")
    added = sorted(set(new.objects) - set(old.objects))
    removed = sorted(set(old.objects) - set(new.objects))
    out.extend(f"objects.{name} (added)" for name in added)
    out.extend(f"objects.{name} (removed)" for name in removed)
    for name in sorted(set(old.objects) & set(new.objects)):
        fixed = {"exclude": set(RELOADABLE_OBJECT_KEYS)}
        out.extend(_differing(old.objects[name].model_dump(**fixed),  # type: ignore[arg-type]
                              new.objects[name].model_dump(**fixed),  # type: ignore[arg-type]
                              f"objects.{name}."))
    return out


@dataclass(frozen=True)
class Reloaded:
    """A new config that may be applied, with its mappings compiled against Salesforce."""

    config: Config
    mappings: dict[str, CompiledMapping]


async def prepare_reload(path: Path, running: Config, salesforce: SalesforceClient
                         ) -> Reloaded | None:
    """Read and check the config at `path`; None when it equals the running one.

    ReloadRefused when it is invalid, needs a restart, or cannot be checked against
    Salesforce's describes (a mapped field that does not exist, Salesforce unreachable)."""
    try:
        new = load_config(path, os.environ)
    except ConfigError as exc:
        raise ReloadRefused(str(exc)) from None
    keys = restart_needed(running, new)
    if keys:
        raise ReloadRefused("these changes need a restart: " + ", ".join(keys), keys)
    if new.objects == running.objects:
        return None
    try:
        mappings = await startup_mappings(new, salesforce)
    except (ConfigError, FatalError) as exc:
        raise ReloadRefused(str(exc)) from None
    except (RetriableError, StreamsyncError) as exc:
        raise ReloadRefused(f"cannot check the new mappings against Salesforce: {exc}"
                            ) from None
    return Reloaded(new, mappings)


class ConfigHolder(Protocol):
    """A long-lived part that reads the config as it runs (its `config` is replaced)."""

    config: Config


class Reloader:
    """Applies config.toml again on request (SIGHUP): checked first, then swapped in between
    two awaits, so no task sees half of it; re-syncs the objects whose description changed."""

    def __init__(self, path: Path, config: Config, *, store: StoreAPI,
                 salesforce: SalesforceClient, pipeline: SyncPipeline, resyncer: Resyncer,
                 holders: Sequence[ConfigHolder], clock: Callable[[], float],
                 requested: asyncio.Event | None = None) -> None:
        self.path = path
        self.config = config
        self.store = store
        self.salesforce = salesforce
        self.pipeline = pipeline
        self.resyncer = resyncer
        self.holders = list(holders)
        self.clock = clock
        # Set by SIGHUP; one that came while the service was starting is applied at once.
        self.requested = requested or asyncio.Event()
        self.reloads = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Reload each time `requested` is set, until `stop`."""
        while not stop.is_set():
            await _wait_any(stop, self.requested)
            if stop.is_set():
                return
            self.requested.clear()
            try:
                await self.reload()
            except RetriableError as exc:  # the store cannot be reached: try again shortly
                log.warning("config.reload_deferred", **describe_error(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RELOAD_RETRY_S)
                self.requested.set()

    async def reload(self) -> bool:
        """Apply the file's config if it can be; True when applied. A refusal is logged (and
        kept in the recent errors) and the running config stays."""
        log.info("config.reload_requested", path=str(self.path))
        try:
            ready = await prepare_reload(self.path, self.config, self.salesforce)
        except ReloadRefused as exc:
            log.error("config.reload_refused", path=str(self.path), reason=exc.reason,
                      restart_needed=exc.keys, detail="the running configuration is kept")
            with contextlib.suppress(StreamsyncError):
                await self.store.note_error("reload", f"config reload refused: {exc.reason}",
                                           self.clock())
            return False
        if ready is None:
            log.info("config.reload_unchanged", path=str(self.path))
            return False
        syncs = object_syncs(ready.config, ready.mappings)
        owed = await schedule_resyncs(self.store, syncs, self.clock())
        applied = await self.store.applied_mappings()
        # No await from here on: every part switches to the new config at once.
        self.config = ready.config
        for holder in self.holders:
            holder.config = ready.config
        self.pipeline.mappings = dict(ready.mappings)
        self.pipeline.generations.bump()
        self.resyncer.apply(ready.config, ready.mappings, syncs)
        self.resyncer.activate(owed, applied)
        self.reloads += 1
        log.info("config.reloaded", path=str(self.path), resyncs=sorted(owed))
        return True


async def open_resync_and_reload(parts: Components, path: Path | None, metrics: Metrics, *,
                                 holders: Sequence[ConfigHolder], requested: asyncio.Event,
                                 leads: Leader | None = None
                                 ) -> tuple[Resyncer, Reloader | None]:
    """The service's re-sync worker (re-syncs owed now scheduled) and, given the config file,
    its reloader (`holders` get each reloaded config)."""
    resyncer = await open_resyncer(
        parts.config, store=parts.store, salesforce=parts.salesforce, pipeline=parts.pipeline,
        mappings=parts.mappings, metrics=metrics, clock=parts.clock, leads=leads)
    if path is None:
        return resyncer, None
    return resyncer, Reloader(path, parts.config, store=parts.store, salesforce=parts.salesforce,
                              pipeline=parts.pipeline, resyncer=resyncer, holders=holders,
                              clock=parts.clock, requested=requested)


def request_reload(requested: asyncio.Event, path: Path | None) -> None:
    """SIGHUP's handler: ask for a reload of `path` (applied once the service runs)."""
    if path is None:
        log.warning("config.reload_unavailable", detail="started without a config file")
        return
    requested.set()


async def _wait_any(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
