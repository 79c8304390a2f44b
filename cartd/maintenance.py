"""The maintenance service: the database's health (a ping, migrations once it answers, the
delivery and integration gauges), settling the outbox (expiry, stale deliveries rebuilt),
retention, and systemd's watchdog (README "The database", "Running as a systemd
service")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from cartd import notify, outbox
from cartd.config import Config
from cartd.db import DB_ERRORS, DatabaseHealth, Store
from cartd.metrics import Metrics
from cartd.services import Stopping
from cartd.sources import PLATFORMS

log = structlog.get_logger("cartd.maintenance")

HEALTH_EVERY = 2.0  # seconds between health checks (and before the first retention sweep)
GAUGES_EVERY = 10.0  # seconds between refreshes of the integration health gauges
RETENTION_EVERY = 300.0  # seconds between retention sweeps


class Maintenance:
    """`migrate`: apply cartd's migrations once the database answers; `prepare` runs once
    after them (the demo seeds its rows there)."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        clock: Callable[[], datetime],
        database: DatabaseHealth,
        metrics: Metrics,
        migrate: bool,
        prepare: Callable[[Store], Awaitable[None]] | None = None,
        wake_deliveries: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.database = database
        self.metrics = metrics
        self.migrated = not migrate
        self.prepare = prepare
        self.wake_deliveries = wake_deliveries
        self._gauges_due = 0.0  # monotonic time of the next integration gauges refresh

    async def run(self, stopping: Stopping) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._health(stopping))
            tasks.create_task(self._retention(stopping))
            interval = notify.watchdog_interval()
            if interval:
                tasks.create_task(self._watchdog(stopping, interval))

    async def database_up(self) -> None:
        """Migrate and prepare, once, when the database answers."""
        if not self.migrated:
            applied = await self.store.maintenance.migrate()
            self.migrated = True
            if applied:
                log.info("migrations_applied", migrations=applied)
        if self.prepare is not None:
            await self.prepare(self.store)
            self.prepare = None

    async def open(self) -> None:
        """The first look at the database, at start; the health loop tries again."""
        try:
            await self.database_up()
        except DB_ERRORS as exc:
            self.database.failed("health", exc)
        else:
            self.database.succeeded("health")

    async def _health(self, stopping: Stopping) -> None:
        """Watch the database, migrate once it is there, refresh the delivery gauges."""
        while not stopping.is_set():
            try:
                await self.store.ping()
                await self.database_up()
                await self.settle_outbox()
                counts = await self.store.deliveries.counts()
                self.metrics.deliveries_pending.set(counts["pending"])
                self.metrics.deliveries_dead.set(counts["dead"])
                if time.monotonic() >= self._gauges_due:
                    await self.refresh_gauges()
            except DB_ERRORS as exc:
                self.database.failed("health", exc)
            else:
                self.database.succeeded("health")
            await stopping.sleep(HEALTH_EVERY)

    async def settle_outbox(self) -> None:
        """Expire old detected deliveries, rebuild the stale ones no attempt holds (README
        "What the receiver sees when a cart completes"), and count what left."""
        now = self.clock()
        expired = await outbox.expire(self.store, now, self.config().webhook.max_delivery_age)
        self.metrics.deliveries_by_outcome["dead"].inc(len(expired))
        result = await outbox.refresh(self.store, now)
        self.metrics.deliveries_by_outcome["withdrawn"].inc(len(result.withdrawn))
        if result.counts["rebuilt"] or result.counts["released"]:
            self.wake_deliveries()

    async def refresh_gauges(self) -> None:
        """The integration health gauges, from the database: several instances agree."""
        self._gauges_due = time.monotonic() + GAUGES_EVERY
        health = await self.store.agents.health(
            slug=self.config().polling.template_slug, now=self.clock(), platforms=PLATFORMS)
        for platform in PLATFORMS:
            failing, age = health.get(platform, (0, 0.0))
            self.metrics.integrations_failing.labels(platform).set(failing)
            self.metrics.integration_poll_age.labels(platform).set(age)

    async def after_cycle(self) -> None:
        """What a cycle's completions made stale, and the health gauges."""
        try:
            await self.settle_outbox()
            await self.refresh_gauges()
        except DB_ERRORS as exc:  # the health loop settles it next
            self.database.failed("health", exc)

    async def _retention(self, stopping: Stopping) -> None:
        """Purge finished deliveries older than `retention` and, later, the dedupe memory
        (kept for the longer of `retention` and `carts.max_age`, so a cart still young
        enough to be found again is never sent twice)."""
        delay = HEALTH_EVERY
        while not await stopping.sleep(delay):
            if not self.database.reachable:
                continue
            config, now = self.config(), self.clock()
            keep = timedelta(seconds=config.retention)
            try:
                deliveries, carts = await self.store.maintenance.purge(
                    payloads_before=now - keep,
                    carts_before=now - max(keep, timedelta(seconds=config.carts.max_age)))
            except DB_ERRORS as exc:
                self.database.failed("retention", exc)
                continue
            self.database.succeeded("retention")
            delay = RETENTION_EVERY
            if deliveries or carts:
                log.info("retention_purged", deliveries=deliveries, sent_carts=carts)

    @staticmethod
    async def _watchdog(stopping: Stopping, interval: float) -> None:
        notify.notify("WATCHDOG=1")
        while not await stopping.sleep(interval):
            notify.notify("WATCHDOG=1")
