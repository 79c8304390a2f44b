"""Deliveries: claiming due ones for an attempt, writing what the attempts did, and what
an operator lists and replays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cartd.db.pool import Database
from cartd.db.queries import load

SQL = load("cartd.db", "sql/deliveries.sql")
STATUSES = ("pending", "delivered", "dead", "withdrawn")


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


class Deliveries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, *, instance: str, now: datetime, lease: timedelta, limit: int,
        default_url: str, exclude: list[str] | tuple[str, ...] = (),
        max_age: timedelta | None = None,
    ) -> list[Claimed]:
        """Claim due deliveries with a lease, skipping those whose URL (`default_url` when
        the row has none) is in `exclude`: destinations with no free slot or an open
        breaker; and detected deliveries recorded (or last replayed) longer than `max_age`
        ago (they expire)."""
        fresh_after = now - max_age if max_age is not None else datetime.min.replace(tzinfo=UTC)
        values: dict[str, Any] = {"instance": instance, "now": now, "lease_until": now + lease,
                                  "limit": limit, "exclude": list(exclude),
                                  "fresh_after": fresh_after}
        if default_url in exclude:
            rows = await SQL["claim_overrides"].fetch(self.db.pool, **values)
        else:
            rows = await SQL["claim_any"].fetch(self.db.pool, **values, default_url=default_url)
        return [Claimed(r["id"], r["url"], r["body"], r["attempts"], r["platform"]) for r in rows]

    async def unclaim(self, instance: str, ids: list[str]) -> None:
        """Give back claimed deliveries untouched (not attempted, not counted)."""
        await SQL["unclaim"].execute(self.db.pool, ids=ids, instance=instance)

    async def record_outcomes(self, outcomes: list[Outcome], instance: str) -> set[str]:
        """Write a batch of attempt outcomes in one statement; only rows this instance still
        holds change (a stale instance whose lease ran out and was taken over changes
        nothing). Returns the ids written."""
        rows = await SQL["record_outcomes"].fetch(
            self.db.pool, ids=[o.id for o in outcomes], statuses=[o.status for o in outcomes],
            http_statuses=[o.http_status for o in outcomes], errors=[o.error for o in outcomes],
            next_attempts=[o.next_attempt_at for o in outcomes], ats=[o.at for o in outcomes],
            instance=instance)
        return {r["id"] for r in rows}

    async def release(self, instance: str) -> None:
        """Give back the pending deliveries `instance` holds (at shutdown)."""
        await SQL["release"].execute(self.db.pool, instance=instance)

    async def attempt_states(self, ids: list[str]) -> dict[str, int]:
        """Of these deliveries: how many still wait for a first attempt, were delivered,
        or failed (dead, or pending after a failed attempt)."""
        return dict(await SQL["attempt_states"].fetchrow(self.db.pool, ids=ids))

    async def counts(self) -> dict[str, int]:
        """Deliveries by status, every status named."""
        rows = await SQL["counts"].fetch(self.db.pool)
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def recent(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest deliveries (of one status), newest first."""
        rows = await SQL["recent"].fetch(self.db.pool, status=status, limit=limit)
        return [dict(r) for r in rows]

    async def replay(self, delivery_id: str, now: datetime) -> str | None:
        """Queue one delivery again, whatever its status but withdrawn, with a fresh
        `webhook.max_delivery_age` and no attempt counted; its id (webhook-id) stays.
        Returns its status before, or None when there is no such delivery."""
        row = await SQL["replay"].fetchrow(self.db.pool, id=delivery_id, now=now)
        if row is not None:
            return row["status"]
        return await SQL["status"].fetchval(self.db.pool, id=delivery_id)

    async def replay_dead(self, since: datetime | None, now: datetime) -> int:
        """Queue again every dead delivery created at or after `since`; returns the count."""
        status = await SQL["replay_dead"].execute(self.db.pool, since=since, now=now)
        return int(status.split()[-1])
