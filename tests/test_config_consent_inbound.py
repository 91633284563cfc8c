"""[consent_inbound]: the webhook receiver's bind and secret, the export poller's pace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamsync.config import parse_config
from streamsync.errors import ConfigError
from streamsync.logs import redactor

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n"
ENV = {"STREAMSYNC_SF_PRIVATE_KEY": PEM, "STREAMSYNC_ITERABLE_API_KEY": "iterable-key-1234"}
SECRET = "a-webhook-secret-long-enough"
BASE: dict[str, Any] = {"salesforce": {"client_id": "ck", "username": "sync@example.com"},
                        "objects": {"Lead": {"consent": {"unsubscribe_channel_ids": [39581]}}}}


def _cfg(inbound: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_config({**BASE, "consent_inbound": inbound}, env or {
        **ENV, "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET})


def _problems(inbound: dict[str, Any], env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        _cfg(inbound, env)
    return str(caught.value)


def test_it_needs_an_object_with_consent() -> None:
    no_consent = {**BASE, "objects": {"Lead": {}}, "consent_inbound": {}}
    with pytest.raises(ConfigError, match=r"consent_inbound: needs at least one object with "
                                          r"\[objects.<Name>.consent\]"):
        parse_config(no_consent, {**ENV, "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET})


def test_off_unless_configured_and_defaults_bind_to_localhost() -> None:
    assert parse_config(BASE, ENV).consent_inbound is None
    conf = _cfg({}).consent_inbound
    assert (conf.webhook.host, conf.webhook.port, conf.webhook.path, conf.webhook.auth) == (
        "127.0.0.1", 8081, "/iterable/webhook", "basic")
    assert (conf.poll.enabled, conf.poll.interval_s, conf.poll.lookback_s) == (True, 60.0, 300.0)
    assert conf.apply_subscribes is True


def test_the_webhook_needs_its_secret_long_enough_and_never_shows_it(tmp_path: Path) -> None:
    assert "secret iterable_webhook_secret is missing (needed by consent_inbound.webhook): " \
        "set STREAMSYNC_ITERABLE_WEBHOOK_SECRET" in _problems({}, ENV)
    short = {**ENV, "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": "short"}
    assert "must be at least 16 characters" in _problems({}, short)
    assert _cfg({"webhook": {"enabled": False}}, ENV).consent_inbound.webhook.enabled is False
    cred = tmp_path / "iterable_webhook_secret"
    cred.write_text(SECRET + "\n")
    cfg = _cfg({}, {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.secrets.iterable_webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(cfg) and SECRET not in redactor().text(f"x {SECRET} y")


@pytest.mark.parametrize(("inbound", "expected"), [
    ({"poll": {"interval_s": 10}}, "consent_inbound.poll.interval_s"),
    ({"webhook": {"auth": "none"}}, "consent_inbound.webhook.auth"),
    ({"webhook": {"path": "no-slash"}}, "consent_inbound.webhook.path"),
    ({"webhook": {"max_body_bytes": 10}}, "consent_inbound.webhook.max_body_bytes"),
    ({"webhook": {"secret": "x"}}, "secrets are never read from the config file"),
])
def test_bad_values_name_their_key(inbound: dict[str, Any], expected: str) -> None:
    assert expected in _problems(inbound, {**ENV, "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET})
