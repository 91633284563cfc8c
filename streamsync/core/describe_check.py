"""Check mapped source paths, relationships and filter fields against describe results."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from streamsync.core.mapping import parse_source
from streamsync.errors import ConfigError

# Fields SOQL exposes through a polymorphic relationship (the `Name` pseudo-object), lower case,
# with their describe types.
NAME_OBJECT_FIELDS: Final[Mapping[str, str]] = {
    "id": "id", "name": "string", "email": "email", "firstname": "string",
    "lastname": "string", "alias": "string", "title": "string", "username": "string",
    "type": "picklist", "isactive": "boolean", "phone": "phone", "userroleid": "reference",
    "profileid": "reference", "lastreferenceddate": "datetime", "lastvieweddate": "datetime",
    "recordtypeid": "reference", "communitynickname": "string", "nameormasterlabel": "string",
    "smallphotourl": "url", "usertype": "picklist",
}
# Describe types of compound field components (`MailingAddress.city`, `Location__c.latitude`).
COMPONENT_TYPES: Final[Mapping[str, str]] = {"latitude": "double", "longitude": "double"}
EMAIL_TYPES: Final = frozenset({"email", "string"})
COMPOUND_TYPES: Final = frozenset({"address", "location"})


@dataclass(frozen=True, slots=True)
class DescribeProblem:
    """One finding, keyed by the configuration path it comes from."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class _Index:
    def __init__(self, describe: Mapping[str, Any]) -> None:
        fields = describe.get("fields") or []
        self.fields: dict[str, Mapping[str, Any]] = {}
        self.relationships: dict[str, Mapping[str, Any]] = {}
        for f in fields:
            if not isinstance(f, Mapping) or not isinstance(f.get("name"), str):
                continue
            self.fields[f["name"].lower()] = f
            rel = f.get("relationshipName")
            if isinstance(rel, str) and rel:
                self.relationships[rel.lower()] = f

    def suggest(self, name: str, pool: Iterable[str]) -> str:
        close = difflib.get_close_matches(name.lower(), list(pool), n=1, cutoff=0.75)
        return f" (did you mean {self._display(close[0])}?)" if close else ""

    def _display(self, lowered: str) -> str:
        f = self.fields.get(lowered) or self.relationships.get(lowered)
        if f is None:
            return lowered
        if lowered in self.relationships and f.get("relationshipName"):
            return str(f["relationshipName"])
        return str(f["name"])


