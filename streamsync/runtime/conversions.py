"""A Contact born of a Lead conversion takes the Lead's Iterable identity before its first sync.

Salesforce converts a Lead in one transaction: the Contact is created and the Lead gets
`IsConverted` and `ConvertedContactId`. The sync sees the two as separate queue rows (the
Contact's CREATE arrives first on CDC; a reconcile after downtime queues both at once), and
whichever is flushed first wins. If the Contact came first it was written as a new profile
(under its own, possibly already changed, email) and the Lead's profile stayed behind in
Iterable. So the flusher asks Salesforce, for each Contact it is about to sync that holds no
identity, which Lead was converted into it, and hands that Lead's identity over first: the
Contact's sync then moves the Lead's profile (updateEmail) or flags or deletes it, whatever the
order in which the two changes reach the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.store import IdentityHandover, StoreAPI
from streamsync.config import Config
from streamsync.core.ids import id_or_none, parse_id, row_id
from streamsync.core.soql import select_children
from streamsync.logs import get_logger

log = get_logger(__name__)

CONTACT_IDS_PER_QUERY = 300
"""Contact ids per Lead lookup (300 quoted 18-char ids stay far below the URI cap)."""
LOOKUP_PAGE = 2000
"""Leads per keyset page of one lookup (more than one Lead may convert into one Contact)."""


def adopts_converted_leads(config: Config) -> bool:
    """True when converted Leads hand their identity to Contacts: both objects write users and
    the Contact takes precedence."""
    lead, contact = config.objects.get("Lead"), config.objects.get("Contact")
    return (lead is not None and lead.writes_users and contact is not None
            and contact.writes_users and config.converted_precedence() == "contact")


class ConvertedLeads:
    """Before Contacts are synced: the identity of the Lead each one was converted from."""

    def __init__(self, *, config: Config, store: StoreAPI, salesforce: SalesforceClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.enabled = adopts_converted_leads(config)
        self.store = store
        self.salesforce = salesforce
        self.clock = clock

    async def adopt(self, object_name: str, contact_ids: Sequence[str]
                    ) -> list[IdentityHandover]:
        """For Contacts holding no identity: hand them the identity of the Lead converted into
        them, if that Lead has one (the Lead's identity is dropped). Not enqueued: the caller
        syncs these Contacts now. Returns the handovers that took place."""
        if not self.enabled or object_name != "Contact":
            return []
        ids = list(dict.fromkeys(i for i in map(id_or_none, contact_ids) if i is not None))
        held = await self.store.identities("Contact", ids)
        fresh = [i for i in ids if i not in held]
        if not fresh:
            return []
        chunks = [fresh[at:at + CONTACT_IDS_PER_QUERY]
                  for at in range(0, len(fresh), CONTACT_IDS_PER_QUERY)]
        found = await asyncio.gather(*(self._converted_into(chunk) for chunk in chunks))
        pairs = [pair for chunk in found for pair in chunk]
        if not pairs:
            return []
        leads = await self.store.identities("Lead", [lead for lead, _ in pairs])
        moves = [IdentityHandover("Lead", lead, "Contact", contact)
                 for lead, contact in pairs if lead in leads]
        if not moves:
            return []
        taken = await self.store.hand_over_identities(moves, self.clock(), enqueue=False)
        for move in taken:
            log.info("conversions.identity_adopted", lead_id=move.source_id,
                     contact_id=move.target_id)
        return taken

    async def _converted_into(self, contact_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(Lead id, Contact id) of every Lead converted into one of these Contacts."""
        out: list[tuple[str, str]] = []
        after: str | None = None
        while True:
            soql = select_children("Lead", "ConvertedContactId", contact_ids,
                                   fields=("Id", "ConvertedContactId"), after_id=after,
                                   limit=LOOKUP_PAGE)
            rows = [r async for r in self.salesforce.records(soql, include_deleted=True)]
            pairs = ((row_id(r), row_id(r, "ConvertedContactId")) for r in rows)
            out.extend((lead, contact) for lead, contact in pairs if lead and contact)
            if len(rows) < LOOKUP_PAGE:
                return out
            after = parse_id(rows[-1]["Id"])
