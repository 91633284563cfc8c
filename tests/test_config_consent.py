"""[objects.<Name>.consent] and [consent]: defaults and every validation error by key."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.config import parse_config
from streamsync.errors import ConfigError

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n"
ENV = {"STREAMSYNC_SF_PRIVATE_KEY": PEM, "STREAMSYNC_ITERABLE_API_KEY": "iterable-key-1234"}
MIN: dict[str, Any] = {"salesforce": {"client_id": "ck", "username": "sync@example.com"}}


def _lead(consent: dict[str, Any]) -> dict[str, Any]:
    return {**MIN, "objects": {"Lead": {"consent": consent}, "Contact": {}}}


def _errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, ENV)
    return [line.strip() for line in str(exc.value).splitlines()[1:]]


def test_defaults_and_a_full_consent_table() -> None:
    cfg = parse_config(_lead({"unsubscribe_channel_ids": [39581]}), ENV)
    consent = cfg.objects["Lead"].consent
    assert consent is not None
    assert consent.opt_out_fields == ["HasOptedOutOfEmail"]
    assert consent.resubscribe is False
    assert consent.unsubscribe_message_type_ids == [] and consent.remove_from_lists == []
    assert cfg.objects["Contact"].consent is None
    assert list(cfg.consent_objects()) == ["Lead"]
    assert (cfg.consent.rate_limit_per_s, cfg.consent.batch_max_users) == (5.0, 1000)
    cfg = parse_config(_lead({"opt_out_fields": ["HasOptedOutOfEmail", "Do_Not_Market__c"],
                              "unsubscribe_message_type_ids": [48921],
                              "remove_from_lists": ["Newsletter", 1064898],
                              "resubscribe": True}), ENV)
    consent = cfg.objects["Lead"].consent
    assert consent is not None and consent.remove_from_lists == ["Newsletter", 1064898]
    assert consent.resubscribe is True


@pytest.mark.parametrize(
    ("consent", "expected"),
    [
        ({}, "objects.Lead.consent: an opt-out must mean something in Iterable"),
        ({"unsubscribe_channel_ids": [0]},
         "objects.Lead.consent.unsubscribe_channel_ids: ids must be positive integers"),
        ({"unsubscribe_channel_ids": ["39581"]},
         "objects.Lead.consent.unsubscribe_channel_ids[0]:"),
        ({"unsubscribe_message_type_ids": [5, 5]},
         "objects.Lead.consent.unsubscribe_message_type_ids: lists an id twice"),
        ({"remove_from_lists": [" "]},
         "objects.Lead.consent.remove_from_lists: a list name must be 1-255 characters"),
        ({"remove_from_lists": ["News", "news "]},
         "objects.Lead.consent.remove_from_lists: names a list twice"),
        ({"remove_from_lists": [-3]},
         "objects.Lead.consent.remove_from_lists: a list id must be a positive integer"),
        ({"unsubscribe_channel_ids": [1], "opt_out_fields": []},
         "objects.Lead.consent.opt_out_fields: needs at least one field"),
        ({"unsubscribe_channel_ids": [1], "opt_out_fields": ["HasOptedOut; DROP"]},
         "objects.Lead.consent.opt_out_fields: invalid opt-out field"),
        ({"unsubscribe_channel_ids": [1], "resubscribe": "yes"},
         "objects.Lead.consent.resubscribe:"),
        ({"unsubscribe_channel_ids": [1], "resubscrbe": True},
         "objects.Lead.consent.resubscrbe: unknown key (did you mean resubscribe?)"),
    ],
)
def test_consent_rules(consent: dict[str, Any], expected: str) -> None:
    errors = _errors(_lead(consent))
    assert any(e.startswith(expected) for e in errors), errors


def test_consent_needs_an_object_that_writes_users() -> None:
    data = {**MIN, "objects": {"Contact": {}, "Account": {
        "consent": {"unsubscribe_channel_ids": [1]}}}}
    assert _errors(data) == ["objects.Account.consent: needs a mapping: only objects that "
                             "write Iterable users carry consent"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"rate_limit_per_s": 0}, "consent.rate_limit_per_s:"),
        ({"batch_max_users": 1001}, "consent.batch_max_users:"),
        ({"max_in_flght": 2}, "consent.max_in_flght: unknown key (did you mean max_in_flight?)"),
    ],
)
def test_consent_section_rules(values: dict[str, Any], expected: str) -> None:
    errors = _errors({**MIN, "consent": values})
    assert any(e.startswith(expected) for e in errors), errors
