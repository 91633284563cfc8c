"""Read what the final-state check needs: Salesforce's records, the verify policies, dead letters.

Shared by `make demo`, `scripts/chaos.py` and the end-to-end tests, so each compares Iterable with
Salesforce the same way (`core/verify.compare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from streamsync.config import Config
from streamsync.core import soql
from streamsync.core.mapping import CompiledMapping
from streamsync.core.verify import ObjectPolicy
from streamsync.runtime.app import Components

USER_OBJECTS = ("Lead", "Contact")


def verify_policies(config: Config, mappings: Mapping[str, CompiledMapping],
                    objects: Iterable[str] = USER_OBJECTS) -> dict[str, ObjectPolicy]:
    """The verify rules of each object, from its configuration."""
    contact_first = config.converted_precedence() == "contact"
    out: dict[str, ObjectPolicy] = {}
    for name in objects:
        obj = config.objects[name]
        out[name] = ObjectPolicy(mappings[name], obj.delete_policy, obj.delete_flag_field,
                                 defers_when_converted=name == "Lead" and contact_first)
    return out


async def read_salesforce(parts: Components, objects: Iterable[str] = USER_OBJECTS
                          ) -> dict[str, list[dict[str, Any]]]:
    """Every record of each object, deleted ones included (queryAll), with the mapped fields."""
    records: dict[str, list[dict[str, Any]]] = {}
    for name in objects:
        extra = ["IsDeleted", *(["IsConverted"] if name == "Lead" else [])]
        fields = parts.mappings[name].soql_fields(*extra)
        query = soql.select_all(name, fields)
        records[name] = [r async for r in parts.salesforce.records(query, include_deleted=True)]
    return records
