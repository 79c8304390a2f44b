"""The outbox: what one group of a cycle records in one transaction, and keeping stored
deliveries true to what cartd knows of their carts (README "What the receiver sees when a
cart completes", "Personal data")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from cartd.db.agents import SourcePoll
from cartd.db.pool import Database
from cartd.db.queries import load

SQL = load("cartd.db", "sql/outbox.sql")
DELIVERY_COLUMNS = ("id", "type", "agent_id", "integration_id", "platform", "url", "body",
                    "carts", "status", "last_error", "next_attempt_at", "created_at", "hold_for")
RELEASED_WITHDRAWN = "withdrawn: the detected delivery of its carts was not delivered"


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


CartIds = dict[Any, set[str]]  # integration id -> cart ids
Held = dict[Any, dict[str, set[str]]]  # integration id -> detected delivery id -> cart ids
Build = Callable[[CartIds, CartIds, Held], list[NewDelivery]]


def _by_integration(rows: list[Any]) -> CartIds:
    """(integration_id, cart_id) rows as the set of cart ids of each integration."""
    out: CartIds = {}
    for integration_id, cart_id in rows:
        if integration_id in out:
            out[integration_id].add(cart_id)
        else:
            out[integration_id] = {cart_id}
    return out


def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of `width` values as `width` lists (the arrays an unnest takes)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


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
        found = await SQL["holding"].fetch(
            conn, integration_ids=[k[0] for k, _ in shared], cart_ids=[k[1] for k, _ in shared],
            delivery_ids=[d for _, d in shared])
        for key, _ in shared:
            holder[key] = None
        holder.update({(r["i"], r["c"]): r["d"] for r in found})
    return holder


async def _in_flight(conn: asyncpg.Connection, pending: list[str], now: datetime,
                     status: dict[str, str]) -> dict[str, bool]:
    """Mark these pending deliveries stale; which of them an attempt holds now. `status`
    learns the status of those that finished meanwhile."""
    marked = await SQL["mark_stale"].fetch(conn, delivery_ids=pending, now=now)
    in_flight = {r["id"]: r["in_flight"] for r in marked}
    moved = [d for d in pending if d not in in_flight]
    if moved:
        rows = await SQL["statuses"].fetch(conn, delivery_ids=moved)
        status.update({r["id"]: r["status"] for r in rows})
    return in_flight


async def _completions(
    conn: asyncpg.Connection, completed: list[tuple[UUID, str]], now: datetime,
) -> tuple[CartIds, Held]:
    """Mark carts completed; returns those whose `recovered` event may go now and those
    whose event waits for the detected delivery in flight (README "What the receiver sees
    when a cart completes"). A cart whose detected delivery is still pending leaves it: the
    delivery is marked stale, and claims skip it until it is rebuilt without the cart."""
    integration_ids, cart_ids = columns(completed, 2)
    rows = await SQL["completed"].fetch(conn, integration_ids=integration_ids,
                                        cart_ids=cart_ids, now=now)
    if not rows:
        return {}, {}
    status = {r["id"]: r["status"] for r in rows if r["id"] is not None}
    holder = await _holders(conn, rows)
    pending = sorted({d for d in holder.values() if d is not None and status[d] == "pending"})
    in_flight = await _in_flight(conn, pending, now, status) if pending else {}
    recovered: CartIds = {}
    held: Held = {}
    for (integration_id, cart_id), delivery_id in holder.items():
        if delivery_id is None or status[delivery_id] == "delivered":
            recovered.setdefault(integration_id, set()).add(cart_id)
        elif in_flight.get(delivery_id):
            held.setdefault(integration_id, {}).setdefault(delivery_id, set()).add(cart_id)
    return recovered, held


async def _write_polls(conn: asyncpg.Connection, sources: list[SourcePoll], now: datetime) -> None:
    ids, agents, platforms, modes, cursors, resumes, errors = columns(sources, 7)
    await SQL["sources_polled"].execute(
        conn, integration_ids=ids, agent_ids=agents, platforms=platforms, modes=modes,
        cursors=cursors, resumes=resumes, errors=errors, now=now)


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(
        self,
        *,
        now: datetime,
        detected: list[tuple[UUID, str, bytes | None, bytes | None]],
        completed: list[tuple[UUID, str]],
        build: Build,
        sources: list[SourcePoll],
        agents: list[UUID],
        instance: str,
    ) -> list[NewDelivery]:
        """One transaction: remember new carts, mark recoveries, write deliveries, move
        cursors and the integrations' health, give back `agents`' claims.

        `detected` holds (integration id, cart id, email key, customer key) of the carts
        kept. `build(new, recovered, held)` receives the ids of the carts that were really
        new and those whose `recovered` event may go now, by integration id, and those whose
        event must wait for a detected delivery in flight (integration id -> delivery id ->
        cart ids); it returns the deliveries to write, which `record` returns once they are
        committed.
        """
        integration_ids, cart_ids, email_keys, customer_keys = columns(detected, 4)
        async with self.db.pool.acquire() as conn, conn.transaction():
            new = await SQL["remember_carts"].fetch(
                conn, integration_ids=integration_ids, cart_ids=cart_ids,
                email_keys=email_keys, customer_keys=customer_keys, now=now)
            recovered, held = await _completions(conn, completed, now)
            deliveries = build(_by_integration(new), recovered, held)
            if deliveries:
                await conn.copy_records_to_table(
                    "deliveries", schema_name="cartd", columns=DELIVERY_COLUMNS,
                    records=[(d.id, d.type, d.agent_id, d.integration_id, d.platform, d.url,
                              d.body, d.carts, d.status, d.last_error, now, now, d.hold_for)
                             for d in deliveries])
            if sources:
                await _write_polls(conn, sources, now)
            await SQL["release_agents"].execute(conn, agent_ids=agents, instance=instance)
        return deliveries

    async def known_carts(self, carts: list[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
        """Which of these (integration id, cart id) are in the dedupe memory."""
        integration_ids, cart_ids = columns(carts, 2)
        rows = await SQL["known_carts"].fetch(self.db.pool, integration_ids=integration_ids,
                                              cart_ids=cart_ids)
        return {(r["integration_id"], r["cart_id"]) for r in rows}

    async def refresh_stale(self, *, now: datetime, limit: int,
                            rebuild: Callable[[Stale], Refreshed], only: list[str] | None = None,
                            ) -> tuple[list[tuple[Stale, Refreshed]], list[tuple[str, str]]]:
        """One transaction: rebuild up to `limit` stale deliveries that no attempt holds
        (of `only`, when given) and settle the recovered deliveries waiting for them.

        `rebuild(stale)` returns what a delivery becomes; a recovered delivery waiting for
        one goes once that one is delivered, and is withdrawn otherwise. Returns the
        deliveries rebuilt, and (id, new status) of the recovered ones settled."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await SQL["stale"].fetch(conn, now=now, limit=limit, only=only)
            if not rows:
                return [], []
            done = [(stale, rebuild(stale)) for stale in (
                Stale(r["id"], r["type"], r["status"], r["body"], r["carts"],
                      set(r["completed"]), set(r["forgotten"])) for r in rows)]
            ids, bodies, carts, statuses, errors = columns(
                [(s.id, r.body, r.carts, r.status, r.error) for s, r in done], 5)
            await SQL["refreshed"].execute(conn, now=now, ids=ids, bodies=bodies, carts=carts,
                                           statuses=statuses, errors=errors)
            settled = await SQL["released"].fetch(
                conn, now=now, ids=[s.id for s, _ in done],
                delivered=[r.status == "delivered" for _, r in done], reason=RELEASED_WITHDRAWN)
        return done, [(r["id"], r["status"]) for r in settled]

    async def count_stale(self, ids: list[str]) -> int:
        """How many of these deliveries still wait to be rebuilt."""
        return await SQL["count_stale"].fetchval(self.db.pool, ids=ids)

    async def expire(self, *, now: datetime, recorded_before: datetime, reason: str) -> list[str]:
        """Dead-letter the detected deliveries recorded (or last replayed) before
        `recorded_before` that are still pending and not in flight; `last_error` is `reason` and the last attempt's
        error. Returns their ids."""
        rows = await SQL["expire"].fetch(self.db.pool, now=now, recorded_before=recorded_before,
                                         reason=reason)
        return [r["id"] for r in rows]
