"""[lists] entries → (Campaign id, list id) pairs: Campaigns looked up by id or name in
Salesforce, lists by id or name in Iterable (created when missing, if asked)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamsync.adapters.iterable_lists import IterableLists, ListInfo
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.config import CampaignList, Config
from streamsync.core.ids import parse_id
from streamsync.core.soql import quote, select_by_ids, validate_identifier
from streamsync.errors import ConfigError
from streamsync.logs import get_logger
from streamsync.models import SfId

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MappedList:
    """One mapped Campaign and the list its members fill."""

    campaign_id: SfId
    campaign_name: str
    list_id: int
    list_name: str
    statuses: frozenset[str] | None

    def counts(self, status: object) -> bool:
        """Whether a member with this Status counts as a list member."""
        return self.statuses is None or (isinstance(status, str) and status in self.statuses)


@dataclass
class Resolution:
    """What `resolve_lists` found: the mapped lists, lists it created, and every problem."""

    lists: list[MappedList]
    created: list[str]
    problems: list[str]

    def raise_on_problems(self) -> None:
        if self.problems:
            raise ConfigError("[lists] does not match Salesforce and Iterable: "
                              + "; ".join(self.problems))


async def _campaigns(salesforce: SalesforceClient, entries: Sequence[CampaignList]
                     ) -> tuple[dict[str, tuple[SfId, str]], dict[str, list[tuple[SfId, str]]]]:
    """Campaigns by given id (15-character prefix) and by name."""
    by_id: dict[str, tuple[SfId, str]] = {}
    by_name: dict[str, list[tuple[SfId, str]]] = {}
    ids = [e.campaign_id for e in entries if e.campaign_id is not None]
    names = sorted({e.campaign_name for e in entries if e.campaign_name is not None})
    if ids:
        async for row in salesforce.records(select_by_ids("Campaign", ["Id", "Name"], ids)):
            sf_id = parse_id(row.get("Id"))
            by_id[sf_id[:15]] = (sf_id, str(row.get("Name") or ""))
    for start in range(0, len(names), 100):
        chunk = names[start:start + 100]
        soql = (f"SELECT Id, Name FROM {validate_identifier('Campaign', 'object')} WHERE Name "
                f"IN ({', '.join(quote(n) for n in chunk)}) ORDER BY Id")
        async for row in salesforce.records(soql):
            by_name.setdefault(str(row.get("Name")), []).append(
                (parse_id(row.get("Id")), str(row.get("Name"))))
    return by_id, by_name


def _find_campaign(entry: CampaignList, key: str, by_id: dict[str, tuple[SfId, str]],
                   by_name: dict[str, list[tuple[SfId, str]]], problems: list[str]
                   ) -> tuple[SfId, str] | None:
    if entry.campaign_id is not None:
        found = by_id.get(entry.campaign_id[:15])
        if found is None:
            problems.append(f"{key}.campaign_id: no Campaign {entry.campaign_id} in Salesforce")
        return found
    matches = by_name.get(entry.campaign_name or "", [])
    if not matches:
        problems.append(f"{key}.campaign_name: no Campaign named {entry.campaign_name!r} in "
                        "Salesforce")
        return None
    if len(matches) > 1:
        problems.append(f"{key}.campaign_name: {len(matches)} Campaigns are named "
                        f"{entry.campaign_name!r} ({', '.join(m[0] for m in matches)}); "
                        "use campaign_id")
        return None
    return matches[0]


async def _find_list(entry: CampaignList, key: str, campaign_name: str,
                     known: dict[int, ListInfo], client: IterableLists, create: bool,
                     created: list[str], problems: list[str]) -> tuple[int, str] | None:
    if entry.list_id is not None:
        info = known.get(entry.list_id)
        if info is None:
            problems.append(f"{key}.list_id: no list {entry.list_id} in Iterable")
            return None
        return info.id, info.name
    name = entry.list_name or campaign_name
    matches = [info for info in known.values() if info.name == name]
    if len(matches) > 1:
        problems.append(f"{key}: {len(matches)} Iterable lists are named {name!r} "
                        f"({', '.join(str(m.id) for m in matches)}); use list_id")
        return None
    if matches:
        if matches[0].list_type not in ("", "Standard"):
            problems.append(f"{key}: Iterable list {name!r} is a {matches[0].list_type} list, "
                            "not a static (Standard) one")
            return None
        return matches[0].id, name
    if not entry.create_missing:
        problems.append(f"{key}: no Iterable list named {name!r} (set create_missing = true "
                        "to create it)")
        return None
    if not create:
        created.append(name)  # check-config: it would be created at start
        return 0, name
    list_id = await client.create(name, f"Salesforce Campaign {campaign_name}")
    known[list_id] = ListInfo(list_id, name, "Standard")
    created.append(name)
    log.info("lists.created", list_id=list_id, name=name)
    return list_id, name


async def resolve_lists(config: Config, salesforce: SalesforceClient, client: IterableLists,
                        *, create: bool) -> Resolution:
    """Look every [lists.campaigns] entry up; with `create`, create the missing lists that
    may be created (check-config passes False: it only reports what would be created)."""
    entries = config.lists.campaigns
    resolution = Resolution([], [], [])
    if not entries:
        return resolution
    by_id, by_name = await _campaigns(salesforce, entries)
    known = {info.id: info for info in await client.lists()}
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = f"lists.campaigns[{i}]"
        campaign = _find_campaign(entry, key, by_id, by_name, resolution.problems)
        if campaign is None:
            continue
        if campaign[0] in seen:
            resolution.problems.append(f"{key}: Campaign {campaign[0]} is already mapped by "
                                       f"{seen[campaign[0]]}")
            continue
        seen[campaign[0]] = key
        found = await _find_list(entry, key, campaign[1], known, client, create,
                                 resolution.created, resolution.problems)
        if found is None:
            continue
        statuses = frozenset(entry.statuses) if entry.statuses is not None else None
        resolution.lists.append(MappedList(campaign[0], campaign[1], found[0], found[1],
                                           statuses))
    return resolution
