"""Test helpers: a controllable clock, condition waits, application rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from cartd.config import Config, build
from cartd.db import Store
from cartd.demo import insert_rows

ROOT = Path(__file__).resolve().parent.parent
SLUG = "ecommerce-abandoned-cart"


class Clock:
    """An injectable clock that tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Wait for a condition with a deadline (sync or async predicate)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def config(**sections: Any) -> Config:
    return build(sections, env={})


@dataclass
class AppData:
    """Rows written into the application tables, to know what to expect."""

    polled_agents: list[uuid.UUID] = field(default_factory=list)
    skipped_agents: list[uuid.UUID] = field(default_factory=list)
    integrations: dict[uuid.UUID, str] = field(default_factory=dict)
    inactive_integrations: list[uuid.UUID] = field(default_factory=list)


async def add_agents(
    store: Store,
    count: int,
    *,
    platforms: tuple[str, ...] = ("shopify", "woocommerce", "custom"),
    settings: dict[str, Any] | None = None,
    integration_config: Any = None,
    skipped: int = 0,
) -> AppData:
    """`count` polled agents with one integration each (platforms in turn), plus
    `skipped` agents that must be ignored (another template, or inactive)."""
    data = AppData()
    companies, agents, integrations = [], [], []
    for n in range(count + skipped):
        company, agent = uuid.uuid4(), uuid.uuid4()
        companies.append((company, f"Company {n}", f"https://c{n}.example.com",
                          f"team@c{n}.example.com", "+1-555-0100"))
        polled = n < count
        template = SLUG if polled or n % 2 else "customer-support"
        active = polled or not n % 2
        agents.append((agent, company, f"Agent {n}", template, active, settings or {}))
        (data.polled_agents if polled else data.skipped_agents).append(agent)
        integration = uuid.uuid4()
        platform = platforms[n % len(platforms)]
        config = {"mode": "mock"} if integration_config is None else integration_config
        integrations.append((integration, agent, platform, True, config))
        if polled:
            data.integrations[integration] = platform
            off = uuid.uuid4()
            integrations.append((off, agent, platform, False, {"mode": "mock"}))
            data.inactive_integrations.append(off)
    await insert_rows(store, companies, agents, integrations)
    return data


class Scripted:
    """A receiver on 127.0.0.1 answering from a script of (status, headers, delay)."""

    def __init__(self, script=None, default=(200, {}, 0.0)) -> None:
        self.script = list(script or [])
        self.default = default
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.active = 0
        self.peak = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status, headers, delay = self.script.pop(0) if self.script else self.default
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(delay)
        finally:
            self.active -= 1
        return web.Response(status=status, headers=headers, text="{}")


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` listening on a free port of 127.0.0.1 for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def scripted_receiver() -> AsyncIterator[Scripted]:
    """A Scripted receiver listening on 127.0.0.1 for the duration of the block."""
    scripted = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    async with serving(app) as root:
        scripted.url = f"{root}/webhook"
        yield scripted
