"""The shared fixtures connect to both emulators, through the service's own composition root."""

from __future__ import annotations

from streamsync.config import Config
from streamsync.runtime.app import Components
from streamsync.runtime.metrics import Metrics
from tests.conftest import Clients, SyncRig


async def test_fixtures_reach_both_emulators(clients: Clients) -> None:
    records = [r async for r in clients.salesforce.records("SELECT Id, Email FROM Contact")]
    assert len(records) == 12
    assert await clients.iterable.get_user(email="nobody@example.com") is None


async def test_clients_are_the_ones_open_components_builds(clients: Clients,
                                                           config: Config) -> None:
    """Built as `streamsync run` builds them (runtime/app.py), not by a copy of that wiring:
    the Salesforce client names itself in Sforce-Call-Options, caps its requests in flight,
    and shares its auth and call counter with the rest of the components."""
    parts = clients.components
    assert isinstance(parts, Components)
    assert clients.salesforce.call_options_client == config.salesforce.client_name
    assert clients.salesforce.auth is clients.auth is parts.auth
    assert clients.salesforce.counter is clients.counter is parts.counter
    assert clients.session is parts.salesforce_http
    assert set(parts.mappings) == {"Lead", "Contact"}


async def test_the_sync_rig_runs_the_production_pipeline(sync_rig: SyncRig) -> None:
    parts = sync_rig.clients.components
    assert sync_rig.pipeline is parts.pipeline
    assert sync_rig.store is parts.store is sync_rig.flusher.store
    assert isinstance(sync_rig.metrics, Metrics) and parts.metrics is sync_rig.metrics
    assert parts.clock is sync_rig.clock