class DescribeChecker:
    """Resolves dotted paths through describe results; indexes each object once."""

    def __init__(self, describes: Mapping[str, Mapping[str, Any]]) -> None:
        self._describes = {k.lower(): v for k, v in describes.items()}
        self._index: dict[str, _Index] = {}
        self.absent: set[str] = set()  # objects a check needed but had no describe for

    def _get(self, obj: str) -> _Index | None:
        key = obj.lower()
        if key not in self._index:
            describe = self._describes.get(key)
            if describe is None:
                self.absent.add(obj)
                return None
            self._index[key] = _Index(describe)
        return self._index[key]

    def resolve(self, object_name: str, path: str) -> tuple[Mapping[str, Any] | None, str | None]:
        """(the field's describe entry, None) or (None, why the path does not resolve)."""
        obj = object_name
        parts = path.split(".")
        for pos, seg in enumerate(parts):
            index = self._get(obj)
            if index is None:
                return None, f"no describe result for object {obj!r} (does it exist?)"
            last = pos == len(parts) - 1
            if last:
                field = index.fields.get(seg.lower())
                if field is None:
                    hint = index.suggest(seg, index.fields)
                    return None, f"{obj} has no field {seg!r}{hint}"
                return field, None
            ref = index.relationships.get(seg.lower())
            if ref is None:
                if seg.lower() in index.fields:
                    return None, (f"{obj}.{index.fields[seg.lower()]['name']} is a field, not a "
                                  f"relationship")
                hint = index.suggest(seg, index.relationships)
                return None, f"{obj} has no relationship {seg!r}{hint}"
            targets = [t for t in ref.get("referenceTo") or [] if isinstance(t, str)]
            if not targets:
                return None, f"{obj}.{seg} references no object"
            if len(targets) > 1:
                rest = parts[pos + 1:]
                if len(rest) != 1 or rest[0].lower() not in NAME_OBJECT_FIELDS:
                    return None, (f"{obj}.{seg} is polymorphic ({', '.join(targets)}): only "
                                  "common Name fields (Id, Name, Email, IsActive, ...) can be "
                                  "read through it")
                return {"name": rest[0], "type": NAME_OBJECT_FIELDS[rest[0].lower()],
                        "filterable": True}, None
            obj = targets[0]
        return None, "empty path"

    def source_types(self, object_name: str, paths: Iterable[str]) -> dict[str, str]:
        """Describe type of each source path (a compound component: its component's type).

        Raises ConfigError naming the first path that does not resolve: a mapping is never
        compiled on guessed types.
        """
        out: dict[str, str] = {}
        for path in paths:
            try:
                parsed = parse_source(path)
            except ValueError as exc:
                raise ConfigError(f"{object_name} mapping {path!r}: {exc}") from None
            described, why = self.resolve(object_name, parsed.soql_field)
            if described is None or why:
                raise ConfigError(f"{object_name} mapping {path!r}: {why}")
            if parsed.component is not None:
                out[path] = COMPONENT_TYPES.get(parsed.component.lower(), "string")
            else:
                out[path] = str(described.get("type") or "")
        return out

    def check_object(self, object_name: str, *, key: str, mapping: Mapping[str, str],
                     filter_fields: Iterable[str] = (), email_field: str | None = None,
                     extra_fields: Mapping[str, str] | None = None) -> list[DescribeProblem]:
        """Every problem of one configured object; `key` is its config path (`objects.Lead`)."""
        if self._get(object_name) is None:
            return [DescribeProblem(key, f"no describe result for object {object_name!r}: it "
                                         "does not exist or the user cannot see it")]
        problems: list[DescribeProblem] = []
        labels = {source: _mapping_label(key, source) for source in mapping}
        for source in mapping:
            problems.extend(self._check_source(object_name, source, labels[source]))
        for field in sorted(filter_fields):
            described, why = self.resolve(object_name, field)
            if why:
                problems.append(DescribeProblem(f"{key}.filter", why))
            elif described is not None and described.get("filterable") is False:
                problems.append(DescribeProblem(f"{key}.filter", f"{field} is not filterable"))
        mapped_email = [source for source, target in mapping.items() if target == "email"]
        if mapped_email:
            problems.extend(self._check_email(object_name, mapped_email[0],
                                              labels[mapped_email[0]], resolved=True))
        elif email_field:
            problems.extend(self._check_email(object_name, email_field, f"{key}.email_field",
                                              resolved=False))
        for label, path in (extra_fields or {}).items():
            _, why = self.resolve(object_name, path)
            if why:
                problems.append(DescribeProblem(label, why))
        return problems

    def _check_email(self, object_name: str, path: str, label: str, *, resolved: bool
                     ) -> list[DescribeProblem]:
        """The field Iterable's `email` comes from must hold text (an email or string field).

        `resolved`: the path is a mapping source, whose resolution `_check_source` reports.
        """
        try:
            parsed = parse_source(path)
        except ValueError:
            return []  # reported with the mapping
        described, why = self.resolve(object_name, parsed.soql_field)
        if why or described is None:
            return [] if resolved else [DescribeProblem(label, why or "does not resolve")]
        sf_type = described.get("type")
        if parsed.component is None and sf_type not in EMAIL_TYPES:
            return [DescribeProblem(label, f"{path} is of type {sf_type!r}, not an email or "
                                           "string field: every record would be dead-lettered "
                                           "as invalid_email")]
        return []

    def _check_source(self, object_name: str, source: str, label: str) -> list[DescribeProblem]:
        try:
            parsed = parse_source(source)
        except ValueError as exc:
            return [DescribeProblem(label, str(exc))]
        described, why = self.resolve(object_name, parsed.soql_field)
        if why:
            return [DescribeProblem(label, why)]
        if parsed.component is not None and described is not None \
                and described.get("type") not in COMPOUND_TYPES:
            return [DescribeProblem(label, f"{parsed.soql_field} is not a compound address or "
                                           f"location field, so it has no {parsed.component!r}")]
        return []


def _mapping_label(key: str, source: str) -> str:
    return f'{key}.mapping."{source}"' if "." in source else f"{key}.mapping.{source}"


def check_objects(describes: Mapping[str, Mapping[str, Any]],
                  objects: Iterable[tuple[str, str, Mapping[str, str], Iterable[str], str | None]],
                  ) -> list[DescribeProblem]:
    """All problems of many objects at once: (name, key, mapping, filter fields, email field)."""
    checker = DescribeChecker(describes)
    problems: list[DescribeProblem] = []
    for name, key, mapping, filter_fields, email_field in objects:
        problems.extend(checker.check_object(name, key=key, mapping=mapping,
                                             filter_fields=filter_fields,
                                             email_field=email_field))
    return problems
