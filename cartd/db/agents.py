"""Agents and shares: claiming due agents, the instances' poll shares, and what each
integration's last poll left (its cursor, where a stopped read goes on, its health)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from cartd.db.pool import Database
from cartd.db.queries import load

SQL = load("cartd.db", "sql/agents.sql")


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
    resume: dict[str, Any] | None = None


class SourcePoll(NamedTuple):
    """One integration's poll in a cycle: its next cursor, or the error it failed with."""

    integration_id: UUID
    agent_id: UUID
    platform: str
    mode: str | None
    cursor: datetime | None = None
    resume: dict[str, Any] | None = None  # where a read that stopped goes on
    error: str | None = None


def _agent_work(r: Any) -> AgentWork:
    return AgentWork(
        id=r["id"], name=r["name"], template_slug=r["template_slug"], settings=r["settings"],
        company={"id": str(r["company_id"]), "name": r["company_name"],
                 "website": r["website"], "email": r["email"], "phone": r["phone"]},
        integrations=r["integrations"],
    )


class Agents:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def register(self, slug: str) -> None:
        """Give every matching agent a poll row (once per cycle, before claiming)."""
        await SQL["register"].execute(self.db.pool, slug=slug)

    async def claim(
        self, *, slug: str, instance: str, now: datetime, interval: timedelta,
        lease: timedelta, limit: int, force: bool = False,
    ) -> list[AgentWork]:
        """Claim up to `limit` due agents with a lease, joined with company and integrations."""
        slack = min(interval * 0.1, timedelta(seconds=1))
        rows = await SQL["claim"].fetch(
            self.db.pool, slug=slug, instance=instance, now=now, lease_until=now + lease,
            next_poll_at=now + interval - slack, force=force, limit=limit)
        return [_agent_work(r) for r in rows]

    async def renew(self, instance: str, lease_until: datetime) -> None:
        """Extend the lease of the agents `instance` holds (claimed, not yet released)."""
        await SQL["renew"].execute(self.db.pool, instance=instance, lease_until=lease_until)

    async def release(self, instance: str) -> None:
        """Give back every agent `instance` holds (at shutdown)."""
        await SQL["release"].execute(self.db.pool, instance=instance)

    async def preview(self, *, slug: str, agent_id: UUID | None,
                      integration_id: UUID | None) -> list[AgentWork]:
        """The agents a preview polls, read only."""
        rows = await SQL["preview"].fetch(self.db.pool, slug=slug, agent_id=agent_id,
                                          integration_id=integration_id)
        return [_agent_work(r) for r in rows]

    async def poll_share(self, *, slug: str, instance: str, now: datetime,
                         live_until: datetime) -> int:
        """Mark this instance as polling until `live_until`; returns its fair share of the
        matching agents for one interval: all of them over the instances polling now."""
        return await SQL["poll_share"].fetchval(self.db.pool, slug=slug, instance=instance,
                                                now=now, live_until=live_until)

    async def leave(self, instance: str) -> None:
        """Stop counting this instance in the poll shares (polling stopped, or exit)."""
        await SQL["leave"].execute(self.db.pool, instance=instance)

    async def source_states(self, integration_ids: list[UUID]) -> dict[UUID, SourceState]:
        rows = await SQL["source_states"].fetch(self.db.pool, integration_ids=integration_ids)
        return {r["integration_id"]: SourceState(r["cursor"], r["resume"])
                for r in rows}

    async def integrations(self, *, slug: str, failing: bool, limit: int) -> list[dict[str, Any]]:
        """Active integrations of matching agents, failing ones first, with their health."""
        rows = await SQL["integrations"].fetch(self.db.pool, slug=slug, failing=failing,
                                               limit=limit)
        return [dict(r) for r in rows]

    async def health(self, *, slug: str, now: datetime,
                     platforms: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        """Per platform: how many active integrations failed their last poll, and the
        longest time in seconds since any of them was last polled successfully."""
        rows = await SQL["health"].fetch(self.db.pool, slug=slug, now=now,
                                         platforms=list(platforms))
        return {r["platform"]: (r["failing"], float(r["age"] or 0)) for r in rows}
