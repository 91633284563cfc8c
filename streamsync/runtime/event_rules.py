"""`[[events]]` rules compiled and checked against Salesforce describe results (docs/events.md
§3): the data mapping with the profile compiler, the profile a rule's events land on, and the
fields each read selects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streamsync.config import PROFILE_PRIMARY_CONTACT, PROFILE_RECORD, Config, EventRule
from streamsync.core.describe_check import DescribeChecker, DescribeProblem
from streamsync.core.event_rules import RuleTrigger, rule_triggers
from streamsync.core.mapping import CompiledMapping, parse_source
from streamsync.errors import ConfigError

Describes = Mapping[str, Mapping[str, Any]]
IdentityKind = Literal["email", "userId"]
EMAIL_TYPES = frozenset({"email", "string"})
ID_TYPES = frozenset({"id", "reference"})
ROLE_OBJECT = "OpportunityContactRole"


@dataclass(frozen=True)
class ProfileSource:
    """Where an event's user comes from: a path on the record (or, with `via_primary_role`, on
    the Opportunity's primary OpportunityContactRole), read as an email or a userId."""

    kind: IdentityKind
    path: str
    via_primary_role: bool = False


@dataclass(frozen=True)
class CompiledRule:
    """One rule, ready to run: its trigger, data mapping, profile and the fields it reads."""

    config: EventRule
    trigger: RuleTrigger
    data: CompiledMapping
    profile: ProfileSource

    @property
    def name(self) -> str:
        return self.config.name

    def read_fields(self) -> list[str]:
        """The SOQL fields of the record read: Id, IsDeleted, data sources, condition fields
        and the profile path (unless it is read through the contact role)."""
        extra = ["IsDeleted", *sorted(self.config.safe_condition.fields
                                      if self.config.safe_condition else ())]
        if not self.profile.via_primary_role:
            extra.append(parse_source(self.profile.path).soql_field)
        return self.data.soql_fields(*extra)


def _record_profile(config: Config, object_name: str) -> ProfileSource:
    obj = config.objects.get(object_name)
    if obj is None or not obj.writes_users:
        return ProfileSource("email", "Email")
    by_target = {t: s for s, t in obj.mapping.items()}
    if obj.identity == "userId":
        return ProfileSource("userId", by_target.get("userId", obj.user_id_field))
    return ProfileSource("email", by_target.get("email", obj.email_field))


def _profile(config: Config, rule: EventRule, checker: DescribeChecker) -> ProfileSource:
    if rule.profile == PROFILE_RECORD:
        return _record_profile(config, rule.object)
    if rule.profile == PROFILE_PRIMARY_CONTACT:
        contact = _record_profile(config, "Contact")
        path = "ContactId" if contact.kind == "userId" and contact.path == "Id" else \
            f"Contact.{contact.path}"
        return ProfileSource(contact.kind, path, via_primary_role=True)
    described, why = checker.resolve(rule.object, rule.profile)
    if described is None or why:
        raise ConfigError(f"events rule {rule.name!r} profile {rule.profile!r}: {why}")
    kind: IdentityKind = "userId" if str(described.get("type")) in ID_TYPES else "email"
    return ProfileSource(kind, rule.profile)


def compile_rules(config: Config, describes: Describes) -> list[CompiledRule]:
    """Every `[[events]]` rule compiled with the describes' field types (ConfigError naming the
    first path that does not resolve)."""
    return [compile_rule(config, i, describes) for i in range(len(config.events))]


def compile_rule(config: Config, index: int, describes: Describes) -> CompiledRule:
    """The rule `events[index]` compiled (see `compile_rules`)."""
    checker = DescribeChecker(describes)
    rule = config.events[index]
    [trigger] = rule_triggers([rule])
    data = CompiledMapping(rule.object, rule.mapping, identity="userId", user_id_field="Id",
                           email_field="Id", null_policy="omit",
                           source_types=checker.source_types(rule.object, rule.mapping))
    return CompiledRule(rule, trigger, data, _profile(config, rule, checker))


def rule_problems(config: Config, checker: DescribeChecker) -> list[DescribeProblem]:
    """Every problem of the event rules against the describes (check-config, start-up)."""
    problems: list[DescribeProblem] = []
    for i, rule in enumerate(config.events):
        key = f"events[{i}]"
        safe = rule.safe_condition
        found = checker.check_object(
            rule.object, key=key, mapping=rule.mapping,
            filter_fields=safe.fields if safe else (),
            extra_fields={f"{key}.changed_fields[{n}]": f
                          for n, f in enumerate(rule.changed_fields)})
        problems.extend(DescribeProblem(p.key.replace(f"{key}.filter", f"{key}.condition"),
                                        p.message) for p in found)
        if found and found[0].key == key:
            continue  # the object itself is unknown
        problems.extend(_profile_problems(config, rule, key, checker))
    return problems


def _profile_problems(config: Config, rule: EventRule, key: str,
                      checker: DescribeChecker) -> list[DescribeProblem]:
    if rule.profile == PROFILE_PRIMARY_CONTACT:
        role = _profile(config, rule, DescribeChecker({}))
        _, why = checker.resolve(ROLE_OBJECT, role.path)
        return [DescribeProblem(f"{key}.profile", why)] if why else []
    source = _record_profile(config, rule.object) if rule.profile == PROFILE_RECORD else None
    path = source.path if source is not None else rule.profile
    described, why = checker.resolve(rule.object, parse_source(path).soql_field)
    if why:
        return [DescribeProblem(f"{key}.profile", f"{path}: {why}")]
    sf_type = str((described or {}).get("type"))
    if sf_type not in EMAIL_TYPES | ID_TYPES:
        return [DescribeProblem(f"{key}.profile", f"{path} is of type {sf_type!r}: a profile "
                                "path leads to an email (or text) field or to an id")]
    return []
