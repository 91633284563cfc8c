"""contrib/prometheus/alerts.yml: valid for promtool, every alert unit-tested firing and quiet
on synthetic series, and every query on metrics the running service really exports.

promtool is Debian's (package `prometheus`); `make test` provisions it as root (see the Makefile's
`promtool` target). Without it these tests fail, they do not skip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.contrib.exported import Exported, parse_promql, problems

RULES_DIR = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"
SEVERITIES = {"warning", "critical"}


def promtool() -> str:
    """The promtool on PATH, else the one `make promtool` put beside the venv's python."""
    found = shutil.which("promtool")
    if found is None:
        beside = Path(sys.executable).parent / "promtool"
        found = str(beside) if beside.is_file() else None
    if found is None:
        pytest.fail("promtool not found: run `make promtool` as root (it unpacks it from "
                    "Debian's prometheus package into .venv/bin) or `apt-get install "
                    "prometheus`", pytrace=False)
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _rule_tests() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    return doc


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule_and_a_wrong_expectation(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n"
                      "    expr: rate(streamsync_queue_depth[5m]\n", encoding="utf-8")
    assert run_promtool("check", "rules", broken).returncode != 0
    shutil.copy(RULES, tmp_path / "alerts.yml")
    wrong = _rule_tests()
    for case in wrong["tests"]:
        for check in case["alert_rule_test"]:
            check["exp_alerts"] = [] if check["exp_alerts"] else [{"exp_labels": {}}]
    (tmp_path / "wrong_test.yml").write_text(yaml.safe_dump(wrong), encoding="utf-8")
    result = run_promtool("test", "rules", tmp_path / "wrong_test.yml")
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    names = {rule["alert"] for rule in _rules()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _rule_tests()["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_delay_a_severity_and_a_runbook() -> None:
    for rule in _rules():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:` (a blip would page)"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "README.md" in annotations["description"], f"{name}: no runbook hint"


def test_rules_and_their_test_series_use_exported_metrics(exported: Exported) -> None:
    found: list[str] = []
    for rule in _rules():
        found += problems(f"alert {rule['alert']}", parse_promql(rule["expr"]), exported)
    for case in _rule_tests()["tests"]:
        for series in case["input_series"]:
            found += problems(f"test {case['name']!r}", parse_promql(series["series"]),
                              exported)
    assert found == []
