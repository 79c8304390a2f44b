"""All of cartd's SQL: migrations, agent claims, the outbox, delivery state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from uuid import UUID

import asyncpg

MIGRATION_LOCK = 0x63617274  # "cart": serialises concurrent `cartd migrate` runs
PURGE_BATCH = 500  # rows per retention DELETE
COMMAND_TIMEOUT = 60.0  # seconds a statement may take
STATEMENT_CACHE = 100  # prepared statements kept per connection (asyncpg's default)

# What a statement can raise: a database that is down, restarting or unreachable, or one
# that answers with an error (problem() says which).
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

# SQLSTATE classes and codes (PostgreSQL's appendix A) by what they mean to an operator.
_UNREACHABLE = ("08", "3D000", "53", "57P01", "57P02", "57P03")  # connection, no such
# database, out of connections or resources, shut down, starting up
_REFUSED = ("28", "42501")  # authentication failed, permission denied
_TIMED_OUT = ("57014", "55P03", "25P03")  # statement, lock or idle-in-transaction timeout


@dataclass(frozen=True, slots=True)
class DatabaseProblem:
    """What a failed database call means: `kind` is `unavailable` (cannot be reached),
    `permission` (refused), `timeout` or `query` (any other error the server gave)."""

    kind: str
    message: str
    sqlstate: str | None = None

    @property
    def event(self) -> str:
        """The log event that reports it."""
        return {"unavailable": "database_unavailable", "permission": "database_permission_denied",
                "timeout": "database_timeout", "query": "database_query_failed"}[self.kind]

    def __str__(self) -> str:
        label = {"unavailable": "unavailable", "permission": "permission denied",
                 "timeout": "timeout", "query": "query failed"}[self.kind]
        code = f" [{self.sqlstate}]" if self.sqlstate else ""
        return f"{label}{code}: {self.message}"


def problem(exc: BaseException) -> DatabaseProblem:
    """The DatabaseProblem of an exception in DB_ERRORS, with the server's message."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else type(exc).__name__
    if isinstance(exc, TimeoutError):
        return DatabaseProblem("timeout", f"no answer within {COMMAND_TIMEOUT:g} s")
    if not isinstance(exc, asyncpg.PostgresError):
        return DatabaseProblem("unavailable", message)  # socket errors, a closed connection
    code = exc.sqlstate or ""
    for kind, codes in (("unavailable", _UNREACHABLE), ("permission", _REFUSED),
                        ("timeout", _TIMED_OUT)):
        if code.startswith(codes):
            return DatabaseProblem(kind, message, code)
    return DatabaseProblem("query", message, code or None)


@dataclass(frozen=True, slots=True)
class AgentWork:
    """A claimed agent with its company and active integrations."""

    id: UUID
    name: str
    template_slug: str
    settings: Any
    company: dict[str, Any]
    integrations: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SourceState:
    cursor: datetime | None
    mock_epoch: datetime | None
    resume: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    id: str
    type: str
    agent_id: UUID
    integration_id: UUID
    platform: str
    url: str | None
    body: bytes
    carts: int
    status: str = "pending"
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    url: str | None
    body: bytes
    attempts: int
    platform: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt did to a delivery."""

    id: str
    status: str  # pending (retry), delivered or dead
    http_status: int | None
    error: str | None
    next_attempt_at: datetime | None
    at: datetime


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Reset on release to the pool: nothing to do. cartd never changes session state (no
    SET, LISTEN, cursors or session-level advisory locks); an open transaction is still
    rolled back by asyncpg. The default reset would cost a round trip per statement."""


