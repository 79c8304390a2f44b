"""The daemon's lifecycle: one TaskGroup for the poll loop and the delivery workers,
signal handlers, a graceful stop that loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from cartd import embedded
from cartd.config import Config
from cartd.delivery import Deliverer
from cartd.poller import CycleSummary, Poller
from cartd.store import DB_ERRORS, Store

log = structlog.get_logger("cartd.daemon")


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_cycle: Callable[[CycleSummary], None] = lambda _: None,
        prepare: Callable[[Store], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self.config_path = config_path
        self.clock = clock
        self.on_cycle = on_cycle
        self.prepare = prepare
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.started_at = clock()
        self.polling_enabled = config.polling.enabled
        self.cycles = 0
        self.last_cycle: CycleSummary | None = None
        self.stopping = asyncio.Event()
        self._poll_wake = asyncio.Event()
        self.store: Store | None = None
        self.poller: Poller | None = None
        self.deliverer: Deliverer | None = None
        self._embedded: Any = None

    def config(self) -> Config:
        return self._config

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping")
            self.stopping.set()
            self._poll_wake.set()
            if self.deliverer is not None:
                self.deliverer.stop()

    async def _open_store(self) -> Store:
        config = self._config
        dsn = config.database.dsn
        if not dsn:
            dsn, self._embedded = await asyncio.to_thread(embedded.start, config.state_dir)
        store = await Store.connect(
            dsn, config.database.min_connections, config.database.max_connections
        )
        if config.database.migrate:
            applied = await store.migrate()
            if applied:
                log.info("migrations_applied", migrations=applied)
        return store

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        try:
            self.store = await self._open_store()
            if self.prepare is not None:
                await self.prepare(self.store)
            self.deliverer = Deliverer(self.store, self.config, instance_id=self.instance_id,
                                       clock=self.clock)
            self.poller = Poller(self.store, self.config, instance_id=self.instance_id,
                                 clock=self.clock, on_enqueued=lambda _: self.deliverer.wake())
            log.info("started", instance_id=self.instance_id,
                     interval_seconds=self._config.polling.interval,
                     polling=self.polling_enabled)
            if self.stopping.is_set():
                self.deliverer.stop()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._poll_loop())
                tasks.create_task(self.deliverer.run())
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._close()

    async def _close(self) -> None:
        if self.store is not None:
            try:
                await self.store.release_deliveries(self.instance_id)
            except DB_ERRORS as exc:
                log.warning("claims_not_released", error=str(exc))
            await self.store.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.cleanup)
        log.info("stopped")

    async def run_cycle(self, *, force: bool = False) -> tuple[CycleSummary, list[str]] | None:
        """One cycle, logged and counted; None when it failed (the database, say)."""
        assert self.poller is not None
        try:
            summary, ids = await self.poller.run_cycle(force=force)
        except DB_ERRORS as exc:
            log.error("cycle_failed", error=str(exc))
            return None
        self.cycles += 1
        self.last_cycle = summary
        log.info("cycle_finished", **summary.as_dict())
        self.on_cycle(summary)
        return summary, ids

    async def _poll_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            if self.polling_enabled:
                await self.run_cycle()
            interval = self._config.polling.interval
            next_at = max(next_at + interval, time.monotonic())
            self._poll_wake.clear()
            try:
                await asyncio.wait_for(self._poll_wake.wait(), next_at - time.monotonic())
            except TimeoutError:
                pass
