"""Subjects: the key that finds a person's carts again, and erasing one person (README
"Personal data")."""

from __future__ import annotations

from uuid import UUID

from cartd.db.pool import Database
from cartd.db.queries import load
from cartd.subjects import SubjectKeys

SQL = load("cartd.db", "sql/subjects.sql")


class Subjects:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys: SubjectKeys | None = None

    async def keys(self) -> SubjectKeys:
        """The hashes that find a person's carts, under the key migration 007 made."""
        if self._keys is None:
            self._keys = SubjectKeys(await SQL["key"].fetchval(self.db.pool))
        return self._keys

    async def forget(self, *, key: bytes, integration_id: UUID | None) -> tuple[int, list[str]]:
        """Erase a person from the dedupe memory: their carts (by email key, or by customer
        key within `integration_id`) lose their keys and get no event again, and every
        delivery that may hold them is marked stale (rebuilt or redacted next). Returns the
        number of carts and the ids of those deliveries."""
        row = await SQL["forget"].fetchrow(self.db.pool, key=key, integration_id=integration_id)
        return row["carts"], row["deliveries"]
