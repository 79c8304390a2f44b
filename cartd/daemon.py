"""The daemon's lifecycle: one TaskGroup for the poll loop, the delivery workers, the
control and metrics servers; signals, reloads, sd_notify; a graceful stop."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from cartd import __version__, control, embedded, logs, notify, outbox, preview, sources
from cartd.config import Config, ConfigError, load
from cartd.cycle import CycleSummary
from cartd.db import DB_ERRORS, Claimed, DatabaseHealth, Store
from cartd.delivery import Attempt, Deliverer
from cartd.metrics import Metrics
from cartd.polling import Poller, PollLoop
from cartd.services import Stopping
from cartd.sources import PLATFORMS

log = structlog.get_logger("cartd.daemon")

HEALTH_EVERY = 2.0
STATUS_COUNTS = ("pending", "dead", "delivered")  # the delivery counts /status shows
GAUGES_EVERY = 10.0  # seconds between refreshes of the integration health gauges
RETENTION_EVERY = 300.0  # seconds between retention sweeps
RUN_ONCE_WAIT = 30.0
# Changing these needs a restart; a reload keeps the running value.
RESTART_KEYS = (("control", "socket"), ("control", "socket_mode"), ("metrics", "listen"),
                ("state_dir",), ("database", "dsn"))


def tune_gc() -> None:
    """Garbage collector settings for the daemon's process, once it has started up.

    A cycle makes hundreds of thousands of short-lived dicts and tuples. With CPython's
    default young-generation threshold (700) the collector ran about 2,500 times in a
    10,000-agent cycle, walking the carts the cycle holds each time: 1.1 s of a 13.7 s
    cycle. At 50,000 it runs a few times. What startup made (modules, config, mock pools)
    lives as long as the process, so it is frozen out of every collection.
    """
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


def _get(config: Config, key: tuple[str, ...]) -> Any:
    value: Any = config
    for part in key:
        value = getattr(value, part)
    return value


def _pool_settings(config: Config) -> tuple[int, int, str]:
    database = config.database
    return database.min_connections, database.max_connections, database.pooler


def _keep(new: Config, old: Config, key: tuple[str, ...]) -> Config:
    if len(key) == 1:
        return new.model_copy(update={key[0]: getattr(old, key[0])})
    section = getattr(new, key[0]).model_copy(update={key[1]: _get(old, key)})
    return new.model_copy(update={key[0]: section})


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        *,
        config_missing_ok: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_cycle: Callable[[CycleSummary], None] = lambda _: None,
        prepare: Callable[[Store], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self.config_path = config_path
        self.config_missing_ok = config_missing_ok
        self.clock = clock
        self.on_cycle = on_cycle
        self.prepare = prepare
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.started_at = clock()
        self.config_loaded_at = self.started_at
        self.config_error: str | None = None
        self.database = DatabaseHealth(on_reachable=self.wake_deliveries)
        self.migrated = not config.database.migrate
        self.metrics = Metrics()
        self.stopping = Stopping()
        self._background: set[asyncio.Task[Any]] = set()
        self._gauges_due = 0.0  # monotonic time of the next integration gauges refresh
        self.store: Store | None = None
        self.polling: PollLoop | None = None
        self.deliverer: Deliverer | None = None
        self._embedded: Any = None
        self._runners: list[web.AppRunner] = []
        self._socket = Path(config.control.socket)

    def config(self) -> Config:
        return self._config

    # --- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`)."""
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                    signal.SIGHUP: self._reload_in_background}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            await self._open_store()
            self.deliverer = Deliverer(self.store, self.config, instance_id=self.instance_id,
                                       clock=self.clock, on_outcome=self._count_attempt,
                                       on_breakers=self.metrics.breaker_open.set)
            poller = Poller(self.store, self.config, instance_id=self.instance_id,
                            clock=self.clock, on_enqueued=lambda _: self.wake_deliveries())
            self.polling = PollLoop(
                poller, database=self.database, metrics=self.metrics,
                enabled=self._config.polling.enabled, ready=self._database_up,
                settle=self._after_cycle, on_cycle=self.on_cycle,
                wake_deliveries=self.wake_deliveries)
            await self._start_servers()
            log.info("started", instance_id=self.instance_id, version=__version__,
                     interval_seconds=self._config.polling.interval,
                     polling=self.polling.enabled, control_socket=str(self._socket))
            notify.notify("READY=1", "STATUS=started, waiting for the first cycle")
            if self.stopping.is_set():
                self.deliverer.stop()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.polling.run(self.stopping))
                tasks.create_task(self.deliverer.run())
                tasks.create_task(self._health_loop())
                tasks.create_task(self._retention_loop())
                interval = notify.watchdog_interval()
                if interval:
                    tasks.create_task(self._watchdog(interval))
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            await self._close()

    def _reload_in_background(self) -> None:
        task = asyncio.create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping")
            notify.notify("STOPPING=1")
            self.stopping.set(self._config.shutdown_timeout)
            if self.deliverer is not None:
                self.deliverer.stop()

    async def _open_store(self) -> None:
        config = self._config
        dsn = config.database.dsn
        if not dsn:
            dsn, self._embedded = await asyncio.to_thread(embedded.start, config.state_dir)
        sizes = (config.database.min_connections, config.database.max_connections)
        pooler = config.database.pooler
        try:
            self.store = await Store.connect(dsn, *sizes, pooler=pooler)
        except DB_ERRORS as exc:
            self.database.failed("health", exc)
            self.store = await Store.connect(dsn, *sizes, lazy=True, pooler=pooler)
            return
        try:
            await self._database_up()
        except DB_ERRORS as exc:  # the health loop tries again
            self.database.failed("health", exc)
        else:
            self.database.succeeded("health")

    async def _start_servers(self) -> None:
        config = self._config
        self._runners.append(await control.start(self, self._socket, config.control.socket_mode))
        if config.metrics.listen:
            host, _, port = config.metrics.listen.rpartition(":")
            runner = web.AppRunner(self.metrics.app(), access_log=None, handle_signals=False)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()

    async def _close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        if self._runners:
            self._socket.unlink(missing_ok=True)
        await sources.close()
        if self.store is not None:
            try:
                await self.store.release(self.instance_id)
            except DB_ERRORS as exc:
                log.warning("claims_not_released", error=str(exc))
            await self.store.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.cleanup)
        log.info("stopped")

    # --- the database -------------------------------------------------------

    async def _database_up(self) -> None:
        """Migrate and prepare, once, when the database answers."""
        if not self.migrated:
            applied = await self.store.maintenance.migrate()
            self.migrated = True
            if applied:
                log.info("migrations_applied", migrations=applied)
        if self.prepare is not None:
            await self.prepare(self.store)
            self.prepare = None


    async def _health_loop(self) -> None:
        """Watch the database, migrate once it is there, refresh the delivery gauges."""
        while not self.stopping.is_set():
            try:
                await self.store.ping()
                await self._database_up()
                await self.settle_outbox()
                counts = await self.store.deliveries.counts()
                self.metrics.deliveries_pending.set(counts["pending"])
                self.metrics.deliveries_dead.set(counts["dead"])
                if time.monotonic() >= self._gauges_due:
                    await self._refresh_health_gauges()
            except DB_ERRORS as exc:
                self.database.failed("health", exc)
            else:
                self.database.succeeded("health")
            await self.stopping.sleep(HEALTH_EVERY)

    async def settle_outbox(self) -> None:
        """Expire old detected deliveries, rebuild the stale ones no attempt holds (README
        "What the receiver sees when a cart completes"), and count what left."""
        now = self.clock()
        expired = await outbox.expire(self.store, now, self._config.webhook.max_delivery_age)
        self.metrics.deliveries_by_outcome["dead"].inc(len(expired))
        result = await outbox.refresh(self.store, now)
        self.metrics.deliveries_by_outcome["withdrawn"].inc(len(result.withdrawn))
        if result.counts["rebuilt"] or result.counts["released"]:
            self.wake_deliveries()

    async def _refresh_health_gauges(self) -> None:
        """The integration health gauges, from the database: several instances agree."""
        self._gauges_due = time.monotonic() + GAUGES_EVERY
        health = await self.store.agents.health(
            slug=self._config.polling.template_slug, now=self.clock(), platforms=PLATFORMS)
        for platform in PLATFORMS:
            failing, age = health.get(platform, (0, 0.0))
            self.metrics.integrations_failing.labels(platform).set(failing)
            self.metrics.integration_poll_age.labels(platform).set(age)

    async def preview(self, agent_id: Any, integration_id: Any, limit: int) -> dict[str, Any]:
        """What a cycle would deliver now, recorded nowhere (README "Previewing a store")."""
        return await preview.preview(self.store, self._config, self.clock(), agent_id=agent_id,
                                     integration_id=integration_id, limit=limit)

    async def forget(self, **person: Any) -> dict[str, int]:
        """Erase one person from everything cartd keeps (README "Personal data")."""
        counts = await outbox.forget(self.store, self.clock(), **person)
        self.metrics.deliveries_by_outcome["withdrawn"].inc(counts["deliveries_withdrawn"])
        self.wake_deliveries()
        return counts

    async def _retention_loop(self) -> None:
        """Purge finished deliveries older than `retention` and, later, the dedupe memory
        (kept for the longer of `retention` and `carts.max_age`, so a cart still young
        enough to be found again is never sent twice)."""
        delay = HEALTH_EVERY
        while not await self.stopping.sleep(delay):
            if not self.database.reachable:
                continue
            config, now = self._config, self.clock()
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

    # --- polling ------------------------------------------------------------

    async def _after_cycle(self) -> None:
        """What a cycle's completions made stale, and the health gauges."""
        try:
            await self.settle_outbox()
            await self._refresh_health_gauges()
        except DB_ERRORS as exc:  # the health loop settles it next
            self.database.failed("health", exc)

    @property
    def cycle_error(self) -> str | None:
        return self.polling.error if self.polling else None

    async def run_once(self) -> dict[str, Any] | None:
        """Poll every matching agent now and wait for the first attempt of its deliveries."""
        assert self.polling is not None
        return await self.polling.run_once()

    def start_polling(self, interval: float | None) -> None:
        if interval is not None:
            polling = self._config.polling.model_copy(update={"interval": interval})
            self._config = self._config.model_copy(update={"polling": polling})
        assert self.polling is not None
        self.polling.start()

    async def stop_polling(self) -> None:
        assert self.polling is not None
        await self.polling.stop()

    def wake_deliveries(self) -> None:
        if self.deliverer is not None:
            self.deliverer.wake()

    async def _watchdog(self, interval: float) -> None:
        notify.notify("WATCHDOG=1")
        while not await self.stopping.sleep(interval):
            notify.notify("WATCHDOG=1")

    # --- metrics ------------------------------------------------------------

    def _count_attempt(self, row: Claimed, attempt: Attempt, status: str) -> None:
        self.metrics.count_attempt(attempt, status)

    # --- reload and status --------------------------------------------------

    async def reload(self) -> str | None:
        """Apply the config file as a whole; on error keep the old one. Returns the error."""
        notify.reloading()
        try:
            new = await asyncio.to_thread(load, self.config_path or Path("cartd.yaml"),
                                          missing_ok=self.config_missing_ok)
        except ConfigError as exc:
            self.config_error = str(exc)
            self.metrics.config_reloads.labels("error").inc()
            log.error("config_reload_failed", error=self.config_error)
            notify.notify("READY=1", f"STATUS=config reload failed: {self.config_error}")
            return self.config_error
        old = self._config
        for key in RESTART_KEYS:
            if _get(new, key) != _get(old, key):
                log.warning("config_needs_restart", key=".".join(key))
                new = _keep(new, old, key)
        if _pool_settings(new) != _pool_settings(old):
            await self.store.reconnect(*_pool_settings(new))
        logs.configure(new.logging.level, new.logging.format)
        self._config = new
        self.config_error = None
        self.config_loaded_at = self.clock()
        self.metrics.config_reloads.labels("ok").inc()
        self.metrics.config_last_success.set(time.time())
        log.info("config_reloaded", interval_seconds=new.polling.interval)
        if self.polling is not None:
            self.polling.wake()
        self.wake_deliveries()
        notify.notify("READY=1", "STATUS=config reloaded")
        return None

    async def status(self) -> dict[str, Any]:
        deliveries = None
        if self.database.reachable:
            try:
                deliveries = await self.store.deliveries.counts()
            except DB_ERRORS as exc:
                self.database.failed("status", exc)
            else:
                self.database.succeeded("status")
        return {
            "state": "running" if self.polling and self.polling.enabled else "stopped",
            "interval_seconds": self._config.polling.interval,
            "instance_id": self.instance_id,
            "version": __version__,
            "started_at": self.started_at,
            "cycles": self.polling.cycles if self.polling else 0,
            "last_cycle": self.polling.last_cycle if self.polling else None,
            "deliveries": deliveries and {k: deliveries[k] for k in STATUS_COUNTS},
            "database": self.database.text(),
            "config_path": str(self.config_path) if self.config_path else None,
            "config_loaded_at": self.config_loaded_at,
            "config_error": self.config_error,
        }
