"""Maintenance of cartd's own schema: migrations and retention."""

from __future__ import annotations

from datetime import datetime
from importlib import resources

from cartd.db.pool import Database
from cartd.db.queries import Query, load

SQL = load("cartd.db", "sql/maintenance.sql")
MIGRATION_LOCK = 0x63617274  # "cart": serialises concurrent `cartd migrate` runs
PURGE_BATCH = 500  # rows per retention DELETE


class Maintenance:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self, *, app_tables: bool = False) -> list[str]:
        """Apply pending migrations under an advisory lock; returns what was applied.
        `app_tables`: create the application tables too (new installs, demos)."""
        folder = resources.files("cartd") / "migrations"
        names = sorted(p.name for p in folder.iterdir() if p.name[:3].isdigit())
        applied_now = []
        async with self.db.pool.acquire() as conn, conn.transaction():
            await SQL["migration_lock"].execute(conn, key=MIGRATION_LOCK)
            if app_tables:
                await conn.execute((folder / "app_tables.sql").read_text())
            await SQL["migrations_table"].execute(conn)
            done = {r["name"] for r in await SQL["applied"].fetch(conn)}
            for name in names:
                if name not in done:
                    await conn.execute((folder / name).read_text())
                    await SQL["mark_applied"].execute(conn, name=name)
                    applied_now.append(name)
        return applied_now

    async def purge(self, *, payloads_before: datetime, carts_before: datetime,
                    batch: int = PURGE_BATCH) -> tuple[int, int]:
        """Delete finished (delivered, dead or withdrawn) deliveries that finished before
        `payloads_before`, and the dedupe memory of carts detected before `carts_before`
        that no delivery holds any more, `batch` rows per statement so no statement holds
        many locks. Returns both counts."""
        deliveries = await self._purge(SQL["purge_dead_detected"], payloads_before, batch)
        deliveries += await self._purge(SQL["purge_finished"], payloads_before, batch)
        carts = await self._purge(SQL["purge_carts"], carts_before, batch)
        return deliveries, carts

    async def _purge(self, query: Query, before: datetime, batch: int) -> int:
        total = 0
        while True:
            deleted = await query.fetchval(self.db.pool, before=before, batch=batch)
            total += deleted
            if deleted < batch:
                return total
