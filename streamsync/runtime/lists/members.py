"""Which CampaignMembers count as list members, and reading them from Salesforce: by Id
(queryAll, the real-time step) or a Campaign's members by keyset (the backfill)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import ListMemberWant
from streamsync.config import CAMPAIGN_MEMBER, Config
from streamsync.core.ids import PREFIX_OF, id_or_none, parse_id
from streamsync.core.soql import keyset_page, quote_id, select_by_ids_chunked
from streamsync.models import SfId
from streamsync.runtime.lists.resolve import MappedList

Row = dict[str, Any]


class MemberReader:
    """Reads CampaignMembers with what decides their list membership: the Campaign, the
    Status, and the email of the Contact (once a Lead is converted) or else the Lead, read
    from the same email field the Lead and Contact profiles use (docs/design.md §8)."""

    def __init__(self, config: Config, salesforce: SalesforceClient,
                 lists: Sequence[MappedList]) -> None:
        self.salesforce = salesforce
        self.by_campaign = {m.campaign_id: m for m in lists}

        def email_path(name: str) -> str:
            obj = config.objects.get(name)
            return f"{name}.{obj.email_field if obj is not None else 'Email'}"

        self.lead_email = email_path("Lead")
        self.contact_email = email_path("Contact")
        self.fields = ["Id", "IsDeleted", "CampaignId", "LeadId", "ContactId", "Status",
                       self.lead_email, self.contact_email]

    async def by_ids(self, ids: Sequence[SfId]) -> list[Row]:
        """The live members among `ids` (deleted and vanished ones are left out)."""
        rows: list[Row] = []
        if not ids:
            return rows

        async def read(soql: str) -> None:
            async for page in self.salesforce.query_all(soql):
                rows.extend(page.records)

        prefix = f"{self.salesforce.data_path}/queryAll?q="
        await asyncio.gather(*(read(soql) for soql in select_by_ids_chunked(
            CAMPAIGN_MEMBER, self.fields, ids, prefix)))
        for row in rows:
            row["Id"] = parse_id(row.get("Id"))
        return [r for r in rows if not r.get("IsDeleted")]

    async def person_emails(self, person_ids: Iterable[str]) -> dict[str, str]:
        """The current email (lower-case) of these Leads and Contacts, deleted ones included,
        by Id as stored."""
        out: dict[str, str] = {}
        prefix = f"{self.salesforce.data_path}/queryAll?q="
        for name, path in (("Lead", self.lead_email), ("Contact", self.contact_email)):
            ids = sorted(i for i in person_ids if i.startswith(PREFIX_OF[name]))
            field = path.split(".", 1)[1]
            for soql in select_by_ids_chunked(name, ["Id", field], ids, prefix) if ids else ():
                async for page in self.salesforce.query_all(soql):
                    for row in page.records:
                        email = _path(row, field)
                        if isinstance(email, str) and email.strip():
                            out[parse_id(row.get("Id"))] = email.strip().lower()
        return out

    async def page_of(self, campaign_id: SfId, after_id: str | None, limit: int) -> list[Row]:
        """One keyset page of a Campaign's live members, by Id."""
        soql = keyset_page(CAMPAIGN_MEMBER, self.fields, after_id, limit=limit,
                           where=f"CampaignId = {quote_id(campaign_id)}")
        rows = [row async for row in self.salesforce.records(soql)]
        for row in rows:
            row["Id"] = parse_id(row.get("Id"))
        return rows

    def want(self, row: Mapping[str, Any]) -> ListMemberWant | None:
        """The subscription this member should have, or None (Campaign not mapped, Status
        that does not count, no email)."""
        campaign = id_or_none(row.get("CampaignId"))
        mapped = self.by_campaign.get(campaign) if campaign is not None else None
        if mapped is None or not mapped.counts(row.get("Status")):
            return None
        contact = id_or_none(row.get("ContactId"))
        person = contact or id_or_none(row.get("LeadId"))
        email = _path(row, self.contact_email if contact is not None else self.lead_email)
        if person is None or not isinstance(email, str) or not email.strip():
            return None
        return ListMemberWant(str(row["Id"]), mapped.list_id, email.strip().lower(),
                              mapped.campaign_id, person)


def _path(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
