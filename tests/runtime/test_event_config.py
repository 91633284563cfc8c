"""`[[events]]` rules (issue 14 item 1): config errors are clear at load; check-config checks
every path, condition field, changed field and profile against the describes and runs the
rule's query with its condition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsync.config import parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import ConfigError
from streamsync.runtime.event_rules import compile_rules
from tests.conftest import emulator_describes
from tests.test_cli_remote import emulator_config, emulator_env, run_cli

ENV = {"STREAMSYNC_SF_CLIENT_SECRET": "s", "STREAMSYNC_ITERABLE_API_KEY": "k"}
WON: dict[str, Any] = {"name": "won", "object": "Opportunity", "trigger": "update",
                       "changed_fields": ["StageName"], "condition": "StageName = 'Closed Won'",
                       "event_name": "opportunityWon", "profile": "primary_contact_role",
                       "mapping": {"Name": "dataFields.name", "Account.Name": "dataFields.acc"}}


def load(*rules: dict[str, Any]) -> Any:
    return parse_config({"salesforce": {"client_id": "x", "auth": "client_credentials"},
                         "events": list(rules)}, ENV)


def test_a_valid_rule_compiles_with_the_describe_types() -> None:
    [rule] = compile_rules(load(WON), emulator_describes())
    assert rule.profile.via_primary_role and rule.profile.path == "Contact.Email"
    assert rule.read_fields()[:3] == ["Id", "Name", "Account.Name"]
    assert "StageName" in rule.read_fields()


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "a b"}, "events[0].name: a rule name is 1-64 letters, digits and hyphens"),
    ({"trigger": "merge"}, "events[0].trigger[0]"),
    ({"condition": "Account.Name = 'x'"}, "reads the record's own fields only"),
    ({"condition": "CloseDate = TODAY"}, "relative date literal 'TODAY'"),
    ({"condition": "StageName = 'x' OR 1=1; --"}, "events[0].condition"),
    ({"mapping": {"Name": "email"}}, 'events[0].mapping.Name: event data goes to dataFields'),
    ({"mapping": {"Account": {"Name": "dataFields.acc"}}},
     'events[0].mapping.Account: a table, not a target: quote dotted source paths'),
    ({"object": "Lead"}, "primary_contact_role only applies to Opportunity rules"),
    ({"trigger": ["create", "update"]}, "changed_fields: only applies to a rule whose trigger"),
    ({"event_name": " spaced "}, "events[0].event_name"),
    ({"profile": "Contact Email"}, "events[0].profile"),
])
def test_config_errors_name_the_rule_and_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({**WON, **change})
    assert message in str(caught.value)


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"events\[1\].name: 'won' is also the name of"):
        load(WON, {**WON, "event_name": "other"})


async def test_check_config_names_unknown_fields_and_runs_the_rule_query(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    extra = """
[[events]]
name = "won"
object = "Opportunity"
trigger = "update"
changed_fields = ["Stage"]
condition = "StageNam = 'Closed Won'"
event_name = "opportunityWon"
profile = "CloseDate"
[events.mapping]
"Account.Nmae" = "dataFields.account"

[[events]]
name = "ok"
object = "Opportunity"
trigger = "update"
condition = "Amount > 'not a number'"
event_name = "big"
profile = "primary_contact_role"
"""
    config = emulator_config(tmp_path, sf_emulator, iterable_emulator, extra)
    code, out, err = await run_cli("check-config", "--config", str(config), "--json",
                                   env=emulator_env(sf_emulator, iterable_emulator))
    assert code == 1, (out, err)
    problems = {(p["subject"], p["path"]): p["message"] for p in orjson.loads(out)["problems"]}
    assert "Account has no field 'Nmae' (did you mean Name?)" in \
        problems[("events[0]", 'mapping."Account.Nmae"')]
    assert "no field 'StageNam'" in problems[("events[0]", "condition")]
    assert "no field 'Stage'" in problems[("events[0]", "changed_fields[0]")]
    assert "of type 'date'" in problems[("events[0]", "profile")]
    assert "Salesforce rejected the rule's query" in problems[("events[1]", "condition")]
