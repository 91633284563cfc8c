"""One scrape of a real running service, shared by the dashboard and alert-rule checks."""

from __future__ import annotations

import asyncio

import pytest

from tests.contrib.exported import Exported, scrape_running_service


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Sample names and labels of the running service's /metrics (every family populated)."""
    text = asyncio.run(scrape_running_service(tmp_path_factory.mktemp("scrape")))
    return Exported.parse(text)