# Views over an existing schema serve as the application tables (README "The database"):
# they have no keys, so the agent's columns are grouped by themselves, not by a.id (which
# PostgreSQL accepts only for a primary key). The casts keep types asyncpg would have to
# look up (varchar, citext, enums; json, which cannot be grouped) out of the result.
_CLAIM_AGENTS = """
WITH due AS (
    SELECT p.agent_id
    FROM cartd.agent_polls p
    JOIN company_agents a ON a.id = p.agent_id
    WHERE a.is_active AND a.template_slug = $1
      AND (p.next_poll_at <= $3 OR $6)
      AND (p.lease_until IS NULL OR p.lease_until < $3)
      AND (p.claimed_at IS NULL OR p.claimed_at < $3)
    ORDER BY p.next_poll_at
    LIMIT $7
    FOR UPDATE OF p SKIP LOCKED
), claimed AS (
    UPDATE cartd.agent_polls p
    SET claimed_by = $2, claimed_at = $3, lease_until = $4, next_poll_at = $5
    FROM due WHERE p.agent_id = due.agent_id
    RETURNING p.agent_id
)
SELECT a.id, a.name::text AS name, a.template_slug::text AS template_slug,
       a.settings::jsonb AS settings,
       c.id AS company_id, c.name::text AS company_name, c.website::text AS website,
       c.email::text AS email, c.phone::text AS phone,
       COALESCE(
         jsonb_agg(jsonb_build_object('id', i.id, 'platform', i.platform, 'config', i.config)
                   ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL),
         '[]'::jsonb) AS integrations
FROM claimed
JOIN company_agents a ON a.id = claimed.agent_id
JOIN companies c ON c.id = a.company_id
LEFT JOIN agent_integrations i ON i.agent_id = a.id AND i.is_active
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""

# Back to pending, due now, attempts counted afresh; the id (webhook-id) is kept.
_REPLAYED = """status = 'pending', next_attempt_at = $2, attempts = 0, delivered_at = NULL,
       attempted_by = NULL, claimed_by = NULL, lease_until = NULL"""

_DELIVERY_COLUMNS = """id, status, agent_id, integration_id, type, carts, attempts, last_status,
       last_error, next_attempt_at, created_at, delivered_at, attempted_by"""


# Claim due deliveries with a lease; {destination} leaves out the URLs in $5.
_CLAIM = """
WITH due AS (
    SELECT id FROM cartd.deliveries
    WHERE status = 'pending' AND next_attempt_at <= $2
      AND (lease_until IS NULL OR lease_until < $2)
      AND {destination}
    ORDER BY next_attempt_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE cartd.deliveries d SET claimed_by = $1, lease_until = $3
FROM due WHERE d.id = due.id
RETURNING d.id, d.url, d.body, d.attempts, d.platform
"""
_CLAIM_ANY = _CLAIM.format(destination="COALESCE(url, $6) <> ALL($5)")
# When the default URL is left out, only rows with a URL of their own can qualify: their
# partial index answers without reading past the default destination's backlog.
_CLAIM_OVERRIDES = _CLAIM.format(destination="url IS NOT NULL AND url <> ALL($5)")


def _by_integration(rows: list[Any]) -> dict[Any, set[str]]:
    """(integration_id, cart_id) rows as the set of cart ids of each integration."""
    out: dict[Any, set[str]] = {}
    for integration_id, cart_id in rows:
        if integration_id in out:
            out[integration_id].add(cart_id)
        else:
            out[integration_id] = {cart_id}
    return out


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 1, max_size: int = 10,
                      *, lazy: bool = False, pooler: str = "none") -> Store:
        """A pool; with `lazy`, one that connects on first use (the database may be down).

        `pooler="transaction"`: a pooler (PgBouncer in transaction mode) may hand each
        transaction another server connection, where named prepared statements do not
        exist: no statement cache, so every statement is parsed with its execution."""
        pool = await asyncpg.create_pool(
            dsn, min_size=0 if lazy else min(min_size, max_size), max_size=max_size,
            init=_init_connection, reset=_keep_session, command_timeout=COMMAND_TIMEOUT,
            statement_cache_size=STATEMENT_CACHE if pooler == "none" else 0,
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    # --- migrations -------------------------------------------------------

    async def migrate(self, *, app_tables: bool = False) -> list[str]:
        """Apply pending migrations under an advisory lock; returns what was applied."""
        folder = resources.files("cartd") / "migrations"
        names = sorted(p.name for p in folder.iterdir() if p.name[:3].isdigit())
        applied_now = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if app_tables:
                await conn.execute((folder / "app_tables.sql").read_text())
            await conn.execute(
                # CREATE SCHEMA needs CREATE on the database even when the schema exists:
                # a schema `cartd` made for a role without it serves as well.
                "DO $$ BEGIN IF to_regnamespace('cartd') IS NULL THEN CREATE SCHEMA cartd;"
                " END IF; END $$;"
                "CREATE TABLE IF NOT EXISTS cartd.schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM cartd.schema_migrations")}
            for name in names:
                if name not in done:
                    await conn.execute((folder / name).read_text())
                    await conn.execute("INSERT INTO cartd.schema_migrations (name) VALUES ($1)", name)
                    applied_now.append(name)
        return applied_now

    # --- agents -----------------------------------------------------------

    async def register_agents(self, slug: str) -> None:
        """Give every matching agent a poll row (once per cycle, before claiming)."""
        await self.pool.execute(
            "INSERT INTO cartd.agent_polls (agent_id) SELECT id FROM company_agents"
            " WHERE is_active AND template_slug = $1 ON CONFLICT DO NOTHING",
            slug,
        )

    async def claim_agents(
        self, *, slug: str, instance: str, now: datetime, interval: timedelta,
        lease: timedelta, limit: int, force: bool = False,
    ) -> list[AgentWork]:
        """Claim up to `limit` due agents with a lease, joined with company and integrations."""
        slack = min(interval * 0.1, timedelta(seconds=1))
        rows = await self.pool.fetch(
            _CLAIM_AGENTS, slug, instance, now, now + lease, now + interval - slack, force, limit
        )
        return [
            AgentWork(
                id=r["id"], name=r["name"], template_slug=r["template_slug"], settings=r["settings"],
                company={"id": str(r["company_id"]), "name": r["company_name"],
                         "website": r["website"], "email": r["email"], "phone": r["phone"]},
                integrations=r["integrations"],
            )
            for r in rows
        ]

    async def poll_share(self, *, slug: str, instance: str, now: datetime,
                         live_until: datetime) -> int:
        """Mark this instance as polling until `live_until`; returns its fair share of the
        matching agents for one interval: all of them over the instances polling now."""
        return await self.pool.fetchval(
            """
            WITH beat AS (
                INSERT INTO cartd.instances (id, live_until) VALUES ($2, $3)
                ON CONFLICT (id) DO UPDATE SET live_until = EXCLUDED.live_until
            ), gone AS (
                -- rows another instance is deleting are skipped: no waiting, no deadlock
                DELETE FROM cartd.instances WHERE id IN (
                    SELECT id FROM cartd.instances WHERE live_until < $4 AND id <> $2
                    FOR UPDATE SKIP LOCKED)
            )
            SELECT ceil((SELECT count(*) FROM company_agents
                         WHERE is_active AND template_slug = $1)::numeric
                        / (1 + (SELECT count(*) FROM cartd.instances
                                WHERE live_until >= $4 AND id <> $2)))::int
            """,
            slug, instance, live_until, now,
        )

    async def leave_polling(self, instance: str) -> None:
        """Stop counting this instance in the poll shares (polling stopped, or exit)."""
        await self.pool.execute("DELETE FROM cartd.instances WHERE id = $1", instance)

    async def source_states(self, integration_ids: list[UUID]) -> dict[UUID, SourceState]:
        rows = await self.pool.fetch(
            "SELECT integration_id, cursor, mock_epoch, resume FROM cartd.sources"
            " WHERE integration_id = ANY($1)",
            integration_ids,
        )
        return {r["integration_id"]: SourceState(r["cursor"], r["mock_epoch"], r["resume"])
                for r in rows}

    # --- the outbox -------------------------------------------------------

    async def record(
        self,
        *,
        now: datetime,
        detected: list[tuple[UUID, str]],
        completed: list[tuple[UUID, str]],
        build: Any,
        sources: list[tuple[UUID, datetime | None, datetime | None, dict[str, Any] | None]],
        agents: list[UUID],
        instance: str,
    ) -> list[NewDelivery]:
        """One transaction: remember new carts, mark recoveries, write deliveries, move cursors.

        `build(new, recovered)` receives the ids of the carts that were really new and
        really recovered, by integration id, and returns the deliveries to write.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetch(
                "INSERT INTO cartd.sent_carts (integration_id, cart_id, detected_at)"
                " SELECT i, c, $3 FROM unnest($1::uuid[], $2::text[]) AS t(i, c)"
                " ON CONFLICT DO NOTHING RETURNING integration_id, cart_id",
                [i for i, _ in detected], [c for _, c in detected], now,
            )
            recovered = await conn.fetch(
                "UPDATE cartd.sent_carts s SET recovered_at = $3"
                " FROM unnest($1::uuid[], $2::text[]) AS t(i, c)"
                " WHERE s.integration_id = t.i AND s.cart_id = t.c AND s.recovered_at IS NULL"
                " RETURNING s.integration_id, s.cart_id",
                [i for i, _ in completed], [c for _, c in completed], now,
            )
            deliveries: list[NewDelivery] = build(_by_integration(new), _by_integration(recovered))
            if deliveries:
                await conn.copy_records_to_table(
                    "deliveries", schema_name="cartd",
                    columns=["id", "type", "agent_id", "integration_id", "platform", "url", "body",
                             "carts", "status", "last_error", "next_attempt_at", "created_at"],
                    records=[(d.id, d.type, d.agent_id, d.integration_id, d.platform, d.url, d.body,
                              d.carts, d.status, d.last_error, now, now) for d in deliveries],
                )
            if sources:
                await conn.execute(
                    "INSERT INTO cartd.sources (integration_id, cursor, mock_epoch, resume,"
                    " updated_at)"
                    " SELECT i, c, e, r, $5 FROM unnest($1::uuid[], $2::timestamptz[],"
                    " $3::timestamptz[], $4::jsonb[]) AS t(i, c, e, r)"
                    " ON CONFLICT (integration_id) DO UPDATE SET cursor = EXCLUDED.cursor,"
                    " mock_epoch = COALESCE(cartd.sources.mock_epoch, EXCLUDED.mock_epoch),"
                    " resume = EXCLUDED.resume, updated_at = EXCLUDED.updated_at",
                    [s[0] for s in sources], [s[1] for s in sources], [s[2] for s in sources],
                    [s[3] for s in sources], now,
                )
            await conn.execute(
                "UPDATE cartd.agent_polls SET lease_until = NULL, claimed_by = NULL"
                " WHERE agent_id = ANY($1) AND claimed_by = $2",
                agents, instance,
            )
        return deliveries

    # --- deliveries -------------------------------------------------------

    async def claim_deliveries(
        self, *, instance: str, now: datetime, lease: timedelta, limit: int,
        default_url: str, exclude: list[str] | tuple[str, ...] = (),
    ) -> list[Claimed]:
        """Claim due deliveries with a lease, skipping those whose URL (`default_url` when
        the row has none) is in `exclude`: destinations with no free slot or an open breaker."""
        args = (instance, now, now + lease, limit, list(exclude))
        if default_url in exclude:
            rows = await self.pool.fetch(_CLAIM_OVERRIDES, *args)
        else:
            rows = await self.pool.fetch(_CLAIM_ANY, *args, default_url)
        return [Claimed(r["id"], r["url"], r["body"], r["attempts"], r["platform"]) for r in rows]

    async def unclaim(self, instance: str, ids: list[str]) -> None:
        """Give back claimed deliveries untouched (not attempted, not counted)."""
        await self.pool.execute(
            "UPDATE cartd.deliveries SET claimed_by = NULL, lease_until = NULL"
            " WHERE id = ANY($1) AND claimed_by = $2",
            ids, instance,
        )

    async def record_outcomes(self, outcomes: list[Outcome], instance: str) -> set[str]:
        """Write a batch of attempt outcomes in one statement; only rows this instance still
        holds change (a stale instance whose lease ran out and was taken over changes
        nothing). Returns the ids written."""
        rows = await self.pool.fetch(
            """
            UPDATE cartd.deliveries d SET
                status = o.status,
                attempts = d.attempts + 1,
                last_status = o.http_status,
                last_error = o.error,
                next_attempt_at = COALESCE(o.next_at, d.next_attempt_at),
                delivered_at = CASE WHEN o.status = 'delivered' THEN o.at END,
                attempted_by = $7,
                claimed_by = NULL, lease_until = NULL
            FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                        $6::timestamptz[]) AS o(id, status, http_status, error, next_at, at)
            WHERE d.id = o.id AND d.status = 'pending' AND d.claimed_by = $7
            RETURNING d.id
            """,
            [o.id for o in outcomes], [o.status for o in outcomes],
            [o.http_status for o in outcomes], [o.error for o in outcomes],
            [o.next_attempt_at for o in outcomes], [o.at for o in outcomes], instance,
        )
        return {r["id"] for r in rows}

    async def release(self, instance: str) -> None:
        """Give back what this instance holds (at shutdown): its claims and its poll share."""
        await self.leave_polling(instance)
        await self.pool.execute(
            "UPDATE cartd.deliveries SET claimed_by = NULL, lease_until = NULL"
            " WHERE claimed_by = $1 AND status = 'pending'",
            instance,
        )
        await self.pool.execute(
            "UPDATE cartd.agent_polls SET claimed_by = NULL, lease_until = NULL"
            " WHERE claimed_by = $1",
            instance,
        )

    async def attempt_states(self, ids: list[str]) -> dict[str, int]:
        """Of these deliveries: how many still wait for a first attempt, were delivered,
        or failed (dead, or pending after a failed attempt)."""
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0) AS unattempted,"
            " count(*) FILTER (WHERE status = 'delivered') AS delivered,"
            " count(*) FILTER (WHERE status = 'dead' OR (status = 'pending' AND attempts > 0))"
            " AS failed FROM cartd.deliveries WHERE id = ANY($1)",
            ids,
        )
        return dict(row)

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM cartd.deliveries GROUP BY status"
        )
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def list_deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM cartd.deliveries"
            " WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC, id LIMIT $2",
            status, limit,
        )
        return [dict(r) for r in rows]

    async def replay(self, delivery_id: str, now: datetime) -> bool:
        """Queue one delivery again, whatever its status; its id (webhook-id) stays."""
        status = await self.pool.execute(
            f"UPDATE cartd.deliveries SET {_REPLAYED} WHERE id = $1", delivery_id, now,
        )
        return status.endswith(" 1")

    async def replay_dead(self, since: datetime | None, now: datetime) -> int:
        """Queue again every dead delivery created at or after `since`; returns the count."""
        status = await self.pool.execute(
            f"UPDATE cartd.deliveries SET {_REPLAYED}"
            " WHERE status = 'dead' AND ($1::timestamptz IS NULL OR created_at >= $1)",
            since, now,
        )
        return int(status.split()[-1])

    # --- retention --------------------------------------------------------

    async def purge(self, *, payloads_before: datetime, carts_before: datetime,
                    batch: int = PURGE_BATCH) -> tuple[int, int]:
        """Delete finished (delivered or dead) deliveries that finished before
        `payloads_before`, and the dedupe memory of carts detected before `carts_before`,
        `batch` rows per statement so no statement holds many locks. Returns both counts."""
        deliveries = await self._purge_batches(
            "DELETE FROM cartd.deliveries WHERE id IN (SELECT id FROM cartd.deliveries"
            " WHERE status <> 'pending' AND COALESCE(delivered_at, next_attempt_at) < $1"
            " LIMIT $2)",
            payloads_before, batch,
        )
        carts = await self._purge_batches(
            "DELETE FROM cartd.sent_carts WHERE (integration_id, cart_id) IN"
            " (SELECT integration_id, cart_id FROM cartd.sent_carts WHERE detected_at < $1"
            " LIMIT $2)",
            carts_before, batch,
        )
        return deliveries, carts

    async def _purge_batches(self, sql: str, before: datetime, batch: int) -> int:
        total = 0
        while True:
            deleted = int((await self.pool.execute(sql, before, batch)).split()[-1])
            total += deleted
            if deleted < batch:
                return total

    # --- demo data --------------------------------------------------------

    async def seed_demo(
        self,
        companies: list[tuple[Any, ...]],
        agents: list[tuple[Any, ...]],
        integrations: list[tuple[Any, ...]],
    ) -> None:
        """Insert demo rows into the application tables (only `seed-demo` writes them)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO companies (id, name, website, email, phone) VALUES ($1, $2, $3, $4, $5)",
                companies,
            )
            await conn.executemany(
                "INSERT INTO company_agents (id, company_id, name, template_slug, is_active, settings)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                agents,
            )
            await conn.executemany(
                "INSERT INTO agent_integrations (id, agent_id, platform, is_active, config)"
                " VALUES ($1, $2, $3, $4, $5)",
                integrations,
            )
