"""What one object's sync sends, as a canonical description, its fingerprint and the diff of two.

The description holds everything that decides an object's Iterable payloads and which records
get one: the compiled mapping (each target, its source and how its values are converted), the
identity, the null policy, the filter and the policies that add fields or act on records
(delete flag, out-of-scope). Its fingerprint is the sha256 of its canonical JSON: equal
fingerprints send equal payloads for equal records (docs/design.md §9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from streamsync.core.mapping import CompiledMapping

DESCRIPTION_VERSION: Final = 1
"""Bumped when the description's layout changes (every object then counts as changed)."""


def describe_mapping(mapping: CompiledMapping, *, filter_text: str | None,
                     policies: Mapping[str, str | None]) -> dict[str, Any]:
    """The canonical description of one object's sync (JSON-able, key order irrelevant).

    `policies`: further settings that change what is sent or to whom (delete policy and flag,
    out-of-scope policy and flag), each by name.
    """
    return {
        "version": DESCRIPTION_VERSION,
        "object": mapping.object_name,
        "identity": mapping.identity,
        "email_source": mapping.email_source.path if mapping.send_email else None,
        "user_id_source": mapping.user_id_source.path if mapping.send_user_id else None,
        "null_policy": mapping.null_policy,
        "filter": None if filter_text is None else " ".join(filter_text.split()),
        "fields": mapping.field_descriptions(),
        "policies": dict(sorted(policies.items())),
    }


def canonical(description: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no whitespace."""
    return orjson.dumps(description, option=orjson.OPT_SORT_KEYS)


def fingerprint(description: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a description (hex)."""
    return hashlib.sha256(canonical(description)).hexdigest()


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One mapped target that changed: `kind` is added, removed, renamed or changed."""

    kind: str
    target: str
    source: str
    old_target: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "source": self.source,
                "old_target": self.old_target, "detail": self.detail}


@dataclass(frozen=True)
class MappingDiff:
    """What differs between the applied description (None: nothing applied) and the new one."""

    fields: tuple[FieldChange, ...] = ()
    settings: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    first: bool = False

    @property
    def changed(self) -> bool:
        return self.first or bool(self.fields) or bool(self.settings)

    @property
    def filter_changed(self) -> bool:
        return "filter" in self.settings

    def dropped_targets(self) -> list[str]:
        """Targets Iterable holds that the new mapping no longer sends: removed, and the old
        name of renamed ones."""
        out = [c.target for c in self.fields if c.kind == "removed"]
        out += [c.old_target for c in self.fields if c.kind == "renamed" and c.old_target]
        return sorted(out)

    def as_dict(self) -> dict[str, Any]:
        return {"first": self.first, "fields": [c.as_dict() for c in self.fields],
                "settings": {k: {"old": old, "new": new}
                             for k, (old, new) in sorted(self.settings.items())}}


def _by_source(fields: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    return {str(spec["source"]).lower(): target for target, spec in fields.items()}


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> MappingDiff:
    """Field by field: added, removed, renamed (same source, new target), changed (how its
    values are converted); and every other setting that differs (filter, null policy, ...)."""
    if old is None:
        return MappingDiff(tuple(FieldChange("added", t, str(s["source"]), detail=str(s["convert"]))
                                 for t, s in sorted(new["fields"].items())), {}, first=True)
    old_fields: Mapping[str, Mapping[str, Any]] = old.get("fields") or {}
    new_fields: Mapping[str, Mapping[str, Any]] = new["fields"]
    changes: list[FieldChange] = []
    gone = {t: s for t, s in old_fields.items() if t not in new_fields}
    came = {t: s for t, s in new_fields.items() if t not in old_fields}
    gone_by_source = _by_source(gone)
    for target, spec in sorted(came.items()):
        source = str(spec["source"])
        old_target = gone_by_source.pop(source.lower(), None)
        if old_target is not None:
            gone.pop(old_target)
            changes.append(FieldChange("renamed", target, source, old_target))
        else:
            changes.append(FieldChange("added", target, source, detail=str(spec["convert"])))
    changes.extend(FieldChange("removed", t, str(s["source"])) for t, s in sorted(gone.items()))
    for target in sorted(set(old_fields) & set(new_fields)):
        was, now = old_fields[target], new_fields[target]
        if str(was["source"]).lower() != str(now["source"]).lower():
            changes.append(FieldChange("changed", target, str(now["source"]),
                                       detail=f"source {was['source']} → {now['source']}"))
        elif was["convert"] != now["convert"]:
            changes.append(FieldChange("changed", target, str(now["source"]),
                                       detail=f"conversion {was['convert']} → {now['convert']}"))
    settings = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
                if key not in ("fields", "cleared") and old.get(key) != new.get(key)}
    return MappingDiff(tuple(changes), settings)
