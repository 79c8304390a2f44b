"""cartd's database: the pool, what its errors mean, and its queries by concern, each
store with its SQL in `cartd/db/sql/` (docs/architecture.md)."""

from __future__ import annotations

import asyncpg

from cartd.db.agents import AgentWork, Agents, SourcePoll, SourceState
from cartd.db.deliveries import Claimed, Deliveries, Outcome
from cartd.db.errors import (DB_ERRORS, DatabaseHealth, DatabaseProblem, one_line, problem,
                             refused_values)
from cartd.db.maintenance import Maintenance
from cartd.db.outbox import NewDelivery, Outbox, Refreshed, Stale
from cartd.db.pool import Database
from cartd.db.subjects import Subjects

__all__ = [
    "DB_ERRORS", "AgentWork", "Agents", "Claimed", "Database", "DatabaseHealth",
    "DatabaseProblem", "Deliveries", "Maintenance", "NewDelivery", "Outbox", "Outcome",
    "Refreshed", "SourcePoll", "SourceState", "Stale", "Store", "Subjects", "one_line",
    "problem", "refused_values",
]


class Store(Database):
    """The database, by concern: `agents` (claims, poll shares, cursors and health),
    `outbox` (what a cycle records, stale deliveries, expiry), `deliveries` (attempts,
    listing, replay), `maintenance` (migrations, retention), `subjects` (erasure)."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        super().__init__(pool, dsn)
        self.agents = Agents(self)
        self.outbox = Outbox(self)
        self.deliveries = Deliveries(self)
        self.maintenance = Maintenance(self)
        self.subjects = Subjects(self)

    async def release(self, instance: str) -> None:
        """Give back what this instance holds (at shutdown): its poll share, its delivery
        claims and its agent claims."""
        await self.agents.leave(instance)
        await self.deliveries.release(instance)
        await self.agents.release(instance)
