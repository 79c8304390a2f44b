"""The daemon (README "Running as a systemd service", docs/architecture.md): its services
(the poll loop, the deliverer, maintenance) run in one TaskGroup between the database and
the control and metrics servers, which an AsyncExitStack tears down in reverse; one stop
signal with one deadline; reloads; the control API's operations."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

from cartd import __version__, control, embedded, logs, notify, outbox, preview, sources
from cartd.config import Config, ConfigError, load, pool_settings, reloaded
from cartd.control import CycleFailed
from cartd.cycle import CycleSummary
from cartd.db import DB_ERRORS, DatabaseHealth, Store
from cartd.delivery import Deliverer
from cartd.maintenance import Maintenance
from cartd.metrics import Metrics
from cartd.polling import Poller, PollLoop
from cartd.services import Service, Stopping

log = structlog.get_logger("cartd.daemon")

STATUS_COUNTS = ("pending", "dead", "delivered")  # the delivery counts /status shows


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
        self.metrics = Metrics()
        self.database = DatabaseHealth(on_reachable=self.wake_deliveries)
        self.stopping = Stopping()
        self.store: Store | None = None
        self.polling: PollLoop | None = None
        self.deliverer: Deliverer | None = None
        self.maintenance: Maintenance | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def config(self) -> Config:
        return self._config

    # --- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`). What is set up is torn down in reverse,
        each step whatever the ones before it raised: the claims are given back even when
        closing a server fails."""
        config = self._config
        with self._signals():
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(log.info, "stopped")
                dsn = await stack.enter_async_context(
                    embedded.database(config.database.dsn, config.state_dir))
                self.store, connected = await self._connect(dsn)
                stack.push_async_callback(self.store.close)
                stack.push_async_callback(self._release, self.store)
                services = self._services(self.store)
                if connected and self.maintenance is not None:
                    await self.maintenance.open()
                stack.push_async_callback(sources.close)
                socket_path = Path(config.control.socket)
                await stack.enter_async_context(
                    control.serving(self, socket_path, config.control.socket_mode))
                if config.metrics.listen:
                    await self._serve_metrics(stack, config.metrics.listen)
                log.info("started", instance_id=self.instance_id, version=__version__,
                         interval_seconds=config.polling.interval,
                         polling=config.polling.enabled, control_socket=str(socket_path))
                notify.notify("READY=1", "STATUS=started, waiting for the first cycle")
                await self._serve(services)

    async def _serve_metrics(self, stack: contextlib.AsyncExitStack, listen: str) -> None:
        try:
            await stack.enter_async_context(self.metrics.serving(listen))
        except OSError as exc:  # a host that does not resolve, a port in use
            raise control.CannotListen.of("metrics.listen", listen, exc) from None

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                    signal.SIGHUP: self._reload_in_background}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            yield
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)

    async def _connect(self, dsn: str) -> tuple[Store, bool]:
        """The pool, and whether it connected; a lazy one when the database cannot be
        reached now (the health loop reports it and tries again)."""
        min_size, max_size, pooler = pool_settings(self._config)
        try:
            return await Store.connect(dsn, min_size, max_size, pooler=pooler), True
        except DB_ERRORS as exc:
            self.database.failed("health", exc)
            return await Store.connect(dsn, min_size, max_size, lazy=True, pooler=pooler), False

    async def _release(self, store: Store) -> None:
        try:
            await store.release(self.instance_id)
        except DB_ERRORS as exc:
            log.warning("claims_not_released", error=str(exc))

    def _services(self, store: Store) -> list[Service]:
        """The poll loop, the deliverer and maintenance, wired to each other."""
        self.deliverer = Deliverer(
            store, self.config, instance_id=self.instance_id, clock=self.clock,
            on_outcome=lambda _, attempt, status: self.metrics.count_attempt(attempt, status),
            on_breakers=self.metrics.breaker_open.set)
        self.maintenance = Maintenance(
            store, self.config, clock=self.clock, database=self.database, metrics=self.metrics,
            migrate=self._config.database.migrate, prepare=self.prepare,
            wake_deliveries=self.wake_deliveries)
        poller = Poller(store, self.config, instance_id=self.instance_id, clock=self.clock,
                        on_enqueued=lambda _: self.wake_deliveries())
        self.polling = PollLoop(
            poller, database=self.database, metrics=self.metrics,
            enabled=self._config.polling.enabled, ready=self.maintenance.database_up,
            settle=self.maintenance.after_cycle, on_cycle=self.on_cycle,
            wake_deliveries=self.wake_deliveries)
        return [self.polling, self.deliverer, self.maintenance]

    async def _serve(self, services: list[Service]) -> None:
        """The services in one TaskGroup, until the stop; those still running at its
        deadline are cancelled (what they held is given back at teardown). A service that
        fails stops the daemon."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(s.run(self.stopping), name=type(s).__name__)
                     for s in services]
            group.create_task(self._cancel_at_deadline(tasks))

    async def _cancel_at_deadline(self, tasks: list[asyncio.Task[None]]) -> None:
        await self.stopping.wait()
        _, late = await asyncio.wait(tasks, timeout=self.stopping.remaining())
        for task in late:
            log.warning("shutdown_timeout_passed", service=task.get_name())
            task.cancel()

    def stop(self) -> None:
        """Begin the stop: every service stops taking work; `shutdown_timeout` bounds it."""
        if not self.stopping.is_set():
            log.info("stopping")
            notify.notify("STOPPING=1")
            self.stopping.set(self._config.shutdown_timeout)

    def wake_deliveries(self) -> None:
        if self.deliverer is not None:
            self.deliverer.wake()

    # --- reload and status --------------------------------------------------

    def _reload_in_background(self) -> None:
        task = asyncio.create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> str | None:
        """Apply the config file as a whole; on error keep the old one. Returns the error.
        Whatever fails (a bad file, or anything else on the way: a SIGHUP's reload runs
        in a task of its own, where nobody else would see it) is logged, counted and shown
        in /status."""
        notify.reloading()
        try:
            loaded = await asyncio.to_thread(load, self.config_path or Path("cartd.yaml"),
                                             missing_ok=self.config_missing_ok)
            new, kept = reloaded(loaded, self._config)
            if self.store is not None and pool_settings(new) != pool_settings(self._config):
                await self.store.reconnect(*pool_settings(new))
            logs.configure(new.logging.level, new.logging.format)
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        except Exception as exc:
            return self._reload_failed(f"config reload failed: {type(exc).__name__}: {exc}"[:300],
                                       exc_info=True)
        for key in kept:
            log.warning("config_needs_restart", key=key)
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

    def _reload_failed(self, error: str, exc_info: bool = False) -> str:
        """A reload that changed nothing: logged, counted, shown in /status; the error."""
        self.config_error = error
        self.metrics.config_reloads.labels("error").inc()
        log.error("config_reload_failed", error=error, exc_info=exc_info)
        notify.notify("READY=1", f"STATUS=config reload failed: {error}")
        return error

    async def status(self) -> dict[str, Any]:
        deliveries = None
        if self.store is not None and self.database.reachable:
            try:
                deliveries = await self.store.deliveries.counts()
            except DB_ERRORS as exc:
                self.database.failed("status", exc)
            else:
                self.database.succeeded("status")
        polling = self.polling
        return {
            "state": "running" if polling and polling.enabled else "stopped",
            "interval_seconds": self._config.polling.interval,
            "instance_id": self.instance_id,
            "version": __version__,
            "started_at": self.started_at,
            "cycles": polling.cycles if polling else 0,
            "last_cycle": polling.last_cycle if polling else None,
            "deliveries": deliveries and {k: deliveries[k] for k in STATUS_COUNTS},
            "database": self.database.text(),
            "config_path": str(self.config_path) if self.config_path else None,
            "config_loaded_at": self.config_loaded_at,
            "config_error": self.config_error,
        }

    # --- what the control API asks (control.Controlled) ----------------------

    def _running(self) -> tuple[Store, PollLoop, Maintenance]:
        assert self.store and self.polling and self.maintenance, "the daemon is not running"
        return self.store, self.polling, self.maintenance

    def start_polling(self, interval: float | None) -> None:
        if interval is not None:
            polling = self._config.polling.model_copy(update={"interval": interval})
            self._config = self._config.model_copy(update={"polling": polling})
        self._running()[1].start()

    async def stop_polling(self) -> None:
        await self._running()[1].stop()

    async def run_once(self) -> dict[str, Any]:
        """Poll every matching agent now and wait for the first attempt of its deliveries."""
        polling = self._running()[1]
        result = await polling.run_once()
        if result is None:
            raise CycleFailed(polling.error or "cycle failed")
        return result

    async def deliveries(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._running()[0].deliveries.recent(status, limit)

    async def replay(self, delivery_id: str) -> str | None:
        store, _, maintenance = self._running()
        before = await store.deliveries.replay(delivery_id, self.clock())
        if before is not None and before != "withdrawn":
            await maintenance.settle_outbox()  # rebuilt before it goes
            self.wake_deliveries()
        return before

    async def replay_dead(self, since: datetime | None) -> int:
        store, _, maintenance = self._running()
        count = await store.deliveries.replay_dead(since, self.clock())
        await maintenance.settle_outbox()  # rebuilt before they go: completed carts leave them
        self.wake_deliveries()
        return count

    async def preview(self, agent_id: UUID | None, integration_id: UUID | None,
                      limit: int) -> dict[str, Any]:
        """What a cycle would deliver now, recorded nowhere (README "Previewing a store")."""
        return await preview.preview(self._running()[0], self._config, self.clock(),
                                     agent_id=agent_id, integration_id=integration_id,
                                     limit=limit)

    async def integrations(self, failing: bool, limit: int) -> list[dict[str, Any]]:
        config = self._config
        rows = await self._running()[0].agents.integrations(
            slug=config.polling.template_slug, failing=failing, limit=limit)
        for row in rows:  # never polled, no mode in its config: the default one
            row["mode"] = row["mode"] or config.platforms.default_mode
        return rows

    async def forget(self, **person: Any) -> dict[str, int]:
        """Erase one person from everything cartd keeps (README "Personal data")."""
        counts = await outbox.forget(self._running()[0], self.clock(), **person)
        self.metrics.deliveries_by_outcome["withdrawn"].inc(counts["deliveries_withdrawn"])
        self.wake_deliveries()
        return counts
