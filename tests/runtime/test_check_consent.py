"""check-config for consent (issue 13 item 1): opt-out fields exist and are checkboxes, the
channel, message type and list ids (or names) exist in Iterable, and the subscription endpoints
are enabled; against both emulators over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.check_config import check_config
from tests.conftest import MakeConfig


def _catalog(it: IterableEmulator) -> Any:
    return it.messaging_for(it.project).catalog


async def test_a_consent_config_that_matches_both_systems_passes(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    customers = _catalog(iterable_emulator).add_list("Customers", None, 0)
    config = make_config(sf_emulator, iterable_emulator, tmp_path, objects={
        "Lead": {"consent": {"unsubscribe_channel_ids": [39581],
                             "unsubscribe_message_type_ids": [48921],
                             "remove_from_lists": ["customers", customers.id]}},
        "Contact": {"consent": {"opt_out_fields": ["HasOptedOutOfEmail", "DoNotCall"],
                                "remove_from_lists": [customers.id]}}})
    report = await check_config(config)
    assert report.problems == []
    assert "Lead: consent groups exist in Iterable" in report.passed
    assert "Contact: consent groups exist in Iterable" in report.passed
    assert "iterable: the subscription endpoints answer (consent writes)" in report.passed


async def test_every_consent_problem_is_named_by_its_key(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    catalog = _catalog(iterable_emulator)
    catalog.add_list("Twice", None, 0)
    catalog.add_list("Twice", None, 1)
    config = make_config(sf_emulator, iterable_emulator, tmp_path, objects={
        "Lead": {"consent": {"opt_out_fields": ["HasOptedOutOfEmial", "Email"],
                             "unsubscribe_channel_ids": [39581, 999],
                             "unsubscribe_message_type_ids": [5],
                             "remove_from_lists": ["Twice", 424242]}},
        "Contact": {}})
    report = await check_config(config)
    found = {(p.subject, p.path): p.message for p in report.problems}
    fields = [p.message for p in report.problems if p.path == "consent.opt_out_fields"]
    assert any("no field 'HasOptedOutOfEmial'" in m and "HasOptedOutOfEmail" in m
               for m in fields), fields
    assert any("Lead.Email is of type email" in m and "checkbox" in m for m in fields), fields
    assert "no channel with id [999]" in found[("Lead", "consent.unsubscribe_channel_ids")]
    assert "no message type with id [5]" in found[
        ("Lead", "consent.unsubscribe_message_type_ids")]
    # Iterable's side is checked even when Salesforce's has problems (names first).
    assert "2 Iterable lists" in found[("Lead", "consent.remove_from_lists")]


@pytest.mark.iterable(subscriptions_api=False)
async def test_subscription_endpoints_turned_off_are_a_problem_with_the_fix(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path, objects={
        "Lead": {"consent": {"unsubscribe_channel_ids": [39581]}}, "Contact": {}})
    report = await check_config(config)
    [problem] = report.problems
    assert problem.path == "objects.*.consent"
    assert "Subscriptions API" in problem.message and "404" not in problem.path
