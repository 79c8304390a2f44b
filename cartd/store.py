"""All of cartd's SQL: migrations, agent claims, the outbox, delivery state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from cartd.subjects import SubjectKeys

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
    hold_for: str | None = None  # a recovered delivery waiting for this detected one


class SourcePoll(NamedTuple):
    """One integration's poll in a cycle: its next cursor, or the error it failed with."""

    integration_id: UUID
    agent_id: UUID
    platform: str
    mode: str | None
    cursor: datetime | None = None
    mock_epoch: datetime | None = None
    resume: dict[str, Any] | None = None  # where a read that stopped goes on
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    url: str | None
    body: bytes
    attempts: int
    platform: str


@dataclass(frozen=True, slots=True)
class Stale:
    """A delivery to bring up to date: its carts that completed and those erased."""

    id: str
    type: str
    status: str
    body: bytes
    carts: int
    completed: set[str]
    forgotten: set[str]


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What a stale delivery becomes; `body` None keeps the stored one."""

    status: str
    body: bytes | None
    carts: int
    error: str | None = None


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


# An agent with its company and active integrations, as the cycle works on it. Views over
# an existing schema serve as the application tables (README "The database"): they have
# no keys, so the agent's columns are grouped by themselves (`GROUP BY 1, ..., 9`), not by
# a.id (which PostgreSQL accepts only for a primary key). The casts keep types asyncpg
# would have to look up (varchar, citext, enums; json, which cannot be grouped) out of
# the result.
_AGENT_COLUMNS = """a.id, a.name::text AS name, a.template_slug::text AS template_slug,
       a.settings::jsonb AS settings,
       c.id AS company_id, c.name::text AS company_name, c.website::text AS website,
       c.email::text AS email, c.phone::text AS phone,
       COALESCE(
         jsonb_agg(jsonb_build_object('id', i.id, 'platform', i.platform, 'config', i.config)
                   ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL),
         '[]'::jsonb) AS integrations"""
_AGENT_GROUPS = "GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"

_CLAIM_AGENTS = f"""
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
SELECT {_AGENT_COLUMNS}
FROM claimed
JOIN company_agents a ON a.id = claimed.agent_id
JOIN companies c ON c.id = a.company_id
LEFT JOIN agent_integrations i ON i.agent_id = a.id AND i.is_active
{_AGENT_GROUPS}
"""

# The agents a preview polls: every matching one, or the one given, or the one of the
# integration given (with only that integration). Nothing is claimed.
_PREVIEW_AGENTS = f"""
SELECT {_AGENT_COLUMNS}
FROM company_agents a
JOIN companies c ON c.id = a.company_id
LEFT JOIN agent_integrations i ON i.agent_id = a.id AND i.is_active
     AND ($3::uuid IS NULL OR i.id = $3)
