"""Compare Iterable's profiles with the state Salesforce implies, record by record.

Used by `make demo`, the chaos run and the end-to-end tests. The expectation is built from the
current Salesforce records (read with queryAll, so deleted rows are seen) through the configured
mappings and policies:

- a live record that maps cleanly implies a profile whose mapped data fields equal its values
  (a null mapped value implies the field is absent);
- a record that cannot be mapped (missing or invalid email, ...) implies a dead letter, not a
  profile;
- a deleted record implies, by its object's delete policy, a flagged profile (`flag`), no
  profile (`delete`), or nothing checked (`ignore`);
- a converted Lead defers to the Contact it became when Contacts take precedence;
- two live records that claim the same Iterable key are reported as ambiguous, not guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streamsync.core.mapping import CompiledMapping
from streamsync.errors import RecordError

_ABSENT = object()
_NOT_TRUE = object()  # a delete flag on a live record: absent, null or false


@dataclass(frozen=True)
class ObjectPolicy:
    """What the verifier needs to know of one object's configuration."""

    mapping: CompiledMapping
    delete_policy: str = "flag"
    delete_flag_field: str = "dataFields.salesforceDeleted"
    defers_when_converted: bool = False
    cleared: tuple[str, ...] = ()
    """Targets dropped from the mapping that a re-sync cleared: absent or null in Iterable."""


@dataclass
class Mismatch:
    """One profile that differs from what Salesforce implies."""

    key: str
    object_name: str
    record_id: str
    problem: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # path: (expected, actual)


@dataclass
class VerifyReport:
    """The outcome of one comparison; `ok` when nothing is missing or different."""

    compared: int = 0
    matched: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    expected_dead_letters: set[str] = field(default_factory=set)
    missing_dead_letters: set[str] = field(default_factory=set)
    ambiguous_keys: set[str] = field(default_factory=set)
    unexpected_profiles: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.missing_dead_letters

    def summary(self) -> dict[str, Any]:
        return {
            "records_compared": self.compared,
            "matched": self.matched,
            "mismatches": len(self.mismatches),
            "expected_dead_letters": len(self.expected_dead_letters),
            "missing_dead_letters": len(self.missing_dead_letters),
            "ambiguous_keys": len(self.ambiguous_keys),
            "unexpected_profiles": len(self.unexpected_profiles),
        }


@dataclass
class _Expectation:
    object_name: str
    record_id: str
    fields: dict[str, Any]  # dotted data-field path -> value (None: must be absent)
    present: bool = True


def _leaves(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(item, Mapping) and item:
            out.update(_leaves(item, path))
        else:
            out[path] = item
    return out


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _flag_path(target: str) -> str:
    return target.removeprefix("dataFields.")


def _expect_live(policy: ObjectPolicy, record: Mapping[str, Any]) -> tuple[str, _Expectation]:
    user = policy.mapping.map(record)
    data = user.payload.get("dataFields") or {}
    expected = _leaves(data)
    for target in policy.cleared:
        expected.setdefault(target.removeprefix("dataFields."), None)
    if policy.delete_policy == "flag":
        expected[_flag_path(policy.delete_flag_field)] = _NOT_TRUE
    return user.key, _Expectation(policy.mapping.object_name, user.sf_id, expected)


def expected_profiles(
    policies: Mapping[str, ObjectPolicy],
    records: Mapping[str, Iterable[Mapping[str, Any]]],
    report: VerifyReport,
) -> dict[str, _Expectation]:
    """Key → expectation for every record of every object, per the rules in the docstring."""
    live: dict[str, list[_Expectation]] = {}
    deleted: dict[str, _Expectation] = {}
    for object_name, rows in records.items():
        policy = policies[object_name]
        for record in rows:
            record_id = str(record.get("Id"))
            if record.get("IsDeleted"):
                if policy.delete_policy == "ignore":
                    continue
                try:
                    key, exp = _expect_live(policy, record)
                except RecordError:
                    continue
                flag = {_flag_path(policy.delete_flag_field): True}
                present = policy.delete_policy == "flag"
                deleted[key] = _Expectation(object_name, record_id, flag, present)
                continue
            if policy.defers_when_converted and record.get("IsConverted"):
                continue
            try:
                key, exp = _expect_live(policy, record)
            except RecordError:
                report.expected_dead_letters.add(record_id)
                continue
            live.setdefault(key, []).append(exp)
    out: dict[str, _Expectation] = {}
    for key, claims in live.items():
        if len(claims) > 1:
            report.ambiguous_keys.add(key)
            continue
        out[key] = claims[0]
    for key, exp in deleted.items():
        if key not in live:
            out[key] = exp
    return out


def compare(
    policies: Mapping[str, ObjectPolicy],
    records: Mapping[str, Iterable[Mapping[str, Any]]],
    profiles: Mapping[str, Mapping[str, Any]],
    dead_letter_ids: Iterable[str] = (),
) -> VerifyReport:
    """Compare Iterable `profiles` (key → {"dataFields": ...}) with Salesforce `records`."""
    report = VerifyReport()
    expected = expected_profiles(policies, records, report)
    for key, exp in expected.items():
        report.compared += 1
        profile = profiles.get(key)
        if not exp.present:
            if profile is None:
                report.matched += 1
            else:
                problem = "deleted record still in Iterable"
                report.mismatches.append(Mismatch(key, exp.object_name, exp.record_id, problem))
            continue
        if profile is None:
            report.mismatches.append(
                Mismatch(key, exp.object_name, exp.record_id, "missing in Iterable")
            )
            continue
        data = profile.get("dataFields") or {}
        diffs: dict[str, tuple[Any, Any]] = {}
        for path, want in exp.fields.items():
            got = _lookup(data, path)
            if want is _NOT_TRUE:
                if got is True:
                    diffs[path] = (False, got)
            elif want is None or want is _ABSENT:
                if got is not _ABSENT and got is not None:
                    diffs[path] = (None, got)
            elif got is _ABSENT or got != want:
                diffs[path] = (want, None if got is _ABSENT else got)
        if diffs:
            report.mismatches.append(
                Mismatch(key, exp.object_name, exp.record_id, "fields differ", diffs)
            )
        else:
            report.matched += 1
    known = set(expected) | report.ambiguous_keys
    report.unexpected_profiles = {key for key in profiles if key not in known}
    report.missing_dead_letters = report.expected_dead_letters - set(dead_letter_ids)
    return report
