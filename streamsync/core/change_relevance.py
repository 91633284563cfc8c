"""Which CDC updates can change what an object's profile sync sends (docs/design.md §1.1).

An UPDATE's ChangeEventHeader names the fields the transaction changed (`changedFields`,
compound components as `Name.LastName` or `MailingAddress.Street`). The profile sync reads a
known set of fields of the record: the mapped paths (a relationship path such as
`Owner.Email` through its lookup field, `OwnerId`), the identity fields, the filter's fields
and the extra fields (opt-out fields, the conversion fields). An update that changed none of
them reads back to the profile Iterable already has, so it need not be queued.

Whatever the rule cannot see through keeps every update relevant (`read_fields` returns
None): a field Salesforce computes (`calculated` in describe: formulas and roll-up summaries,
whose changes CDC does not report), a path the describe does not resolve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def read_fields(object_name: str, paths: Iterable[str],
                describes: Mapping[str, Mapping[str, Any]]) -> frozenset[str] | None:
    """The record's own fields (lower case) whose change can alter what reading `paths` gives,
    with the compound field each belongs to; None when any path defeats the rule."""
    describe = {k.lower(): v for k, v in describes.items()}.get(object_name.lower())
    if describe is None:
        return None
    fields, relationships = _index(describe)
    out: set[str] = set()
    for path in paths:
        head, _, rest = path.partition(".")
        entry = relationships.get(head.lower()) if rest else None
        if entry is None:
            entry = fields.get(head.lower())
        if entry is None or entry.get("calculated") is True:
            return None
        out.add(str(entry["name"]).lower())
        compound = entry.get("compoundFieldName")
        if isinstance(compound, str) and compound:
            out.add(compound.lower())
    return frozenset(out)


def touches(changed_fields: Sequence[str], fields: frozenset[str] | None) -> bool:
    """True when an update that changed `changed_fields` can alter what is read: it names a
    field in `fields` (or the compound one a component belongs to), or it names no field at
    all (nothing to go by), or `fields` is None."""
    if fields is None or not changed_fields:
        return True
    for name in changed_fields:
        lowered = name.lower()
        if lowered in fields or lowered.partition(".")[0] in fields:
            return True
    return False


def _index(describe: Mapping[str, Any]
           ) -> tuple[dict[str, Mapping[str, Any]], dict[str, Mapping[str, Any]]]:
    """(fields by lower-case name, lookup fields by lower-case relationship name)."""
    fields: dict[str, Mapping[str, Any]] = {}
    relationships: dict[str, Mapping[str, Any]] = {}
    for entry in describe.get("fields") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            continue
        fields[entry["name"].lower()] = entry
        rel = entry.get("relationshipName")
        if isinstance(rel, str) and rel:
            relationships[rel.lower()] = entry
    return fields, relationships
