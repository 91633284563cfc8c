"""Campaign members as list subscribers and the lists backfill's checkpoints on PostgreSQL (see
streamsync/adapters/store/lists.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..types import ListBackfillState, ListMember, ListMemberWant
from .base import Connection, PgBase

_MEMBER_COLUMNS = "member_id, list_id, email, campaign_id, person_id, state, seen_at"
_BACKFILL_COLUMNS = ("campaign_id, list_id, started_at, phase, after_id, subscribed, "
                     "unsubscribed")
C = 'COLLATE "C"'
_ORDER = f"ORDER BY member_id {C}, list_id, email {C}"


def _member(row: Sequence[Any]) -> ListMember:
    return ListMember(str(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]),
                      str(row[5]), float(row[6]))


async def _rows_of(conn: Connection, member_ids: Sequence[str]) -> list[ListMember]:
    rows = await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE member_id = ANY($1::text[]) {_ORDER}",
        list(member_ids))
    return [_member(tuple(r)) for r in rows]


class ListOps(PgBase):
    """`list_member` and `list_backfill`."""

    async def plan_list_members(self, member_ids: Sequence[str], wanted: Sequence[ListMemberWant],
                                now: float) -> tuple[list[ListMember], list[ListMember]]:
        """In one transaction, for these members: rows not wanted any more become 'out'; each
        wanted (member, list, email) stays 'in' when it is, else becomes 'adding'. Returns
        (rows to subscribe, rows to unsubscribe)."""
        want = {(w.member_id, w.list_id, w.email): w for w in wanted}
        ids = list(dict.fromkeys([*member_ids, *(w.member_id for w in wanted)]))
        keys = sorted(want)

        async def body(conn: Connection) -> list[ListMember]:
            for row in await _rows_of(conn, ids):
                if (row.member_id, row.list_id, row.email) not in want and row.state != "out":
                    await conn.execute(
                        "UPDATE list_member SET state = 'out', seen_at = $1 WHERE member_id = $2 "
                        "AND list_id = $3 AND email = $4",
                        now, row.member_id, row.list_id, row.email)
            if keys:
                await conn.execute(
                    "INSERT INTO list_member AS m (member_id, list_id, email, campaign_id, "
                    "person_id, state, seen_at) SELECT u.m, u.l, u.e, u.c, u.p, 'adding', $6 "
                    "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) "
                    "AS u(m, l, e, c, p) ON CONFLICT (member_id, list_id, email) DO UPDATE SET "
                    "campaign_id = excluded.campaign_id, person_id = excluded.person_id, "
                    "seen_at = excluded.seen_at, "
                    "state = CASE WHEN m.state = 'in' THEN 'in' ELSE 'adding' END",
                    [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                    [want[k].campaign_id for k in keys], [want[k].person_id for k in keys], now)
            return await _rows_of(conn, ids)

        rows = await self._write("plan_list_members", body)
        return [r for r in rows if r.state == "adding"], [r for r in rows if r.state == "out"]

    async def list_members_of(self, member_ids: Sequence[str]) -> list[ListMember]:
        """Every row of these CampaignMembers."""
        async with self._read("list_members_of") as conn:
            return await _rows_of(conn, list(member_ids))

    async def list_members_of_people(self, person_ids: Sequence[str]) -> list[ListMember]:
        """The rows that subscribe these Leads and Contacts (by 18-character Id)."""
        async with self._read("list_members_of_people") as conn:
            rows = await conn.fetch(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE person_id = ANY($1::text[]) "
                f"{_ORDER}", list(person_ids))
        return [_member(tuple(r)) for r in rows]

    async def held_emails(self, list_id: int, emails: Iterable[str]) -> set[str]:
        """Which of `emails` some member still holds on the list ('adding' or 'in')."""
        async with self._read("held_emails") as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT email FROM list_member WHERE list_id = $1 AND "
                "email = ANY($2::text[]) AND state IN ('adding', 'in')",
                list_id, sorted(set(emails)))
        return {str(r[0]) for r in rows}

    async def confirm_list_members(self, rows: Sequence[ListMember]) -> None:
        """Iterable confirmed these subscriptions: 'adding' → 'in'."""

        async def body(conn: Connection) -> None:
            for r in sorted(rows, key=lambda r: (r.member_id, r.list_id, r.email)):
                await conn.execute(
                    "UPDATE list_member SET state = 'in' WHERE member_id = $1 AND list_id = $2 "
                    "AND email = $3 AND state = 'adding'", r.member_id, r.list_id, r.email)

        await self._write("confirm_list_members", body)

    async def drop_list_members(self, rows: Sequence[ListMember], *, state: str = "out") -> None:
        """Forget these rows if still in `state`."""

        async def body(conn: Connection) -> None:
            for r in sorted(rows, key=lambda r: (r.member_id, r.list_id, r.email)):
                await conn.execute(
                    "DELETE FROM list_member WHERE member_id = $1 AND list_id = $2 AND "
                    "email = $3 AND state = $4", r.member_id, r.list_id, r.email, state)

        await self._write("drop_list_members", body)

    async def list_member_rows(self, list_id: int) -> list[ListMember]:
        """Every row of a list (verification, status)."""
        async with self._read("list_member_rows") as conn:
            rows = await conn.fetch(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE list_id = $1 "
                f"ORDER BY member_id {C}, email {C}", list_id)
        return [_member(tuple(r)) for r in rows]

    async def retire_unseen_list_members(self, list_id: int, campaign_id: str, before: float,
                                         now: float) -> list[ListMember]:
        """Rows of the Campaign's list not seen since `before` become 'out'; returns every
        'out' row of the list."""

        async def body(conn: Connection) -> list[ListMember]:
            await conn.execute(
                "UPDATE list_member SET state = 'out', seen_at = $1 WHERE list_id = $2 AND "
                "campaign_id = $3 AND seen_at < $4 AND state != 'out'",
                now, list_id, campaign_id, before)
            rows = await conn.fetch(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE list_id = $1 AND "
                f"state = 'out' ORDER BY member_id {C}, email {C}", list_id)
            return [_member(tuple(r)) for r in rows]

        return await self._write("retire_unseen_list_members", body)

    async def list_backfill(self, campaign_id: str) -> ListBackfillState | None:
        """The checkpoint of one Campaign's lists backfill, if any."""
        async with self._read("list_backfill") as conn:
            row = await conn.fetchrow(
                f"SELECT {_BACKFILL_COLUMNS} FROM list_backfill WHERE campaign_id = $1",
                campaign_id)
        if row is None:
            return None
        return ListBackfillState(str(row[0]), int(row[1]), float(row[2]), str(row[3]),
                                 None if row[4] is None else str(row[4]), int(row[5]),
                                 int(row[6]))

    async def save_list_backfill(self, state: ListBackfillState, now: float) -> None:
        """Write one Campaign's checkpoint (replacing the previous one)."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                f"INSERT INTO list_backfill ({_BACKFILL_COLUMNS}, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (campaign_id) DO UPDATE SET "
                "list_id = excluded.list_id, started_at = excluded.started_at, "
                "phase = excluded.phase, after_id = excluded.after_id, "
                "subscribed = excluded.subscribed, unsubscribed = excluded.unsubscribed, "
                "updated_at = excluded.updated_at",
                state.campaign_id, state.list_id, state.started_at, state.phase,
                state.after_id, state.subscribed, state.unsubscribed, now)

        await self._write("save_list_backfill", body)
