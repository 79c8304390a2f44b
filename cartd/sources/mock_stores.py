"""When each mock store opened, so that it keeps its promises (README "The database"): a
store polled for the first time already holds the carts of its past 24 hours, and polling
again returns the same carts. Mock state lives in the mock room's own table,
`cartd_mock.stores`, created at the first mock poll."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from cartd.db.pool import Database
from cartd.db.queries import load

SQL = load("cartd.sources", "mock_stores.sql")
FIRST_POLL_HISTORY = timedelta(hours=24)
_MISSING = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)


async def known(db: Database, integration_ids: list[UUID]) -> dict[UUID, datetime]:
    """When those of these mock stores that were polled before opened (read only)."""
    if not integration_ids:
        return {}
    try:
        rows = await SQL["opened"].fetch(db.pool, integration_ids=integration_ids)
    except _MISSING:  # no mock store was ever polled here
        return {}
    return {r["integration_id"]: r["opened_at"] for r in rows}


async def opened(db: Database, integration_ids: list[UUID], now: datetime) -> dict[UUID, datetime]:
    """When each of these mock stores opened; one polled for the first time opens
    FIRST_POLL_HISTORY before `now`, and keeps that time from then on."""
    if not integration_ids:
        return {}
    try:
        rows = await SQL["opened"].fetch(db.pool, integration_ids=integration_ids)
    except _MISSING:
        await SQL["create"].execute(db.pool)
        rows = []
    found = {r["integration_id"]: r["opened_at"] for r in rows}
    new = [i for i in integration_ids if i not in found]
    if new:
        rows = await SQL["open"].fetch(db.pool, integration_ids=new,
                                       opened_at=now - FIRST_POLL_HISTORY)
        found.update({r["integration_id"]: r["opened_at"] for r in rows})
    return found
