"""A Config's mappings compiled, and checked, against Salesforce describe results.

config.py only holds the schema; this is where it meets the org's describes (docs/design.md §5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamsync.config import Config
from streamsync.core.describe_check import DescribeChecker, DescribeProblem
from streamsync.core.mapping import CompiledMapping
from streamsync.runtime.event_rules import rule_problems

Describes = Mapping[str, Mapping[str, Any]]


def compile_mappings(config: Config, describes: Describes) -> dict[str, CompiledMapping]:
    """Each object that writes users, its mapping compiled (call once; keep the result)."""
    checker = DescribeChecker(describes)
    return {name: _compile(config, name, checker)
            for name, obj in config.objects.items() if obj.writes_users}


def compile_object(config: Config, name: str, describes: Describes) -> CompiledMapping:
    """One object's mapping compiled (see `compile_mappings`)."""
    return _compile(config, name, DescribeChecker(describes))


def _compile(config: Config, name: str, checker: DescribeChecker) -> CompiledMapping:
    """The describe results type every mapped field (relationship paths through the parent's
    describe): only date and datetime fields get Iterable's date format. A mapped path that does
    not resolve raises ConfigError."""
    obj = config.objects[name]
    extra: tuple[str, ...] = ()
    if name == "Lead" and config.converted_precedence() == "contact":
        extra = ("IsConverted", "ConvertedContactId")
    if obj.consent is not None:  # the opt-out state is read with the record (docs/design.md §7)
        extra = (*extra, *obj.consent.opt_out_fields)
    return CompiledMapping(
        name, obj.mapping, identity=obj.identity, email_field=obj.email_field,
        user_id_field=obj.user_id_field, null_policy=obj.null_policy,
        convert_dates=obj.convert_dates, extra_fields=extra,
        source_types=checker.source_types(name, obj.mapping))


def check_describe(config: Config, describes: Describes) -> list[DescribeProblem]:
    """Every mapped path, relationship, filter and fan-out field against describe results."""
    return _check(config, DescribeChecker(describes))


def objects_to_describe(config: Config, describes: Describes) -> set[str]:
    """Objects whose describe a check still needs; fetch them until this is empty."""
    checker = DescribeChecker(describes)
    _check(config, checker)
    return checker.absent


def _check(config: Config, checker: DescribeChecker) -> list[DescribeProblem]:
    problems: list[DescribeProblem] = []
    for name, obj in config.objects.items():
        key = f"objects.{name}"
        safe = obj.safe_filter
        problems.extend(checker.check_object(
            name, key=key, mapping=obj.mapping,
            filter_fields=safe.fields if safe else (),
            email_field=obj.email_field if obj.writes_users and obj.identity != "userId"
            else None))
        for i, fan in enumerate(obj.fan_out):
            _, why = checker.resolve(fan.object, fan.via)
            if why:
                problems.append(DescribeProblem(f"{key}.fan_out[{i}].via", why))
        if obj.consent is not None:
            problems.extend(_check_opt_out_fields(name, obj.consent.opt_out_fields, checker))
    problems.extend(rule_problems(config, checker))
    return problems


def _check_opt_out_fields(name: str, fields: list[str], checker: DescribeChecker
                          ) -> list[DescribeProblem]:
    """Each opt-out field exists on the object and is a checkbox (docs/design.md §7)."""
    out: list[DescribeProblem] = []
    for field in fields:
        entry, why = checker.resolve(name, field)
        if entry is None:
            out.append(DescribeProblem(f"objects.{name}.consent.opt_out_fields", why or ""))
        elif entry.get("type") != "boolean":
            out.append(DescribeProblem(
                f"objects.{name}.consent.opt_out_fields",
                f"{name}.{entry.get('name', field)} is of type {entry.get('type')}; an opt-out "
                "field must be a checkbox (boolean)"))
    return out
