"""Campaign members as list subscribers (`list_member`) and the lists backfill's checkpoints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import StoreBase
from .types import ListBackfillState, ListMember, ListMemberWant

_MEMBER_COLUMNS = "member_id, list_id, email, campaign_id, person_id, state, seen_at"
_HELD = ("adding", "in")
_IN_CHUNK = 400  # ids per `IN (...)`: well under SQLite's bound-parameter limit
_BACKFILL_COLUMNS = ("campaign_id, list_id, started_at, phase, after_id, subscribed, "
                     "unsubscribed")


def _member(row: Sequence[Any]) -> ListMember:
    return ListMember(str(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]),
                      str(row[5]), float(row[6]))


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class ListOps(StoreBase):
    """`list_member`: which CampaignMember may be subscribed to which list under which email;
    `list_backfill`: one checkpoint row per mapped Campaign."""

    async def plan_list_members(self, member_ids: Sequence[str], wanted: Sequence[ListMemberWant],
                                now: float) -> tuple[list[ListMember], list[ListMember]]:
        """In one transaction, for these members: every row that is not wanted any more becomes
        'out'; each wanted (member, list, email) is kept 'in' when it already is, else written
        'adding'. Returns (rows to subscribe: 'adding', rows to unsubscribe: 'out')."""
        want = {(w.member_id, w.list_id, w.email): w for w in wanted}
        ids = list(dict.fromkeys([*member_ids, *(w.member_id for w in wanted)]))
        async with self._tx("plan_list_members") as conn:
            existing = await self._rows_of(conn, ids)
            for row in existing:
                if (row.member_id, row.list_id, row.email) not in want and row.state != "out":
                    await conn.execute(
                        "UPDATE list_member SET state = 'out', seen_at = ? WHERE member_id = ? "
                        "AND list_id = ? AND email = ?",
                        (now, row.member_id, row.list_id, row.email))
            await conn.executemany(
                "INSERT INTO list_member (member_id, list_id, email, campaign_id, person_id, "
                "state, seen_at) VALUES (?, ?, ?, ?, ?, 'adding', ?) "
                "ON CONFLICT (member_id, list_id, email) DO UPDATE SET "
                "campaign_id = excluded.campaign_id, person_id = excluded.person_id, "
                "seen_at = excluded.seen_at, "
                "state = CASE WHEN list_member.state = 'in' THEN 'in' ELSE 'adding' END",
                [(w.member_id, w.list_id, w.email, w.campaign_id, w.person_id, now)
                 for w in want.values()])
            rows = await self._rows_of(conn, ids)
        adding = [r for r in rows if r.state == "adding"]
        leaving = [r for r in rows if r.state == "out"]
        return adding, leaving

    async def _rows_of(self, conn: Any, member_ids: Sequence[str]) -> list[ListMember]:
        rows: list[ListMember] = []
        for chunk in _chunks(member_ids):
            marks = ",".join("?" * len(chunk))
            async with conn.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE member_id IN ({marks}) "
                "ORDER BY member_id, list_id, email", tuple(chunk)) as cursor:
                rows.extend(_member(r) for r in await cursor.fetchall())
        return rows

    async def list_members_of(self, member_ids: Sequence[str]) -> list[ListMember]:
        """Every row of these CampaignMembers."""
        async with self._read("list_members_of") as conn:
            return await self._rows_of(conn, list(member_ids))

    async def held_emails(self, list_id: int, emails: Iterable[str]) -> set[str]:
        """Which of `emails` some member still holds on the list ('adding' or 'in')."""
        wanted = sorted(set(emails))
        held: set[str] = set()
        async with self._read("held_emails") as conn:
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                async with conn.execute(
                    f"SELECT DISTINCT email FROM list_member WHERE list_id = ? AND email IN "
                    f"({marks}) AND state IN ('adding', 'in')", (list_id, *chunk)) as cursor:
                    held.update(str(r[0]) for r in await cursor.fetchall())
        return held

    async def confirm_list_members(self, rows: Sequence[ListMember]) -> None:
        """Iterable confirmed these subscriptions: 'adding' → 'in'."""
        async with self._tx("confirm_list_members") as conn:
            await conn.executemany(
                "UPDATE list_member SET state = 'in' WHERE member_id = ? AND list_id = ? AND "
                "email = ? AND state = 'adding'",
                [(r.member_id, r.list_id, r.email) for r in rows])

    async def drop_list_members(self, rows: Sequence[ListMember], *, state: str = "out") -> None:
        """Forget these rows if still in `state` (an unsubscribe was confirmed or not needed;
        a subscription Iterable refused)."""
        async with self._tx("drop_list_members") as conn:
            await conn.executemany(
                "DELETE FROM list_member WHERE member_id = ? AND list_id = ? AND email = ? AND "
                "state = ?", [(r.member_id, r.list_id, r.email, state) for r in rows])

    async def list_members_of_people(self, person_ids: Sequence[str]) -> list[ListMember]:
        """The rows that subscribe these Leads and Contacts (by 18-character Id)."""
        rows: list[ListMember] = []
        async with self._read("list_members_of_people") as conn:
            for chunk in _chunks(list(person_ids)):
                marks = ",".join("?" * len(chunk))
                async with conn.execute(
                    f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE person_id IN ({marks}) "
                    "ORDER BY member_id, list_id, email", tuple(chunk)) as cursor:
                    rows.extend(_member(r) for r in await cursor.fetchall())
        return rows

    async def list_member_rows(self, list_id: int) -> list[ListMember]:
        """Every row of a list (verification, status)."""
        async with self._read("list_member_rows") as conn:
            async with conn.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE list_id = ? "
                "ORDER BY member_id, email", (list_id,)) as cursor:
                return [_member(r) for r in await cursor.fetchall()]

    async def retire_unseen_list_members(self, list_id: int, campaign_id: str, before: float,
                                         now: float) -> list[ListMember]:
        """Rows of the Campaign's list not seen since `before` (members gone while nobody
        listened) become 'out'; returns every 'out' row of the list."""
        async with self._tx("retire_unseen_list_members") as conn:
            await conn.execute(
                "UPDATE list_member SET state = 'out', seen_at = ? WHERE list_id = ? AND "
                "campaign_id = ? AND seen_at < ? AND state != 'out'",
                (now, list_id, campaign_id, before))
            async with conn.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM list_member WHERE list_id = ? AND state = 'out'"
                " ORDER BY member_id, email", (list_id,)) as cursor:
                return [_member(r) for r in await cursor.fetchall()]

    # -- the lists backfill's checkpoints

    async def list_backfill(self, campaign_id: str) -> ListBackfillState | None:
        """The checkpoint of one Campaign's lists backfill, if any."""
        async with self._read("list_backfill") as conn:
            async with conn.execute(
                f"SELECT {_BACKFILL_COLUMNS} FROM list_backfill WHERE campaign_id = ?",
                (campaign_id,)) as cursor:
                row = await cursor.fetchone()
        if row is None:
            return None
        return ListBackfillState(str(row[0]), int(row[1]), float(row[2]), str(row[3]),
                                 None if row[4] is None else str(row[4]), int(row[5]),
                                 int(row[6]))

    async def save_list_backfill(self, state: ListBackfillState, now: float) -> None:
        """Write one Campaign's checkpoint (replacing the previous one)."""
        async with self._tx("save_list_backfill") as conn:
            await conn.execute(
                f"INSERT OR REPLACE INTO list_backfill ({_BACKFILL_COLUMNS}, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (state.campaign_id, state.list_id, state.started_at, state.phase,
                 state.after_id, state.subscribed, state.unsubscribed, now))
