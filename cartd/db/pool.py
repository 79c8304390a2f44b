"""The connection pool to cartd's database, and the pooler mode (README "The database")."""

from __future__ import annotations

import asyncio
import json
from typing import Self

import asyncpg

from cartd.db.queries import load

SQL = load("cartd.db", "sql/pool.sql")
COMMAND_TIMEOUT = 60.0  # seconds a statement may take
STATEMENT_CACHE = 100  # prepared statements kept per connection (asyncpg's default)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Reset on release to the pool: nothing to do. cartd never changes session state (no
    SET, LISTEN, cursors or session-level advisory locks); an open transaction is still
    rolled back by asyncpg. The default reset would cost a round trip per statement."""


async def create_pool(dsn: str, min_size: int, max_size: int, *, lazy: bool,
                      pooler: str) -> asyncpg.Pool:
    """A pool; with `lazy`, one that connects on first use (the database may be down).

    `pooler="transaction"`: a pooler (PgBouncer in transaction mode) may hand each
    transaction another server connection, where named prepared statements do not
    exist: no statement cache, so every statement is parsed with its execution."""
    return await asyncpg.create_pool(
        dsn, min_size=0 if lazy else min_size, max_size=max_size,
        init=_init_connection, reset=_keep_session, command_timeout=COMMAND_TIMEOUT,
        statement_cache_size=STATEMENT_CACHE if pooler == "none" else 0,
    )


class Database:
    """A pool of connections to one database. The stores of each concern hold the
    Database, not its pool, so that `reconnect` reaches all of them."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 1, max_size: int = 10,
                      *, lazy: bool = False, pooler: str = "none") -> Self:
        return cls(await create_pool(dsn, min_size, max_size, lazy=lazy, pooler=pooler), dsn)

    async def reconnect(self, min_size: int, max_size: int, pooler: str) -> None:
        """Use a pool of this size and pooler mode from now on; the old one closes once
        the work it holds is done."""
        old = self.pool
        self.pool = await create_pool(self.dsn, min_size, max_size, lazy=True, pooler=pooler)
        task = asyncio.create_task(old.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await self.pool.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def ping(self) -> None:
        await SQL["ping"].fetchval(self.pool)
