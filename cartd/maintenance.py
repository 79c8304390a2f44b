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
        self._failing: dict[str, str] = {}  # job -> the unexpected error its last round hit

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

    async def _round(self, job: str, step: Callable[[], Awaitable[None]]) -> bool:
        """One round of a maintenance job; True when it succeeded. A database error is
        the database's health to report (`job` is its activity). Any other exception is
        logged with its traceback (`maintenance_failed`, once until the job's error
        changes; `maintenance_recovered` when it succeeds again) and the next round runs:
        the daemon exits only on a signal or a startup error (README "Hostile data"), and
        the outbox keeps being settled and the deliveries keep going meanwhile."""
        try:
            await step()
        except DB_ERRORS as exc:
            self.database.failed(job, exc)
            return False
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            if self._failing.get(job) != error:
                self._failing[job] = error
                log.error("maintenance_failed", job=job, error=error, exc_info=True)
            return False
        self.database.succeeded(job)
        if self._failing.pop(job, None) is not None:
            log.info("maintenance_recovered", job=job)
        return True

    async def _health(self, stopping: Stopping) -> None:
        """Watch the database, migrate once it is there, settle the outbox, refresh the
        gauges: each a round of its own, so that one failing leaves the others going."""
        while not stopping.is_set():
            if await self._round("health", self._reach):
                await self._round("outbox", self.settle_outbox)
                await self._round("gauges", self._refresh_counts)
            await stopping.sleep(HEALTH_EVERY)

    async def _reach(self) -> None:
        await self.store.ping()
        await self.database_up()

    async def _refresh_counts(self) -> None:
        """The delivery gauges, and the integration ones when they are due."""
        counts = await self.store.deliveries.counts()
        self.metrics.deliveries_pending.set(counts["pending"])
        self.metrics.deliveries_dead.set(counts["dead"])
        if time.monotonic() >= self._gauges_due:
            await self.refresh_gauges()

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
        """What a cycle's completions made stale, and the health gauges; what fails is
        reported (`_round`) and the health loop settles it next. Never raises."""
        await self._round("outbox", self.settle_outbox)
        await self._round("gauges", self.refresh_gauges)

    async def _retention(self, stopping: Stopping) -> None:
        """Purge finished deliveries older than `retention` and, later, the dedupe memory
        (kept for the longer of `retention` and `carts.max_age`, so a cart still young
        enough to be found again is never sent twice)."""
        delay = HEALTH_EVERY
        while not await stopping.sleep(delay):
            if self.database.reachable and await self._round("retention", self._purge):
                delay = RETENTION_EVERY

    async def _purge(self) -> None:
        config, now = self.config(), self.clock()
        keep = timedelta(seconds=config.retention)
        deliveries, carts = await self.store.maintenance.purge(
            payloads_before=now - keep,
            carts_before=now - max(keep, timedelta(seconds=config.carts.max_age)))
        if deliveries or carts:
            log.info("retention_purged", deliveries=deliveries, sent_carts=carts)

    @staticmethod
    async def _watchdog(stopping: Stopping, interval: float) -> None:
        notify.notify("WATCHDOG=1")
        while not await stopping.sleep(interval):
            notify.notify("WATCHDOG=1")
