"""When each mock store opened, so that it keeps its promises (README "The database"): a
store polled for the first time already holds the carts of its past 24 hours, and polling
again returns the same carts. Mock state lives in the mock room's own table,
`cartd_mock.stores`, created at the first mock poll."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import structlog

from cartd.db.pool import Database
from cartd.db.queries import load

log = structlog.get_logger("cartd.sources")

SQL = load("cartd.sources", "mock_stores.sql")
FIRST_POLL_HISTORY = timedelta(hours=24)
_MISSING = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)
_unkept: set[UUID] = set()  # mock stores whose state could not be kept, logged once each


async def known(db: Database, integration_ids: list[UUID]) -> dict[UUID, datetime]:
    """When those of these mock stores that were polled before opened (read only)."""
    if not integration_ids:
        return {}
    try:
        rows = await SQL["opened"].fetch(db.pool, integration_ids=integration_ids)
    except (*_MISSING, asyncpg.InsufficientPrivilegeError):  # never polled, or not kept
        return {}
    return {r["integration_id"]: r["opened_at"] for r in rows}


async def opened(db: Database, integration_ids: list[UUID], now: datetime) -> dict[UUID, datetime]:
    """When each of these mock stores opened; one polled for the first time opens
    FIRST_POLL_HISTORY before `now`, and keeps that time from then on."""
    if not integration_ids:
        return {}
    try:
        return await _open(db, integration_ids, now - FIRST_POLL_HISTORY)
    except asyncpg.InsufficientPrivilegeError as exc:
        # A role that may not make `cartd_mock`: each poll opens the store anew, its
        # cursor still bounds what it returns (README "The database").
        unlogged = set(integration_ids) - _unkept
        if unlogged:
            log.warning("mock_state_not_kept", stores=len(unlogged),
                        error=str(exc).splitlines()[0])
            _unkept.update(unlogged)
        return dict.fromkeys(integration_ids, now - FIRST_POLL_HISTORY)


async def _open(db: Database, integration_ids: list[UUID],
                opened_at: datetime) -> dict[UUID, datetime]:
    try:
        rows = await SQL["opened"].fetch(db.pool, integration_ids=integration_ids)
    except _MISSING:
        await SQL["create"].execute(db.pool)
        rows = []
    found = {r["integration_id"]: r["opened_at"] for r in rows}
    new = [i for i in integration_ids if i not in found]
    if new:
        rows = await SQL["open"].fetch(db.pool, integration_ids=new, opened_at=opened_at)
        found.update({r["integration_id"]: r["opened_at"] for r in rows})
    return found
