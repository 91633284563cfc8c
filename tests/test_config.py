"""config.toml: validation with key-named errors, defaults, and secrets from env/credentials."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsync.config import (
    DEFAULT_CONTACT_MAPPING,
    Config,
    load_config,
    parse_config,
)
from streamsync.errors import ConfigError
from streamsync.logs import redactor
from streamsync.runtime.mappings import check_describe, compile_mappings, objects_to_describe
from tests.conftest import emulator_describes

ROOT = Path(__file__).resolve().parents[1]
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----\n"
ENV = {"STREAMSYNC_SF_PRIVATE_KEY": PEM, "STREAMSYNC_ITERABLE_API_KEY": "iterable-key-1234"}
MIN: dict[str, Any] = {"salesforce": {"client_id": "ck", "username": "sync@example.com"}}
DESCRIBES = emulator_describes()


def _errors(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, ENV if env is None else env)
    lines = str(exc.value).splitlines()
    assert lines[0] == "invalid configuration:"
    return [line.strip() for line in lines[1:]]


def _with(section: str, **values: Any) -> dict[str, Any]:
    data = {k: dict(v) for k, v in MIN.items()}
    data.setdefault(section, {}).update(values)
    return data


# ---------------------------------------------------------------- the example and defaults


def test_example_config_loads_and_matches_the_emulator_schema() -> None:
    cfg = load_config(ROOT / "config.toml", {"STREAMSYNC_SF_CLIENT_SECRET": "cs-0000",
                                             "STREAMSYNC_ITERABLE_API_KEY": "it-0000"})
    assert cfg.salesforce.auth == "client_credentials"
    assert set(cfg.objects) == {"Lead", "Contact", "Account"}
    assert cfg.objects["Contact"].mapping["Account.Name"] == "dataFields.Company.Name"
    assert cfg.channel("Lead") == "/data/LeadChangeEvent"
    assert cfg.queue.path == str(ROOT / "streamsync.db")
    assert cfg.health.host == "127.0.0.1"
    assert set(compile_mappings(cfg, DESCRIBES)) == {"Lead", "Contact"}
    assert check_describe(cfg, DESCRIBES) == []


def test_defaults() -> None:
    cfg = parse_config(MIN, ENV)
    assert cfg.salesforce.login_url == "https://login.salesforce.com"
    assert cfg.salesforce.api_version == "66.0" and cfg.salesforce.auth == "jwt"
    assert cfg.salesforce.token_url == "https://login.salesforce.com/services/oauth2/token"
    assert cfg.salesforce.jwt_audience == "https://login.salesforce.com"
    assert cfg.iterable.base_url == "https://api.iterable.com"
    assert cfg.iterable.batch_max_users == 1000
    assert cfg.iterable.batch_max_bytes < 4 * 1024 * 1024
    assert cfg.iterable.rate_limit_per_s == 5
    assert list(cfg.objects) == ["Lead", "Contact", "Account"]
    assert cfg.objects["Contact"].mapping == DEFAULT_CONTACT_MAPPING
    assert cfg.objects["Account"].fan_out[0].object == "Contact"
    assert not cfg.objects["Account"].writes_users
    assert cfg.converted_precedence() == "contact"
    lead = compile_mappings(cfg, DESCRIBES)["Lead"]
    assert "IsConverted" in lead.soql_fields() and "Owner.IsActive" in lead.soql_fields()
    assert cfg.health.host == "127.0.0.1" and cfg.logging.level == "INFO"
    assert cfg.warnings == ()


def test_only_configured_objects_and_defaults_per_known_object() -> None:
    data = {**MIN, "objects": {
        "Contact": {"identity": "both", "null_policy": "omit"},
        "Thing__c": {"mapping": {"Email__c": "email", "Size__c": "dataFields.size"},
                     "filter": "Active__c = true"},
    }}
    cfg = parse_config(data, ENV)
    assert set(cfg.objects) == {"Contact", "Thing__c"}
    assert cfg.objects["Contact"].mapping == DEFAULT_CONTACT_MAPPING  # default mapping kept
    assert cfg.channel("Thing__c") == "/data/Thing__ChangeEvent"
    safe = cfg.objects["Thing__c"].safe_filter
    assert safe is not None and safe.fields == {"Active__c"}


def test_api_version_forms() -> None:
    assert parse_config(_with("salesforce", api_version=62.0), ENV).salesforce.api_version \
        == "62.0"
    assert parse_config(_with("salesforce", api_version="v60.0"), ENV).salesforce.api_version \
        == "60.0"
    assert _errors(_with("salesforce", api_version="36.0")) == [
        "salesforce.api_version: api_version must be 37.0 or later (durable streaming)"]
    assert _errors(_with("salesforce", api_version="latest"))[0].startswith(
        "salesforce.api_version: api_version must look like '66.0'")


# ---------------------------------------------------------------- errors name their key


def test_many_problems_reported_at_once_with_key_paths() -> None:
    data = {
        "salesforce": {"client_id": "", "auth": "saml", "login_url": "ftp://x",
                       "timeout_s": "soon", "colour": "blue"},
        "iterable": {"project_type": "mixed", "batch_max_user": 10, "rate_limit_per_s": 0},
        "objects": {"Lead": {
            "filter": "IsConverted = false; DELETE FROM Lead",
            "identity": "phone",
            "mapping": {"Account.Name": "dataFields.Company.Name", "Bad Path": "dataFields.x",
                        "Email": "dataFields.email", "Title": "dataFields. t"},
        }},
        "queue": {"lease_s": -1},
        "health": {"port": 70000},
        "logging": {"level": "LOUD"},
        "surprise": {},
    }
    errors = _errors(data)
    keys = [e.split(": ", 1)[0] for e in errors]
    for key in ["salesforce.client_id", "salesforce.auth", "salesforce.login_url",
                "salesforce.timeout_s", "salesforce.colour", "iterable.project_type",
                "iterable.batch_max_user", "iterable.rate_limit_per_s", "objects.Lead.filter",
                "objects.Lead.identity", 'objects.Lead.mapping."Bad Path"',
                "objects.Lead.mapping.Email", "objects.Lead.mapping.Title", "queue.lease_s",
                "health.port", "logging.level", "surprise"]:
        assert key in keys, (key, errors)
    text = "\n".join(errors)
    assert "iterable.batch_max_user: unknown key (did you mean batch_max_users?)" in text
    assert "salesforce.colour: unknown key" in text
    assert "map to the `email` target instead" in text
    assert "leading or trailing spaces" in text
    assert "(got 'saml')" in text


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("iterable", {"base_url": "https://api.eu.iterable.com", "project_type": "email"},
         "iterable: Iterable's EU data center has no email-based projects"),
        ("iterable", {"batch_max_bytes": 5_000_000}, "iterable.batch_max_bytes:"),
        ("iterable", {"base_url": "https://user:pw@api.iterable.com"},
         "iterable.base_url: base_url must not carry credentials"),
        ("queue", {"backoff_base_s": 10, "backoff_max_s": 5},
         "queue: backoff_max_s must not be below backoff_base_s"),
        ("salesforce", {"auth": "password", "username": None},
         "salesforce: auth = 'password' needs salesforce.username"),
        ("salesforce", {"client_name": "bad name;"}, "salesforce.client_name:"),
        ("backfill", {"window_field": "CreatedDate; x"}, "backfill.window_field:"),
        ("workers", {"lease_s": 10, "heartbeat_s": 6},
         "workers: heartbeat_s (6) must be at most half of lease_s (10)"),
        ("workers", {"lease_s": 0.5}, "workers.lease_s:"),
    ],
)
def test_section_rules(section: str, values: dict[str, Any], expected: str) -> None:
    data = _with(section, **values)
    if data["salesforce"].get("username", "x") is None:
        del data["salesforce"]["username"]
    errors = _errors(data)
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ({"Lead": {"mapping": {}}}, "objects.Lead: needs a mapping, a fan_out, or both"),
        ({"Account": {"fan_out": [{"object": "Opportunity", "via": "AccountId"}]}},
         "objects.Account.fan_out[0].object: 'Opportunity' is not a configured object"),
        ({"Contact": {"converted_precedence": "lead"}},
         "objects.Contact.converted_precedence: only applies to Lead"),
        ({"Contact": {"delete_flag_field": "dataFields.sfContactId"}},
         "objects.Contact.delete_flag_field: is also a mapping target"),
        ({"Contact": {"delete_flag_field": "email"}}, "objects.Contact.delete_flag_field:"),
        ({"Contact": {"channel": "/topic/Leads"}}, "objects.Contact.channel:"),
        ({"Lead Thing": {"mapping": {"Email": "email"}}}, 'objects."Lead Thing": invalid'),
        ({"Contact": {"email_field": "Email; x"}}, "objects.Contact.email_field:"),
        ({}, "objects: at least one object must be configured"),
        ({"Contact": {"fan_out": [{"object": "Contact"}]}},
         "objects.Contact.fan_out[0].via: required key is missing"),
        ({"Contact": {"mapping": ["Email"]}}, "objects.Contact.mapping:"),
        ({"Contact": {"mapping": {"Email": 5}}}, "objects.Contact.mapping.Email:"),
    ],
)
def test_object_rules(objects: dict[str, Any], expected: str) -> None:
    errors = _errors({**MIN, "objects": objects})
    assert any(e.startswith(expected) for e in errors), errors


def test_identity_must_fit_the_project_type() -> None:
    data = {**MIN, "iterable": {"project_type": "email"},
            "objects": {"Contact": {"identity": "userId"}}}
    assert _errors(data) == ["objects.Contact.identity: email-based Iterable projects identify "
                             "users by email: use 'email' or 'both'"]
    data = {**MIN, "iterable": {"project_type": "userId"}, "objects": {"Contact": {}}}
    assert _errors(data)[0].startswith("objects.Contact.identity: userId-based")
    data["objects"] = {"Contact": {"identity": "both"}}
    assert parse_config(data, ENV).objects["Contact"].identity == "both"


@pytest.mark.parametrize(
    "bad_filter",
    ["IsConverted = false; DELETE FROM Lead", "Name = 'x' OR Id != '", "Name = 'x' -- c",
     "Id IN (SELECT Id FROM Contact)", "Name = 'a\nb'", "Name = 'x' /* */"],
)
def test_filter_injection_rejected_at_config_time(bad_filter: str) -> None:
    errors = _errors({**MIN, "objects": {"Lead": {"filter": bad_filter}}})
    assert errors[0].startswith("objects.Lead.filter: ")


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [("salesforce", "client_secret", "STREAMSYNC_SF_CLIENT_SECRET"),
     ("salesforce", "password", "STREAMSYNC_SF_PASSWORD"),
     ("salesforce", "private_key", "STREAMSYNC_SF_PRIVATE_KEY"),
     ("salesforce", "refresh_token", "STREAMSYNC_SF_REFRESH_TOKEN"),
     ("iterable", "api_key", "STREAMSYNC_ITERABLE_API_KEY"),
     ("iterable", "apiKey", "STREAMSYNC_"),
     ("queue", "access_token", "STREAMSYNC_")],
)
def test_secret_in_the_file_is_an_error_naming_it(section: str, key: str, hint: str) -> None:
    errors = _errors(_with(section, **{key: "hunter2-secret"}))
    assert errors[0].startswith(f"{section}.{key}: secrets are never read from the config file")
    assert hint in errors[0]
    assert "hunter2" not in "\n".join(errors)
    assert not any("unknown key" in e for e in errors)  # reported once, as a secret


def test_mapping_keys_that_look_like_secrets_are_fine() -> None:
    data = {**MIN, "objects": {"Contact": {"mapping": {"Email": "email",
                                                       "Password_Hint__c": "dataFields.hint"}}}}
    assert "Password_Hint__c" in parse_config(data, ENV).objects["Contact"].mapping


def test_secrets_from_env_file_and_credentials_directory(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(PEM)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "iterable_api_key").write_text("from-credentials-dir\n")
    (creds / "sf_private_key").write_text("ignored: env has precedence")
    env = {"STREAMSYNC_SF_PRIVATE_KEY_FILE": str(key_file), "CREDENTIALS_DIRECTORY": str(creds)}
    cfg = parse_config(MIN, env)
    assert cfg.secrets.sf_private_key is not None
    assert cfg.secrets.sf_private_key.get_secret_value() == PEM.strip()
    assert cfg.secrets.iterable_api_key is not None
    assert cfg.secrets.iterable_api_key.get_secret_value() == "from-credentials-dir"
    env["STREAMSYNC_ITERABLE_API_KEY"] = "from-env"
    cfg = parse_config(MIN, env)
    assert cfg.secrets.iterable_api_key is not None
    assert cfg.secrets.iterable_api_key.get_secret_value() == "from-env"


def test_secrets_never_show(tmp_path: Path) -> None:
    cfg = parse_config(MIN, ENV)
    shown = " ".join([repr(cfg), str(cfg), repr(cfg.secrets), str(cfg.model_dump()),
                      cfg.model_dump_json()])
    assert "iterable-key-1234" not in shown and "MIIEv" not in shown
    assert redactor().text("x iterable-key-1234 y") == "x [redacted] y"


@pytest.mark.parametrize(
    ("auth", "extra", "missing"),
    [("jwt", {}, ["sf_private_key", "iterable_api_key"]),
     ("client_credentials", {}, ["sf_client_secret", "iterable_api_key"]),
     ("refresh_token", {}, ["sf_refresh_token", "iterable_api_key"]),
     ("password", {}, ["sf_client_secret", "sf_password", "iterable_api_key"])],
)
def test_missing_secrets_per_flow(auth: str, extra: dict[str, str], missing: list[str]) -> None:
    errors = _errors(_with("salesforce", auth=auth), env=extra)
    assert [e.split(" ")[1] for e in errors] == missing
    assert all("$CREDENTIALS_DIRECTORY/" in e for e in errors)
    cfg = parse_config(_with("salesforce", auth=auth), extra, require_secrets=False)
    assert cfg.salesforce.auth == auth


def test_unreadable_secret_files_name_the_path_not_the_content(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe secret-bytes")
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    env = {"STREAMSYNC_SF_PRIVATE_KEY_FILE": str(tmp_path / "missing.pem"),
           "STREAMSYNC_ITERABLE_API_KEY_FILE": str(binary),
           "STREAMSYNC_SF_CLIENT_SECRET_FILE": str(tmp_path),   # a directory
           "STREAMSYNC_SF_PASSWORD_FILE": str(empty)}
    errors = _errors(MIN, env)
    text = "\n".join(errors)
    assert f"cannot read secret file {tmp_path / 'missing.pem'}: No such file" in text
    assert f"secret file {binary} is not UTF-8 text" in text
    assert f"cannot read secret file {tmp_path}:" in text
    assert f"secret file {empty} is empty" in text
    assert "secret-bytes" not in text


def test_private_key_must_be_pem() -> None:
    errors = _errors(MIN, {**ENV, "STREAMSYNC_SF_PRIVATE_KEY": "not a key at all"})
    assert errors == ["STREAMSYNC_SF_PRIVATE_KEY: the private key is not in PEM format "
                      "(expected a -----BEGIN ... PRIVATE KEY----- block)"]
    assert "not a key at all" not in "\n".join(errors)[60:]


def test_password_flow_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {"STREAMSYNC_SF_CLIENT_SECRET": "cs-5678", "STREAMSYNC_SF_PASSWORD": "pw-5678",
           "STREAMSYNC_ITERABLE_API_KEY": "it-5678"}
    with caplog.at_level(logging.WARNING):
        cfg = parse_config(_with("salesforce", auth="password"), env)
    assert len(cfg.warnings) == 1 and "2027-02-20" in cfg.warnings[0]
    assert any(getattr(r, "fields", {}).get("message") == cfg.warnings[0]
               for r in caplog.records)
    assert redactor().text("pw-5678 cs-5678 it-5678") == "[redacted] [redacted] [redacted]"


def test_plain_http_to_a_remote_host_warns() -> None:
    cfg = parse_config(_with("iterable", base_url="http://iterable.internal.example"), ENV)
    assert cfg.warnings == ("iterable.base_url uses plain http to a non-local host: secrets "
                            "travel unencrypted",)
    assert parse_config(_with("iterable", base_url="http://127.0.0.1:9000"), ENV).warnings == ()


def test_environment_is_injected_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="secret sf_private_key is missing"):
        parse_config(MIN, {})
    own = ["config.py", "models.py", "core/ids.py", "core/soql.py", "core/mapping.py",
           "core/events.py", "core/batching.py", "core/describe_check.py"]
    for rel in own:
        source = (ROOT / "streamsync" / rel).read_text()
        assert "os.environ" not in source and "getenv" not in source, rel


# ---------------------------------------------------------------- files


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(tmp_path / "nope.toml", ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("[salesforce\nclient_id = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML: .*line 1"):
        load_config(bad, ENV)
    wrong_types = tmp_path / "types.toml"
    wrong_types.write_text('[salesforce]\nclient_id = 5\nusername = "u"\n[iterable]\n'
                           'batch_max_users = "many"\nupdate_only = "sometimes"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(wrong_types, ENV)
    text = str(exc.value)
    assert "salesforce.client_id: Input should be a valid string" in text
    assert "iterable.batch_max_users: Input should be a valid integer" in text
    assert "iterable.update_only: Input should be a valid boolean" in text


def test_relative_queue_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "etc" / "streamsync.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[salesforce]\nclient_id = "ck"\nusername = "u"\n'
                        '[queue]\npath = "state/queue.db"\n')
    cfg = load_config(cfg_file, ENV)
    assert cfg.queue.path == str(tmp_path / "etc" / "state" / "queue.db")
    cfg_file.write_text('[salesforce]\nclient_id = "ck"\nusername = "u"\n'
                        '[queue]\npath = "/var/lib/streamsync/q.db"\n')
    assert load_config(cfg_file, ENV).queue.path == "/var/lib/streamsync/q.db"


def test_config_is_frozen() -> None:
    cfg = parse_config(MIN, ENV)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        cfg.iterable.batch_max_users = 5
    assert isinstance(cfg, Config)


def test_secret_file_permissions_do_not_matter_to_loading(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("it-key-9999")
    os.chmod(key, stat.S_IRUSR)
    cfg = parse_config(MIN, {**ENV, "STREAMSYNC_ITERABLE_API_KEY": "",
                             "STREAMSYNC_ITERABLE_API_KEY_FILE": str(key)})
    assert cfg.secrets.iterable_api_key is not None
    assert cfg.secrets.iterable_api_key.get_secret_value() == "it-key-9999"


def test_objects_to_describe_drives_fetching() -> None:
    from streamsync.emulators.salesforce.schema import SCHEMA, describe

    cfg = parse_config(MIN, ENV)
    fetched: dict[str, Any] = {}
    rounds = 0
    while need := objects_to_describe(cfg, fetched):
        rounds += 1
        assert rounds < 5
        for name in need:
            fetched[name] = describe(SCHEMA[name], "66.0")
    assert set(fetched) == {"Lead", "Contact", "Account", "User"}
    assert check_describe(cfg, fetched) == []
    broken = parse_config({**MIN, "objects": {"Contact": {"mapping": {
        "Email": "email", "Acount.Name": "dataFields.c"}, "filter": "Nope__c = 1"}}}, ENV)
    assert [str(p) for p in check_describe(broken, fetched)] == [
        "objects.Contact.mapping.\"Acount.Name\": Contact has no relationship 'Acount' "
        "(did you mean Account?)",
        "objects.Contact.filter: Contact has no field 'Nope__c'"]


def test_objects_named_like_secrets_and_internal_keys() -> None:
    data = {**MIN, "objects": {"Password_Reset__c": {"mapping": {"Email__c": "email"}}}}
    assert "Password_Reset__c" in parse_config(data, ENV).objects
    assert _errors({**MIN, "warnings": ["x"]}) == ["warnings: unknown key"]
    assert _errors({**MIN, "secrets": {"a": "b"}})[0].startswith(
        "secrets: secrets are never read from the config file")


def test_missing_secrets_reported_alongside_other_problems() -> None:
    errors = _errors(_with("iterable", batch_max_users=0), env={})
    assert [e.split(":")[0] for e in errors] == [
        "iterable.batch_max_users", "secret sf_private_key is missing (needed by jwt auth)",
        "secret iterable_api_key is missing (needed by Iterable auth)"]


def test_unquoted_dotted_mapping_keys_get_a_hint(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[salesforce]\nclient_id = "ck"\nusername = "u"\n'
                        '[objects.Contact.mapping]\nEmail = "email"\n'
                        'Account.Name = "dataFields.Company.Name"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file, ENV)
    assert ('objects.Contact.mapping.Account: a table, not a target: quote dotted source '
            'paths, e.g. "Account.Name" = "dataFields.x"') in str(exc.value)


def test_bulk_envelope() -> None:
    assert parse_config(MIN, ENV).iterable.bulk_envelope() == {}
    cfg = parse_config(_with("iterable", update_only=True, create_new_fields=False), ENV)
    assert cfg.iterable.bulk_envelope() == {"createNewFields": False, "updateOnly": True}


_toml_scalars = (st.none() | st.booleans() | st.integers(-10, 10**7) | st.floats(allow_nan=False)
                 | st.text(max_size=12) | st.sampled_from(["jwt", "email", "dataFields.x",
                                                           "Email", "Account.Name", "66.0"]))
_toml_values = st.recursive(_toml_scalars, lambda c: st.lists(c, max_size=3)
                            | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=12)
_section_keys = {
    "salesforce": ["login_url", "auth", "client_id", "username", "api_version", "timeout_s"],
    "iterable": ["base_url", "project_type", "batch_max_users", "rate_limit_per_s"],
    "objects": ["Lead", "Contact", "Thing__c", "bad name"],
    "queue": ["path", "lease_s"], "logging": ["level"], "health": ["port", "host"],
}


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for section, keys in _section_keys.items():
        if draw(st.booleans()):
            data[section] = draw(st.dictionaries(st.sampled_from(keys), _toml_values,
                                                 max_size=4))
    if draw(st.booleans()):
        data[draw(st.text(max_size=6))] = draw(_toml_values)
    return data


@given(_configs())
@settings(max_examples=200, deadline=None)
def test_arbitrary_config_only_raises_config_error(data: dict[str, Any]) -> None:
    try:
        cfg = parse_config(data, ENV)
    except ConfigError as exc:
        assert str(exc).startswith("invalid configuration:")
        assert "iterable-key-1234" not in str(exc)
        return
    assert isinstance(cfg, Config)
    try:
        compile_mappings(cfg, DESCRIBES)
    except ConfigError as exc:  # a mapped path the emulator's org does not have
        assert "mapping" in str(exc)


def test_compiled_with_describes_keeps_text_fields_as_text() -> None:
    data = {**MIN, "objects": {"Contact": {"mapping": {
        "Email": "email", "Title": "dataFields.title", "Birthdate": "dataFields.bday",
        "Owner.CreatedDate": "dataFields.ownerSince", "Account.Name": "dataFields.company"}}}}
    cfg = parse_config(data, ENV)
    record = {"Id": "003000000000001", "Email": "a@example.com", "Title": "2024-05-01",
              "Birthdate": "1990-01-02", "Owner": {"CreatedDate": "2020-01-01T10:00:00.000+0000"},
              "Account": {"Name": "2023-12-31T23:59:59.000+0000"}}
    typed = compile_mappings(cfg, DESCRIBES)["Contact"].map(record).payload["dataFields"]
    assert typed == {"title": "2024-05-01", "bday": "1990-01-02 00:00:00 +00:00",
                     "ownerSince": "2020-01-01 10:00:00 +00:00",
                     "company": "2023-12-31T23:59:59.000+0000"}


def test_compiled_needs_every_mapped_field_in_the_describes() -> None:
    data = {**MIN, "objects": {"Contact": {"mapping": {
        "Email": "email", "Titel": "dataFields.title"}}}}
    cfg = parse_config(data, ENV)
    with pytest.raises(ConfigError, match="Contact mapping 'Titel': Contact has no field"):
        compile_mappings(cfg, DESCRIBES)
    without_user = {k: v for k, v in DESCRIBES.items() if k != "User"}
    with pytest.raises(ConfigError, match="no describe result for object 'User'"):
        compile_mappings(parse_config(MIN, ENV), without_user)


def test_watchdog_shorter_than_the_long_poll_is_a_config_error() -> None:
    data = {"salesforce": {"client_id": "x", "auth": "client_credentials"},
            "ingest": {"watchdog_s": 60}}
    env = {"STREAMSYNC_SF_CLIENT_SECRET": "s", "STREAMSYNC_ITERABLE_API_KEY": "k"}
    with pytest.raises(ConfigError, match="watchdog_s"):
        parse_config(data, env)
    ok = parse_config({**data, "ingest": {"watchdog_s": 5, "long_poll_timeout_s": 2}}, env)
    assert ok.ingest.long_poll_timeout_s == 2