WHERE a.is_active AND a.template_slug = $1 AND ($2::uuid IS NULL OR a.id = $2)
  AND ($3::uuid IS NULL OR a.id = (SELECT agent_id FROM agent_integrations WHERE id = $3))
{_AGENT_GROUPS}
ORDER BY 1
"""

# Back to pending, due now, attempts counted afresh; the id (webhook-id) is kept. Stale,
# so that it is rebuilt from what cartd knows of its carts now before it goes (a cart that
# completed or was erased since leaves it).
_REPLAYED = """status = 'pending', next_attempt_at = $2, attempts = 0, delivered_at = NULL,
       attempted_by = NULL, claimed_by = NULL, lease_until = NULL, stale = true"""

_DELIVERY_COLUMNS = """id, status, agent_id, integration_id, type, carts, attempts, last_status,
       last_error, next_attempt_at, created_at, delivered_at, attempted_by"""


# Claim due deliveries with a lease; {destination} leaves out the URLs in $5. Not claimed:
# stale rows (being rebuilt), recovered ones waiting for their detected delivery, and
# detected ones recorded before $6 (expired: README "Delivery guarantees").
_CLAIM = """
WITH due AS (
    SELECT id FROM cartd.deliveries
    WHERE status = 'pending' AND next_attempt_at <= $2
      AND (lease_until IS NULL OR lease_until < $2)
      AND NOT stale AND hold_for IS NULL
      AND (type <> 'abandoned_cart.detected' OR created_at >= $6)
      AND {destination}
    ORDER BY next_attempt_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE cartd.deliveries d SET claimed_by = $1, lease_until = $3
FROM due WHERE d.id = due.id
RETURNING d.id, d.url, d.body, d.attempts, d.platform
"""
_CLAIM_ANY = _CLAIM.format(destination="COALESCE(url, $7) <> ALL($5)")
# When the default URL is left out, only rows with a URL of their own can qualify: their
# partial index answers without reading past the default destination's backlog.
_CLAIM_OVERRIDES = _CLAIM.format(destination="url IS NOT NULL AND url <> ALL($5)")


# Retention. A dead detected delivery never reached the receiver: its carts get no
# `recovered` event once it is gone either.
_PURGE_DEAD_DETECTED = """
WITH gone AS (
    DELETE FROM cartd.deliveries WHERE id IN (
        SELECT id FROM cartd.deliveries
        WHERE status = 'dead' AND COALESCE(delivered_at, next_attempt_at) < $1
          AND type = 'abandoned_cart.detected'
        LIMIT $2)
    RETURNING integration_id, body
), quiet AS (
    UPDATE cartd.sent_carts s SET silenced = true
    FROM gone, jsonb_array_elements(convert_from(gone.body, 'UTF8')::jsonb -> 'abandoned_carts') e
    WHERE s.integration_id = gone.integration_id AND s.cart_id = e ->> 'cart_id'
)
SELECT count(*) FROM gone
"""
_PURGE_FINISHED = """
WITH gone AS (
    DELETE FROM cartd.deliveries WHERE id IN (
        SELECT id FROM cartd.deliveries
        WHERE status <> 'pending' AND COALESCE(delivered_at, next_attempt_at) < $1
        LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone
"""
# A cart's memory outlives the deliveries that hold it, so that erasing its customer
# (which finds the deliveries through it) reaches every stored payload.
_PURGE_CARTS = """
WITH held AS (
    SELECT integration_id, created_at FROM cartd.deliveries WHERE created_at < $1
), gone AS (
    DELETE FROM cartd.sent_carts WHERE (integration_id, cart_id) IN (
        SELECT s.integration_id, s.cart_id FROM cartd.sent_carts s
        WHERE s.detected_at < $1 AND (s.recovered_at IS NULL OR s.recovered_at < $1)
          AND (s.integration_id, s.detected_at) NOT IN (SELECT * FROM held)
          AND (s.recovered_at IS NULL
               OR (s.integration_id, s.recovered_at) NOT IN (SELECT * FROM held))
        LIMIT $2)
    RETURNING 1
)
SELECT count(*) FROM gone
"""

# Stale deliveries no attempt holds, with those of their carts that completed and those
# whose customer was erased.
_STALE = """
SELECT d.id, d.type, d.status, d.body, d.carts,
       ARRAY(SELECT s.cart_id FROM jsonb_array_elements(
                 convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e
             JOIN cartd.sent_carts s
               ON s.integration_id = d.integration_id AND s.cart_id = e ->> 'cart_id'
             WHERE s.recovered_at IS NOT NULL) AS completed,
       ARRAY(SELECT s.cart_id FROM jsonb_array_elements(
                 convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e
             JOIN cartd.sent_carts s
               ON s.integration_id = d.integration_id AND s.cart_id = e ->> 'cart_id'
             WHERE s.forgotten) AS forgotten
FROM cartd.deliveries d
WHERE d.stale AND (d.claimed_by IS NULL OR d.lease_until < $1)
  AND ($3::text[] IS NULL OR d.id = ANY($3))
ORDER BY d.id
LIMIT $2
FOR UPDATE OF d SKIP LOCKED
"""
_REFRESHED = """
UPDATE cartd.deliveries d SET
    body = COALESCE(u.body, d.body), carts = u.carts, status = u.status, stale = false,
    next_attempt_at = CASE WHEN u.status = 'withdrawn' AND d.status <> 'withdrawn' THEN $1
                           ELSE d.next_attempt_at END,
    last_error = COALESCE(u.error, d.last_error),
    claimed_by = NULL, lease_until = NULL
FROM unnest($2::text[], $3::bytea[], $4::int[], $5::text[], $6::text[])
     AS u(id, body, carts, status, error)
WHERE d.id = u.id
"""
# Recovered deliveries waiting for these detected ones: they go, or are withdrawn.
_RELEASED = """
UPDATE cartd.deliveries r SET hold_for = NULL, next_attempt_at = $1,
    status = CASE WHEN h.delivered THEN 'pending' ELSE 'withdrawn' END,
    last_error = CASE WHEN h.delivered THEN r.last_error ELSE $4 END
FROM unnest($2::text[], $3::bool[]) AS h(id, delivered)
WHERE r.hold_for = h.id AND r.status = 'pending'
RETURNING r.id, r.status
"""
# {person}: the carts of one person, by email key or by customer key within an integration.
_FORGET = """
WITH gone AS (
    UPDATE cartd.sent_carts SET email_key = NULL, customer_key = NULL,
        forgotten = true, silenced = true
    WHERE {person}
    RETURNING integration_id, detected_at, recovered_at
), marked AS (
    UPDATE cartd.deliveries d SET stale = true
    FROM gone
    WHERE d.integration_id = gone.integration_id
      AND d.created_at IN (gone.detected_at, gone.recovered_at)
    RETURNING d.id
)
SELECT (SELECT count(*) FROM gone) AS carts, ARRAY(SELECT id FROM marked) AS deliveries
"""
_ACTIVE_INTEGRATIONS = """
FROM agent_integrations i
JOIN company_agents a ON a.id = i.agent_id AND a.is_active AND a.template_slug = $1
LEFT JOIN cartd.sources s ON s.integration_id = i.id
WHERE i.is_active"""
_INTEGRATIONS = f"""
SELECT i.id, i.agent_id, i.platform::text AS platform,
       COALESCE(s.mode, CASE WHEN jsonb_typeof(i.config::jsonb) = 'object'
                             THEN i.config::jsonb ->> 'mode' END) AS mode,
       s.last_polled_at, s.last_success_at,
       COALESCE(s.consecutive_failures, 0) AS consecutive_failures, s.last_error
{_ACTIVE_INTEGRATIONS} AND (NOT $2 OR s.consecutive_failures > 0)
ORDER BY COALESCE(s.consecutive_failures, 0) DESC, s.last_polled_at DESC NULLS LAST, i.id
LIMIT $3
"""
_HEALTH = f"""
SELECT i.platform::text AS platform,
       count(*) FILTER (WHERE s.consecutive_failures > 0) AS failing,
       max(extract(epoch FROM $2 - COALESCE(s.last_success_at, s.failing_since))) AS age
{_ACTIVE_INTEGRATIONS} AND i.platform::text = ANY($3)
GROUP BY 1
"""

def _by_integration(rows: list[Any]) -> dict[Any, set[str]]:
    """(integration_id, cart_id) rows as the set of cart ids of each integration."""
    out: dict[Any, set[str]] = {}
    for integration_id, cart_id in rows:
        if integration_id in out:
            out[integration_id].add(cart_id)
        else:
            out[integration_id] = {cart_id}
    return out


def _agent_work(r: Any) -> AgentWork:
    return AgentWork(
        id=r["id"], name=r["name"], template_slug=r["template_slug"], settings=r["settings"],
        company={"id": str(r["company_id"]), "name": r["company_name"],
                 "website": r["website"], "email": r["email"], "phone": r["phone"]},
        integrations=r["integrations"],
    )


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of `width` values as `width` lists (the arrays an unnest takes)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


# The health of each integration with its cursor; a failed poll keeps the cursor.
_SOURCES_POLLED = """
INSERT INTO cartd.sources AS s (integration_id, agent_id, platform, mode, cursor, mock_epoch,
    resume, updated_at, last_polled_at, last_success_at, consecutive_failures, failing_since,
    last_error)
SELECT i, a, p, m, c, e, r, $9::timestamptz, $9, CASE WHEN err IS NULL THEN $9 END,
       (err IS NOT NULL)::int, CASE WHEN err IS NOT NULL THEN $9 END, err
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::jsonb[], $8::text[]) AS t(i, a, p, m, c, e, r, err)
ON CONFLICT (integration_id) DO UPDATE SET
    agent_id = EXCLUDED.agent_id, platform = EXCLUDED.platform,
    mode = COALESCE(EXCLUDED.mode, s.mode),
    cursor = CASE WHEN EXCLUDED.last_error IS NULL THEN EXCLUDED.cursor ELSE s.cursor END,
    resume = CASE WHEN EXCLUDED.last_error IS NULL THEN EXCLUDED.resume ELSE s.resume END,
    mock_epoch = COALESCE(s.mock_epoch, EXCLUDED.mock_epoch),
    updated_at = EXCLUDED.updated_at,
    last_polled_at = EXCLUDED.last_polled_at,
    last_success_at = COALESCE(EXCLUDED.last_success_at, s.last_success_at),
    consecutive_failures = CASE WHEN EXCLUDED.last_error IS NULL THEN 0
                                ELSE s.consecutive_failures + 1 END,
    failing_since = CASE WHEN EXCLUDED.last_error IS NULL THEN NULL
                         ELSE COALESCE(s.failing_since, EXCLUDED.failing_since) END,
    last_error = EXCLUDED.last_error
"""

# Carts seen completed for the first time, with the detected deliveries that may hold
# them: those of their integration written when they were recorded.
_COMPLETED = """
WITH done AS (
    UPDATE cartd.sent_carts s SET recovered_at = $3
    FROM unnest($1::uuid[], $2::text[]) AS t(i, c)
    WHERE s.integration_id = t.i AND s.cart_id = t.c AND s.recovered_at IS NULL
      AND NOT s.silenced
    RETURNING s.integration_id, s.cart_id, s.detected_at
)
SELECT done.integration_id, done.cart_id, d.id, d.status
FROM done LEFT JOIN cartd.deliveries d
  ON d.integration_id = done.integration_id AND d.created_at = done.detected_at
 AND d.type = 'abandoned_cart.detected'
"""

# Of (integration, cart, delivery) candidates, those where the delivery's body holds the cart.
_HOLDING = """
SELECT t.i, t.c, t.d FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(i, c, d)
JOIN cartd.deliveries d ON d.id = t.d
WHERE convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts'
      @> jsonb_build_array(jsonb_build_object('cart_id', t.c))
"""


async def _holders(conn: asyncpg.Connection, rows: list[Any]) -> dict[tuple[Any, str], str | None]:
    """(integration id, cart id) -> the detected delivery that holds it (None: purged by
    retention, or older than this release)."""
    candidates: dict[tuple[Any, str], list[str]] = {}
    for integration_id, cart_id, delivery_id, _ in rows:
        found = candidates.setdefault((integration_id, cart_id), [])
        if delivery_id is not None:
            found.append(delivery_id)
    holder = {key: ids[0] if ids else None for key, ids in candidates.items()}
    # A cycle that wrote several deliveries for one integration: read their bodies.
    shared = [(key, d) for key, ids in candidates.items() if len(ids) > 1 for d in ids]
    if shared:
        found = await conn.fetch(_HOLDING, [k[0] for k, _ in shared], [k[1] for k, _ in shared],
                                 [d for _, d in shared])
        for key, _ in shared:
            holder[key] = None
        holder.update({(r["i"], r["c"]): r["d"] for r in found})
    return holder


async def _completions(
    conn: asyncpg.Connection, completed: list[tuple[UUID, str]], now: datetime,
) -> tuple[dict[Any, set[str]], dict[Any, dict[str, set[str]]]]:
    """Mark carts completed; returns those whose `recovered` event may go now and those
    whose event waits for the detected delivery in flight (README "What the receiver sees
    when a cart completes"). A cart whose detected delivery is still pending leaves it: the
    delivery is marked stale, and claims skip it until it is rebuilt without the cart."""
    rows = await conn.fetch(_COMPLETED, *_columns(completed, 2), now)
    if not rows:
        return {}, {}
    status = {r["id"]: r["status"] for r in rows if r["id"] is not None}
    holder = await _holders(conn, rows)
    pending = sorted({d for d in holder.values() if d is not None and status[d] == "pending"})
    in_flight: dict[str, bool] = {}
    if pending:
        # The lock taken here orders this against a claim: either the claim came first (the
        # attempt is in flight, the cart's event waits for it), or it skips the row.
        marked = await conn.fetch(
            "UPDATE cartd.deliveries SET stale = true WHERE id = ANY($1) AND status = 'pending'"
            " RETURNING id, claimed_by IS NOT NULL AND lease_until >= $2 AS in_flight",
            pending, now)
        in_flight = {r["id"]: r["in_flight"] for r in marked}
        moved = [d for d in pending if d not in in_flight]  # finished meanwhile
        if moved:
            status.update({r["id"]: r["status"] for r in await conn.fetch(
                "SELECT id, status FROM cartd.deliveries WHERE id = ANY($1)", moved)})
    recovered: dict[Any, set[str]] = {}
    held: dict[Any, dict[str, set[str]]] = {}
    for (integration_id, cart_id), delivery_id in holder.items():
        if delivery_id is None or status[delivery_id] == "delivered":
            recovered.setdefault(integration_id, set()).add(cart_id)
        elif in_flight.get(delivery_id):
            held.setdefault(integration_id, {}).setdefault(delivery_id, set()).add(cart_id)
    return recovered, held


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._subject_keys: SubjectKeys | None = None

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
        return [_agent_work(r) for r in rows]

    async def renew_agent_claims(self, instance: str, lease_until: datetime) -> None:
        """Extend the lease of the agents `instance` holds (claimed, not yet released)."""
        await self.pool.execute(
            "UPDATE cartd.agent_polls SET lease_until = $2"
            " WHERE claimed_by = $1 AND lease_until IS NOT NULL",
            instance, lease_until,
        )

    async def preview_agents(self, *, slug: str, agent_id: UUID | None,
                             integration_id: UUID | None) -> list[AgentWork]:
        """The agents a preview polls, read only (see _PREVIEW_AGENTS)."""
        rows = await self.pool.fetch(_PREVIEW_AGENTS, slug, agent_id, integration_id)
        return [_agent_work(r) for r in rows]

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
        detected: list[tuple[UUID, str, bytes | None, bytes | None]],
        completed: list[tuple[UUID, str]],
        build: Any,
        sources: list[SourcePoll],
        agents: list[UUID],
        instance: str,
    ) -> list[NewDelivery]:
        """One transaction: remember new carts, mark recoveries, write deliveries, move
        cursors and the integrations' health.

        `detected` holds (integration id, cart id, email key, customer key) of the carts
        kept. `build(new, recovered, held)` receives the ids of the carts that were really
        new and those whose `recovered` event may go now, by integration id, and those whose
        event must wait for a detected delivery in flight (integration id -> delivery id ->
        cart ids); it returns the deliveries to write.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            new = await conn.fetch(
                "INSERT INTO cartd.sent_carts"
                " (integration_id, cart_id, email_key, customer_key, detected_at)"
                " SELECT i, c, e, u, $5"
                " FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[]) AS t(i, c, e, u)"
                " ON CONFLICT DO NOTHING RETURNING integration_id, cart_id",
                *_columns(detected, 4), now,
            )
            recovered, held = await _completions(conn, completed, now)
            deliveries: list[NewDelivery] = build(_by_integration(new), recovered, held)
            if deliveries:
                await conn.copy_records_to_table(
                    "deliveries", schema_name="cartd",
                    columns=["id", "type", "agent_id", "integration_id", "platform", "url", "body",
                             "carts", "status", "last_error", "next_attempt_at", "created_at",
                             "hold_for"],
                    records=[(d.id, d.type, d.agent_id, d.integration_id, d.platform, d.url, d.body,
                              d.carts, d.status, d.last_error, now, now, d.hold_for)
                             for d in deliveries],
                )
            if sources:
                await conn.execute(_SOURCES_POLLED, *_columns(sources, 8), now)
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
        max_age: timedelta | None = None,
    ) -> list[Claimed]:
        """Claim due deliveries with a lease, skipping those whose URL (`default_url` when
        the row has none) is in `exclude`: destinations with no free slot or an open
        breaker; and detected deliveries older than `max_age` (they expire)."""
        fresh_after = now - max_age if max_age is not None else datetime.min.replace(tzinfo=UTC)
        args = (instance, now, now + lease, limit, list(exclude), fresh_after)
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
            "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0"
            " AND hold_for IS NULL) AS unattempted,"
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
        counts = {"pending": 0, "delivered": 0, "dead": 0, "withdrawn": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def list_deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM cartd.deliveries"
            " WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC, id LIMIT $2",
            status, limit,
        )
        return [dict(r) for r in rows]

    async def replay(self, delivery_id: str, now: datetime) -> str | None:
        """Queue one delivery again, whatever its status but withdrawn; its id (webhook-id)
        stays. Returns its status before, or None when there is no such delivery."""
        row = await self.pool.fetchrow(
            f"UPDATE cartd.deliveries d SET {_REPLAYED}"
            " FROM (SELECT id, status FROM cartd.deliveries WHERE id = $1 FOR UPDATE) old"
            " WHERE d.id = old.id AND old.status <> 'withdrawn' RETURNING old.status",
            delivery_id, now,
        )
        if row is not None:
            return row["status"]
        return await self.pool.fetchval(
            "SELECT status FROM cartd.deliveries WHERE id = $1", delivery_id)

    async def replay_dead(self, since: datetime | None, now: datetime) -> int:
        """Queue again every dead delivery created at or after `since`; returns the count."""
        status = await self.pool.execute(
            f"UPDATE cartd.deliveries SET {_REPLAYED}"
            " WHERE status = 'dead' AND ($1::timestamptz IS NULL OR created_at >= $1)",
            since, now,
        )
        return int(status.split()[-1])

    # --- keeping stored payloads true to their carts ---------------------

    async def subject_keys(self) -> SubjectKeys:
        """The hashes that find a person's carts, under the key migration 007 made."""
        if self._subject_keys is None:
            self._subject_keys = SubjectKeys(
                await self.pool.fetchval("SELECT key FROM cartd.subject_key"))
        return self._subject_keys

    async def known_carts(self, carts: list[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
        """Which of these (integration id, cart id) are in the dedupe memory."""
        rows = await self.pool.fetch(
            "SELECT s.integration_id, s.cart_id FROM unnest($1::uuid[], $2::text[]) AS t(i, c)"
            " JOIN cartd.sent_carts s ON s.integration_id = t.i AND s.cart_id = t.c",
            *_columns(carts, 2))
        return {(r["integration_id"], r["cart_id"]) for r in rows}

    async def refresh_stale(self, *, now: datetime, limit: int, rebuild: Any,
                            only: list[str] | None = None,
                            ) -> tuple[list[tuple[Stale, Refreshed]], list[tuple[str, str]]]:
        """One transaction: rebuild up to `limit` stale deliveries that no attempt holds
        (of `only`, when given) and settle the recovered deliveries waiting for them.

        `rebuild(stale)` returns what a delivery becomes; a recovered delivery waiting for
        one goes once that one is delivered, and is withdrawn otherwise. Returns the
        deliveries rebuilt, and (id, new status) of the recovered ones settled."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_STALE, now, limit, only)
            if not rows:
                return [], []
            done = [(stale, rebuild(stale)) for stale in (
                Stale(r["id"], r["type"], r["status"], r["body"], r["carts"],
                      set(r["completed"]), set(r["forgotten"])) for r in rows)]
            await conn.execute(_REFRESHED, now, *_columns(
                [(s.id, r.body, r.carts, r.status, r.error) for s, r in done], 5))
            settled = await conn.fetch(
                _RELEASED, now, [s.id for s, _ in done], [r.status == "delivered" for _, r in done],
                "withdrawn: the detected delivery of its carts was not delivered")
        return done, [(r["id"], r["status"]) for r in settled]

    async def count_stale(self, ids: list[str]) -> int:
        """How many of these deliveries still wait to be rebuilt."""
        return await self.pool.fetchval(
            "SELECT count(*) FROM cartd.deliveries WHERE id = ANY($1) AND stale", ids)

    async def expire(self, *, now: datetime, recorded_before: datetime, reason: str) -> list[str]:
        """Dead-letter the detected deliveries recorded before `recorded_before` that are
        still pending and not in flight; `last_error` is `reason` and the last attempt's
        error. Returns their ids."""
        rows = await self.pool.fetch(
            "UPDATE cartd.deliveries SET status = 'dead', next_attempt_at = $1,"
            " claimed_by = NULL, lease_until = NULL,"
            " last_error = $3 || COALESCE(' (last attempt: ' || last_error || ')', '')"
            " WHERE status = 'pending' AND type = 'abandoned_cart.detected' AND created_at < $2"
            " AND (claimed_by IS NULL OR lease_until < $1) RETURNING id",
            now, recorded_before, reason)
        return [r["id"] for r in rows]

    async def forget(self, *, key: bytes, integration_id: UUID | None) -> tuple[int, list[str]]:
        """Erase a person from the dedupe memory: their carts (by email key, or by customer
        key within `integration_id`) lose their keys and get no event again, and every
        delivery that may hold them is marked stale (rebuilt or redacted next). Returns the
        number of carts and the ids of those deliveries."""
        if integration_id is None:
            row = await self.pool.fetchrow(_FORGET.format(person="email_key = $1"), key)
        else:
            row = await self.pool.fetchrow(
                _FORGET.format(person="integration_id = $2 AND customer_key = $1"),
                key, integration_id)
        return row["carts"], row["deliveries"]

    # --- the health of each integration ----------------------------------

    async def integrations(self, *, slug: str, failing: bool, limit: int) -> list[dict[str, Any]]:
        """Active integrations of matching agents, failing ones first, with their health."""
        rows = await self.pool.fetch(_INTEGRATIONS, slug, failing, limit)
        return [dict(r) for r in rows]

    async def integration_health(self, *, slug: str, now: datetime,
                                 platforms: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        """Per platform: how many active integrations failed their last poll, and the
        longest time in seconds since any of them was last polled successfully."""
        rows = await self.pool.fetch(_HEALTH, slug, now, list(platforms))
        return {r["platform"]: (r["failing"], float(r["age"] or 0)) for r in rows}

    # --- retention --------------------------------------------------------

    async def purge(self, *, payloads_before: datetime, carts_before: datetime,
                    batch: int = PURGE_BATCH) -> tuple[int, int]:
        """Delete finished (delivered, dead or withdrawn) deliveries that finished before
        `payloads_before`, and the dedupe memory of carts detected before `carts_before`
        that no delivery holds any more, `batch` rows per statement so no statement holds
        many locks. Returns both counts."""
        deliveries = await self._purge_batches(_PURGE_DEAD_DETECTED, payloads_before, batch)
        deliveries += await self._purge_batches(_PURGE_FINISHED, payloads_before, batch)
        carts = await self._purge_batches(_PURGE_CARTS, carts_before, batch)
        return deliveries, carts

    async def _purge_batches(self, sql: str, before: datetime, batch: int) -> int:
        total = 0
        while True:
            deleted = await self.pool.fetchval(sql, before, batch)
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
