"""The poll loop (README "How it works", "Controlling a running daemon"): a cycle every
`polling.interval` while polling is enabled, started and stopped at runtime, or run once
on demand; the agents a running cycle holds keep their lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from cartd import notify
from cartd.config import Config
from cartd.cycle import Cycle, CycleSummary
from cartd.db import DB_ERRORS, DatabaseHealth, NewDelivery, Store
from cartd.metrics import Metrics
from cartd.services import Stopping, cancel

log = structlog.get_logger("cartd.polling")

AGENT_LEASE_FLOOR = timedelta(seconds=5)
LEASE_RENEWALS = 3  # a running cycle renews its agents' lease this often per lease
RUN_ONCE_WAIT = 30.0  # seconds run-once waits at least for the first attempts


class Poller:
    """Runs the cycles of one instance, and keeps the agents of a running cycle leased."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        *,
        instance_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_enqueued: Callable[[list[NewDelivery]], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.config = config
        self.instance_id = instance_id
        self.clock = clock
        self.on_enqueued = on_enqueued

    async def run_cycle(self, *, force: bool = False, now: datetime | None = None
                        ) -> tuple[CycleSummary, list[str]]:
        """Poll every due agent (every matching agent when `force`); returns the summary
        and the ids of the deliveries it enqueued."""
        config = self.config()
        interval = timedelta(seconds=config.polling.interval)
        # Renewed while the cycle runs, so a slow store keeps its agents, and a dead
        # instance's agents return once it runs out.
        lease = max(2 * interval, AGENT_LEASE_FLOOR)
        cycle = Cycle(self.store, config, now or self.clock(), instance_id=self.instance_id,
                      lease=lease, force=force, on_enqueued=self.on_enqueued)
        renewing = asyncio.create_task(self._keep_claims(lease))
        try:
            return await cycle.run()
        finally:
            await cancel([renewing])

    async def _keep_claims(self, lease: timedelta) -> None:
        """Renew the lease of the agents this cycle holds, LEASE_RENEWALS times per lease,
        until the cycle ends (their release ends it too)."""
        while True:
            await asyncio.sleep(lease.total_seconds() / LEASE_RENEWALS)
            try:
                await self.store.agents.renew(self.instance_id, self.clock() + lease)
            except DB_ERRORS as exc:  # the cycle's own statements report the database
                log.debug("agent_claims_not_renewed", error=str(exc))

    async def leave(self) -> None:
        """Polling stops here: the other instances take this one's share."""
        await self.store.agents.leave(self.instance_id)


async def _nothing() -> None:
    return None


class PollLoop:
    """The poll loop service: cycles logged (`cycle_finished`, `cycle_failed`) and counted,
    on schedule while polling is enabled.

    `ready` runs before a cycle when the database was unreachable (it migrates once it
    answers); `settle` after a cycle that finished (what its completions made stale): it
    reports what fails in it and never raises (`Maintenance.after_cycle`), since the
    cycle it follows has committed and must not count as failed."""

    def __init__(
        self,
        poller: Poller,
        *,
        database: DatabaseHealth,
        metrics: Metrics,
        enabled: bool,
        ready: Callable[[], Awaitable[None]] = _nothing,
        settle: Callable[[], Awaitable[None]] = _nothing,
        on_cycle: Callable[[CycleSummary], None] = lambda _: None,
        wake_deliveries: Callable[[], None] = lambda: None,
    ) -> None:
        self.poller = poller
        self.database = database
        self.metrics = metrics
        self.ready = ready
        self.settle = settle
        self.on_cycle = on_cycle
        self.wake_deliveries = wake_deliveries
        self.enabled = enabled
        self.cycles = 0
        self.last_cycle: dict[str, Any] | None = None
        self.error: str | None = None  # why the last cycle failed, if it did
        self._wake = asyncio.Event()
        self._now = False  # the next cycle starts at once
        self._lock = asyncio.Lock()
        metrics.polling_enabled.set(int(enabled))

    def config(self) -> Config:
        return self.poller.config()

    async def run(self, stopping: Stopping) -> None:
        """A cycle every `polling.interval` while enabled, until the stop begins."""
        stopping.on_set(self._wake.set)
        last_start: float | None = None
        while not stopping.is_set():
            due = time.monotonic()
            if last_start is not None and not self._now:
                due = last_start + self.config().polling.interval
            if self.enabled and time.monotonic() >= due:
                self._now = False
                last_start = time.monotonic()
                await self.run_cycle()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       due - time.monotonic() if self.enabled else None)

    def wake(self) -> None:
        """Look at the schedule again (the interval may have changed)."""
        self._wake.set()

    async def run_cycle(self, *, force: bool = False) -> tuple[CycleSummary, list[str]] | None:
        """One cycle, logged and counted; None when it failed (the database, say, or an
        unexpected exception: logged with its traceback, and the next cycle runs)."""
        started = time.monotonic()
        async with self._lock:
            try:
                if not self.database.reachable:
                    await self.poller.store.ping()
                    await self.ready()
                summary, ids = await self.poller.run_cycle(force=force)
            except DB_ERRORS as exc:
                found = self.database.failed("cycle", exc)
                self._failed(started, f"database: {found}", str(found))
                return None
            except Exception as exc:
                error = f"cycle failed: {type(exc).__name__}: {exc}"[:300]
                self._failed(started, error, error, exc_info=True)
                return None
        self._finished(summary, time.monotonic() - started)
        await self.settle()
        return summary, ids

    def _failed(self, started: float, error: str, logged: str, exc_info: bool = False) -> None:
        self.error = error
        log.error("cycle_failed", error=logged, exc_info=exc_info)
        self.metrics.count_failed_cycle(time.monotonic() - started)

    def _finished(self, summary: CycleSummary, seconds: float) -> None:
        self.error = None
        self.database.succeeded("cycle")
        self.cycles += 1
        self.last_cycle = summary.as_dict()
        self.metrics.count_cycle(summary, seconds)
        log.info("cycle_finished", **self.last_cycle)
        notify.notify(f"STATUS=cycle {self.cycles}: {summary.agents_found} agents,"
                      f" {summary.carts_new} new carts, {summary.deliveries_enqueued} webhooks"
                      f" queued, {summary.integration_errors} integration errors")
        self.on_cycle(summary)

    async def run_once(self) -> dict[str, Any] | None:
        """Poll every matching agent now and wait for the first attempt of its deliveries;
        None when the cycle failed (`error` says why)."""
        result = await self.run_cycle(force=True)
        if result is None:
            return None
        summary, ids = result
        states = {"unattempted": 0, "delivered": 0, "failed": 0}
        if ids:
            self.wake_deliveries()
            deadline = time.monotonic() + max(RUN_ONCE_WAIT, 2 * self.config().webhook.timeout)
            while True:
                states = await self.poller.store.deliveries.attempt_states(ids)
                if not states["unattempted"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        return {**summary.as_dict(), "deliveries_succeeded": states["delivered"],
                "deliveries_failed": states["failed"]}

    def start(self) -> None:
        """Enable polling; the next cycle starts now."""
        self.enabled = True
        self._now = True
        self.metrics.polling_enabled.set(1)
        log.info("polling_started", interval_seconds=self.config().polling.interval)
        self._wake.set()

    async def stop(self) -> None:
        """Disable polling; the other instances take this one's share."""
        self.enabled = False
        self.metrics.polling_enabled.set(0)
        log.info("polling_stopped")
        self._wake.set()
        try:
            await self.poller.leave()
        except DB_ERRORS:
            pass  # its place in the shares runs out by itself
