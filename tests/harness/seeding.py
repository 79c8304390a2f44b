"""Rows a test writes before cartd reads them: companies, agents and integrations in the
application tables, and deliveries straight into the outbox."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cartd.db import NewDelivery, Store
from cartd.demo import insert_rows
from cartd.payload import dumps, new_webhook_id
from harness.common import SLUG

PLATFORMS = ("shopify", "woocommerce", "custom")
MOCK = {"mode": "mock"}


@dataclass
class AppData:
    """Rows written into the application tables, to know what to expect."""

    polled_agents: list[uuid.UUID] = field(default_factory=list)
    skipped_agents: list[uuid.UUID] = field(default_factory=list)
    integrations: dict[uuid.UUID, str] = field(default_factory=dict)
    inactive_integrations: list[uuid.UUID] = field(default_factory=list)


@dataclass
class _Rows:
    companies: list[tuple] = field(default_factory=list)
    agents: list[tuple] = field(default_factory=list)
    integrations: list[tuple] = field(default_factory=list)


async def add_agents(
    store: Store,
    count: int,
    *,
    platforms: tuple[str, ...] = PLATFORMS,
    settings: dict[str, Any] | None = None,
    integration_config: Any = None,
    skipped: int = 0,
    every_platform: bool = False,
    switched_off: bool = True,
) -> AppData:
    """`count` polled agents with one integration each (platforms in turn; with
    `every_platform`, one on each platform), each also with a switched-off integration
    unless `switched_off` is False; plus `skipped` agents that must be ignored (another
    template, or inactive)."""
    data, rows = AppData(), _Rows()
    for n in range(count + skipped):
        company, agent = uuid.uuid4(), uuid.uuid4()
        rows.companies.append((company, f"Company {n}", f"https://c{n}.example.com",
                               f"team@c{n}.example.com", "+1-555-0100"))
        polled = n < count
        template = SLUG if polled or n % 2 else "customer-support"
        active = polled or not n % 2
        rows.agents.append((agent, company, f"Agent {n}", template, active, settings or {}))
        (data.polled_agents if polled else data.skipped_agents).append(agent)
        chosen = platforms if every_platform and polled else (platforms[n % len(platforms)],)
        for platform in chosen:
            integration = uuid.uuid4()
            config = MOCK if integration_config is None else integration_config
            rows.integrations.append((integration, agent, platform, True, config))
            if polled:
                data.integrations[integration] = platform
        if polled and switched_off:
            off = uuid.uuid4()
            rows.integrations.append((off, agent, chosen[0], False, MOCK))
            data.inactive_integrations.append(off)
    await insert_rows(store, rows.companies, rows.agents, rows.integrations)
    return data


async def add_agent(store: Store, settings: Any, platform: str, integration_config: Any
                    ) -> uuid.UUID:
    """One polled agent with one integration, its rows exactly as given (hostile ones
    too: settings that are not an object, a platform cartd does not know); the
    integration's id."""
    company, agent, integration = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insert_rows(store, [(company, "Odd Co", None, None, None)],
                          [(agent, company, "Odd agent", SLUG, True, settings)],
                          [(integration, agent, platform, True, integration_config)])
    return integration


async def live_integration(store: Store, platform: str, settings: dict[str, Any]) -> uuid.UUID:
    """A polled agent whose one integration has these settings; the integration's id."""
    data = await add_agents(store, 1, platforms=(platform,), integration_config=settings)
    return next(iter(data.integrations))


async def enqueue(store: Store, at: datetime, n: int = 1, url: str | None = None) -> list[str]:
    """`n` pending deliveries to `url` (None: webhook.url), due at `at`; their ids."""
    deliveries = [
        NewDelivery(id=new_webhook_id(), type="abandoned_cart.detected", agent_id=uuid.uuid4(),
                    integration_id=uuid.uuid4(), platform="custom", url=url,
                    body=dumps({"type": "abandoned_cart.detected", "n": i}), carts=1)
        for i in range(n)
    ]
    await store.outbox.record(now=at, detected=[], completed=[], build=lambda *_: deliveries,
                       sources=[], agents=[], instance="t")
    return [d.id for d in deliveries]
