"""contrib/grafana/streamsync.json imports into any Grafana (datasource as an input) and queries
only metrics, and labels, that the running service exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contrib.exported import Exported, parse_promql, problems

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "streamsync.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def test_dashboard_imports_anywhere(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    refs = [ds for ds in _datasources(dashboard["panels"]) if ds is not None]
    refs += list(_datasources(dashboard["templating"]))
    assert refs and all(ds == DATASOURCE for ds in refs), "a datasource is hard-coded"
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["description"], panel["title"]
            refids = [t["refId"] for t in panel["targets"]]
            assert len(refids) == len(set(refids)), panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_every_query_uses_exported_metrics_and_labels(
        dashboard: dict[str, Any], exported: Exported) -> None:
    found: list[str] = []
    for title, target in _targets(dashboard):
        queried = parse_promql(target["expr"])
        legend = LEGEND_LABEL.findall(target.get("legendFormat", ""))
        found += problems(f"panel {title!r}", queried, exported, legend)
    for variable in dashboard["templating"]["list"]:
        match = LABEL_VALUES.match(variable["query"]["query"])
        assert match is not None, variable["name"]
        metric, label = match.groups()
        found += problems(f"variable {variable['name']!r}", parse_promql(metric), exported,
                          [label])
    assert found == []


def test_dashboard_shows_what_operators_need(dashboard: dict[str, Any]) -> None:
    queried: set[str] = set()
    exprs = [t["expr"] for _, t in _targets(dashboard)]
    for expr in exprs:
        queried |= parse_promql(expr).metric_names()
    wanted = {
        "streamsync_events_received_total", "streamsync_records_synced_total",
        "streamsync_commit_to_iterable_seconds_bucket", "streamsync_queue_depth",
        "streamsync_queue_oldest_age_seconds", "streamsync_dead_letters",
        "streamsync_dead_lettered_total", "streamsync_iterable_rate_limited_total",
        "streamsync_iterable_requests_total", "streamsync_salesforce_api_usage",
        "streamsync_salesforce_api_limit", "streamsync_salesforce_api_calls_total",
        "streamsync_backfill_windows", "streamsync_backfill_records_done",
        "streamsync_reconciliations_total", "streamsync_subscribed",
    }
    assert wanted - queried == set()
    quantiles = [e for e in exprs if e.startswith("histogram_quantile(")
                 and "streamsync_commit_to_iterable_seconds_bucket" in e]
    assert len(quantiles) >= 3


def test_the_check_catches_a_renamed_metric_or_label(exported: Exported) -> None:
    """The comparison itself can fail: a renamed metric, a label it does not carry, a grouping
    or legend label on none of the query's metrics."""
    assert problems("x", parse_promql("rate(streamsync_events_total[5m])"), exported)
    assert problems("x", parse_promql('streamsync_dead_letters{object="Lead"}'), exported)
    assert problems("x", parse_promql("sum by (object) (streamsync_queue_depth)"), exported)
    assert problems("x", parse_promql("streamsync_queue_depth"), exported, ["reason"])
    assert not problems("x", parse_promql(
        'sum by (reason) (streamsync_dead_letters{instance=~"$instance"})'), exported)
