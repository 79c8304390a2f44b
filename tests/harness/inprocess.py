"""cartd's parts run inside the test's event loop: a Deliverer, a whole Daemon, a Poller
followed by a Deliverer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cartd.config import Config
from cartd.daemon import Daemon
from cartd.db import Store
from cartd.delivery import Deliverer
from cartd.polling import Poller
from harness.common import Clock, config, wait_until
from harness.receivers import DETECTED, Scripted, bodies


@asynccontextmanager
async def delivering(store: Store, cfg: Config, *, instance_id: str = "d-1",
                     **options: Any) -> AsyncIterator[Deliverer]:
    """A Deliverer on `cfg` running for the block (`options`: its keyword arguments,
    such as `clock`), stopped at its end."""
    deliverer = Deliverer(store, lambda: cfg, instance_id=instance_id, **options)
    task = asyncio.create_task(deliverer.run())
    try:
        yield deliverer
    finally:
        deliverer.stop()
        await asyncio.wait_for(task, 20)


@asynccontextmanager
async def running_daemon(cfg: Config, clock: Clock, **options: Any) -> AsyncIterator[Daemon]:
    """The whole daemon on `cfg` in this event loop (`options`: its keyword arguments,
    such as `config_path`), connected to its database, for the block; stopped at its
    end."""
    daemon = Daemon(cfg, clock=clock, **options)
    running = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: running.done()
                         or (daemon.polling is not None and daemon.database.reachable))
        assert not running.done(), "the daemon stopped at start"
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 15)


class Pipeline:
    """Polls with a Poller, then delivers what it enqueued to the receiver."""

    def __init__(self, store: Store, receiver: Scripted, clock: Clock) -> None:
        self.store, self.receiver, self.clock = store, receiver, clock
        self.cfg = config(webhook={"url": receiver.url})

    def poller(self, instance: str = "poller-1") -> Poller:
        return Poller(self.store, lambda: self.cfg, instance_id=instance, clock=self.clock)

    async def run(self, poller: Poller | None = None) -> Any:
        """One forced cycle, then deliveries until the receiver has every one; the summary."""
        summary, ids = await (poller or self.poller()).run_cycle(force=True)
        expected = len(self.receiver.requests) + len(ids)
        async with delivering(self.store, self.cfg, instance_id="deliverer-1",
                              clock=self.clock):
            await wait_until(lambda: len(self.receiver.requests) >= expected)
        return summary

    def carts(self, event: str = DETECTED) -> list[tuple[str, dict[str, Any]]]:
        """(integration id, cart) of every delivered cart of that event type."""
        return [(b["integration"]["id"], cart) for _, b in bodies(self.receiver)
                if b["type"] == event for cart in b["abandoned_carts"]]

    def delivered_ids(self, integration: uuid.UUID, event: str = DETECTED) -> list[str]:
        """The ids of the carts delivered for `integration` in `event` webhooks."""
        return [cart["cart_id"] for iid, cart in self.carts(event) if iid == str(integration)]
