"""Iterable emulator profile semantics: merging, identity per project type, types, field rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamsync.emulators.iterable.validation import (
    is_iterable_date,
    normalize_email,
    user_id_problem,
)
from tests.emulators.test_iterable_support import Api, MakeApi, api_factory


@pytest.fixture
async def make_api() -> AsyncIterator[MakeApi]:
    async with api_factory() as make:
        yield make


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api(project_type="email")


def fields_of(reply: Any) -> dict[str, Any]:
    return dict(reply.body["user"]["dataFields"])


# -- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("myUser@Example.com", "myuser@example.com"),
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x@placeholder.email", "x@placeholder.email"),
        ("user @example.com", None),
        ("user@example", None),
        ("user@example.notatld", None),
        ("user@localhost", None),
        ("user@example.com.", None),
        ("user..dots@example.com", None),
        ("@example.com", None),
        ("user@", None),
        ("shrouti", None),
        ("user@-bad.com", None),
        ("a" * 65 + "@example.com", None),
    ],
)
def test_email_validation_checks_format_and_tld_and_lower_cases(
    raw: str, expected: str | None
) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "user_id,ok",
    [
        ("003ABC", True),
        ("x" * 52, True),
        ("x" * 53, False),
        ("", False),
        ("   ", False),
        ("trailing ", False),
        ("tab\tinside", False),
        ("café", False),
        ("Case-Sensitive_1", True),
    ],
)
def test_user_id_rules(user_id: str, ok: bool) -> None:
    assert (user_id_problem(user_id) is None) is ok


@pytest.mark.parametrize(
    "value,is_date",
    [
        ("2024-01-31", True),
        ("2024-01-31 12:34:56", True),
        ("2016-08-02 18:53:45 +00:00", True),
        ("2024-01-31T12:34:56.000+0000", True),
        ("2024-01-31T12:34:56.000+05:30", True),
        ("2024-01-31T12:34:56.000Z", True),
        ("2020-04-13 14:04:09.000", False),
        ("2024-02-30", False),
        ("2024-01-31 25:00:00", False),
        ("2024-01-31T12:34:56", False),
        ("31/01/2024", False),
        ("hello", False),
    ],
)
def test_iterable_date_formats(value: str, is_date: bool) -> None:
    assert is_iterable_date(value) is is_date


# -- merging -----------------------------------------------------------------------------------


async def test_top_level_fields_replaced_others_kept_and_null_removes(api: Api) -> None:
    await api.bulk([{"email": "a@example.com",
                     "dataFields": {"a": 1, "b": "keep", "obj": {"x": 1, "y": 2}}}])
    await api.bulk([{"email": "a@example.com", "dataFields": {"a": 2, "obj": {"z": 3}}}])
    data = fields_of(await api.get_email("a@example.com"))
    assert (data["a"], data["b"], data["obj"]) == (2, "keep", {"z": 3})
    await api.bulk([{"email": "a@example.com", "dataFields": {"b": None}}])
    assert "b" not in fields_of(await api.get_email("a@example.com"))


async def test_merge_nested_objects_merges_top_level_objects(api: Api) -> None:
    await api.update(email="a@example.com", dataFields={"mySettings": {"mobile": True}})
    await api.update(
        email="a@example.com", dataFields={"mySettings": {"email": True}}, mergeNestedObjects=True
    )
    data = fields_of(await api.get_email("a@example.com"))
    assert data["mySettings"] == {"mobile": True, "email": True}
    await api.bulk([{"email": "a@example.com", "mergeNestedObjects": True,
                     "dataFields": {"mySettings": {"mobile": None}}}])
    assert fields_of(await api.get_email("a@example.com"))["mySettings"] == {"email": True}


async def test_duplicates_in_one_batch_are_applied_in_order(api: Api) -> None:
    reply = await api.bulk([
        {"email": "d@example.com", "dataFields": {"v": 1, "first": "yes"}},
        {"email": "D@example.com", "dataFields": {"v": 2}},
        {"email": "d@example.com", "dataFields": {"v": 3, "last": "yes"}},
    ])
    assert (reply.body["successCount"], reply.body["failCount"]) == (3, 0)
    data = fields_of(await api.get_email("d@example.com"))
    assert (data["v"], data["first"], data["last"]) == (3, "yes", "yes")
    history = api.emu.state.history("d@example.com")
    assert [h["dataFields"].get("v") for h in history] == [1, 2, 3]


# -- identity ----------------------------------------------------------------------------------


async def test_email_project_email_wins_and_overwrites_user_id(api: Api) -> None:
    await api.bulk([{"email": "a@example.com", "userId": "u1"}])
    await api.bulk([{"email": "a@example.com", "userId": "u2", "dataFields": {"k": 1}}])
    user = (await api.get_email("a@example.com")).body["user"]
    assert user["userId"] == "u2"
    assert (await api.get_user_id("u1")).body == {}
    await api.update(email="a@example.com", dataFields={"userId": "u3"})
    assert (await api.get_user_id("u3")).body["user"]["email"] == "a@example.com"


async def test_email_project_user_id_only_needs_an_existing_user_or_prefer_user_id(
    api: Api,
) -> None:
    reply = await api.bulk([{"userId": "ghost", "dataFields": {"a": 1}}])
    assert reply.body["failedUpdates"]["notFoundUserIds"] == ["ghost"]
    assert (reply.body["successCount"], reply.body["failCount"]) == (0, 1)
    single = await api.update(userId="ghost")
    assert (single.status, single.body["code"]) == (400, "UnknownUserIdError")
    reply = await api.bulk([{"userId": "ghost", "preferUserId": True, "dataFields": {"a": 1}}])
    assert reply.body["successCount"] == 1
    user = (await api.get_user_id("ghost")).body["user"]
    assert user["email"].endswith("@placeholder.email")
    await api.bulk([{"userId": "ghost", "dataFields": {"a": 2}}])
    assert fields_of(await api.get_user_id("ghost"))["a"] == 2


async def test_user_id_project_identifies_by_user_id_only(make_api: MakeApi) -> None:
    api = await make_api(project_type="userId")
    reply = await api.bulk([
        {"email": "only@example.com", "dataFields": {"a": 1}},
        {"userId": "u1", "email": "shared@example.com", "dataFields": {"a": 1}},
        {"userId": "u2", "email": "shared@example.com", "dataFields": {"a": 2}},
    ])
    assert reply.body["failedUpdates"]["notFoundEmails"] == ["only@example.com"]
    assert reply.body["successCount"] == 2
    # Emails are not unique in userID-based projects.
    assert (await api.get_user_id("u1")).body["user"]["email"] == "shared@example.com"
    assert (await api.get_user_id("u2")).body["user"]["email"] == "shared@example.com"
    snap = api.emu.state.snapshot()
    assert set(snap) == {"u1", "u2"}
    await api.update(userId="u1", dataFields={"email": "moved@example.com"})
    assert (await api.get_user_id("u1")).body["user"]["email"] == "moved@example.com"


async def test_hybrid_project_links_both_ids_changes_email_and_reports_conflicts(
    make_api: MakeApi,
) -> None:
    api = await make_api(project_type="hybrid")
    await api.bulk([
        {"email": "a@example.com", "userId": "ua"},
        {"email": "b@example.com", "userId": "ub"},
        {"userId": "only-id", "dataFields": {"x": 1}},
    ])
    assert (await api.get_user_id("only-id")).body["user"].get("email") is None
    # Email change in bulk through dataFields.email (hybrid only).
    reply = await api.bulk([{"userId": "ua", "dataFields": {"email": "A2@example.com"}}])
    assert reply.body["successCount"] == 1
    assert (await api.get_user_id("ua")).body["user"]["email"] == "a2@example.com"
    assert (await api.get_email("a@example.com")).body == {}
    reply = await api.bulk([
        {"userId": "ua", "dataFields": {"email": "b@example.com"}},
        {"email": "b@example.com", "userId": "ua"},
        {"userId": "ua", "dataFields": {"userId": "ub"}},
    ])
    failed = reply.body["failedUpdates"]
    assert failed["conflictEmails"] == ["b@example.com", "b@example.com"]
    assert failed["conflictUserIds"] == ["ub"]
    assert (reply.body["successCount"], reply.body["failCount"]) == (0, 3)
    # A top-level email with a known userId moves that user to the new email.
    await api.bulk([{"userId": "ub", "email": "b2@example.com"}])
    assert (await api.get_user_id("ub")).body["user"]["email"] == "b2@example.com"


async def test_email_project_ignores_data_fields_email(api: Api) -> None:
    await api.bulk([{"email": "a@example.com", "dataFields": {"email": "other@example.com"}}])
    assert (await api.get_email("other@example.com")).body == {}
    assert (await api.get_email("a@example.com")).body["user"]["email"] == "a@example.com"


async def test_invalid_identifiers_are_per_user_failures(api: Api) -> None:
    reply = await api.bulk([
        {"email": "bad email@example.com"},
        {"email": "fine@example.com", "userId": "x" * 53},
        {"email": "fine@example.com", "dataFields": {"userId": "trailing "}},
        {"email": "ok@example.com"},
    ])
    failed = reply.body["failedUpdates"]
    assert failed["invalidEmails"] == ["bad email@example.com"]
    assert failed["invalidUserIds"] == ["x" * 53, "trailing "]
    assert reply.body["invalidEmails"] == ["bad email@example.com"]
    assert (reply.body["successCount"], reply.body["failCount"]) == (1, 3)
    single = await api.update(email="nope")
    assert (single.status, single.body["code"]) == (400, "InvalidEmailAddressError")


# -- field types -------------------------------------------------------------------------------


async def test_type_is_locked_by_first_value_and_mismatch_fails_the_user(api: Api) -> None:
    await api.bulk([{"email": "a@example.com",
                     "dataFields": {"n": 1, "d": "2024-01-31", "s": "x", "f": 1.5}}])
    reply = await api.bulk([
        {"email": "b@example.com", "dataFields": {"n": "one"}},
        {"email": "c@example.com", "dataFields": {"d": "2020-04-13 14:04:09.000"}},
        {"email": "d@example.com", "dataFields": {"s": "2024-01-31", "f": 2, "n": 5}},
        {"userId": "u-missing", "preferUserId": True, "dataFields": {"n": True}},
    ])
    failed = reply.body["failedUpdates"]
    assert failed["invalidDataEmails"] == ["b@example.com", "c@example.com"]
    assert failed["invalidDataUserIds"] == ["u-missing"]
    assert (reply.body["successCount"], reply.body["failCount"]) == (1, 3)
    assert (await api.get_email("b@example.com")).body == {}
    fields = (await api.call("GET", "/api/users/getFields")).body["fields"]
    types = (fields["n"], fields["d"], fields["s"], fields["f"])
    assert types == ("long", "date", "string", "double")


async def test_new_field_types_are_locked_within_one_batch(api: Api) -> None:
    reply = await api.bulk([
        {"email": "a@example.com", "dataFields": {"fresh": 10}},
        {"email": "b@example.com", "dataFields": {"fresh": "ten"}},
    ])
    assert reply.body["failedUpdates"]["invalidDataEmails"] == ["b@example.com"]
    assert reply.body["createdFields"] == ["fresh"]


async def test_batch_mode_rejects_the_whole_request_in_the_observed_shape(
    make_api: MakeApi,
) -> None:
    api = await make_api(type_mismatch="batch")
    await api.bulk([{"email": "a@example.com", "dataFields": {"soc_signup_at": "2020-04-13"}}])
    reply = await api.bulk([
        {"email": "new@example.com", "dataFields": {"ok": 1}},
        {"email": "a@example.com", "dataFields": {"soc_signup_at": "2020-04-13 14:04:09.000"}},
    ])
    assert reply.status == 400
    assert reply.body["code"] == "RequestFieldsTypesMismatched"
    assert reply.body["msg"].startswith(f"Project {api.emu.project.id}: ")
    errors = reply.body["params"]["validationErrors"]
    assert errors == {
        f"{api.emu.project.name}:::soc_signup_at": {
            "incomingTypes": ["string", "keyword"],
            "expectedType": "date",
            "category": "user",
            "offendingValue": "2020-04-13 14:04:09.000",
            "_type": "UnexpectedType",
        }
    }
    assert (await api.get_email("new@example.com")).body == {}
    fields = (await api.call("GET", "/api/users/getFields")).body["fields"]
    assert "ok" not in fields
    api.emu.config.type_mismatch = "per_user"
    reply = await api.bulk([{"email": "a@example.com", "dataFields": {"soc_signup_at": 5}}])
    assert reply.status == 200 and reply.body["failCount"] == 1


async def test_single_update_type_mismatch_is_a_400(api: Api) -> None:
    await api.update(email="a@example.com", dataFields={"n": 1})
    reply = await api.update(email="a@example.com", dataFields={"n": "x"})
    assert (reply.status, reply.body["code"]) == (400, "RequestFieldsTypesMismatched")


async def test_unique_field_cap_is_1000_including_nested_fields(api: Api) -> None:
    managed = len(api.emu.project.fields)
    first = {f"f{i}": i for i in range(1000 - managed - 2)}
    ok = await api.bulk([{"email": "a@example.com", "dataFields": first}])
    assert ok.status == 200 and len(ok.body["createdFields"]) == len(first)
    over = await api.bulk([{"email": "b@example.com", "dataFields": {"obj": {"x": 1, "y": 2}}}])
    assert (over.status, over.body["code"]) == (400, "UniqueFieldsLimitExceeded")
    assert (await api.get_email("b@example.com")).body == {}
    fits = await api.bulk([{"email": "b@example.com", "dataFields": {"obj": {"x": 1}}}])
    assert fits.body["createdFields"] == ["obj", "obj.x"]
    assert len(api.emu.project.fields) == 1000
    existing = await api.bulk([{"email": "c@example.com", "dataFields": {"f1": 7}}])
    assert existing.body["successCount"] == 1


async def test_create_new_fields_false_and_project_setting_filter_out_new_fields(
    make_api: MakeApi,
) -> None:
    api = await make_api(create_new_fields=False)
    reply = await api.bulk([{"email": "a@example.com", "dataFields": {"brandNew": 1}}])
    assert reply.body["filteredOutFields"] == ["brandNew"] and reply.body["createdFields"] == []
    assert reply.body["successCount"] == 1
    assert "brandNew" not in fields_of(await api.get_email("a@example.com"))
    reply = await api.bulk(
        [{"email": "a@example.com", "dataFields": {"brandNew": 1, "other": "x"}}],
        createNewFields=True,
    )
    assert reply.body["createdFields"] == ["brandNew", "other"]
    reply = await api.bulk(
        [{"email": "a@example.com", "dataFields": {"brandNew": 2, "third": 1}}],
        createNewFields=False,
    )
    assert reply.body["filteredOutFields"] == ["third"]
    assert fields_of(await api.get_email("a@example.com"))["brandNew"] == 2
