"""Whole cycles against live stores for the tests: the Poller fetches and records, the
Deliverer posts to a receiver."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

from cartd.db import Store
from cartd.delivery import Deliverer
from cartd.polling import Poller
from helpers import Clock, Scripted, add_agents, config, wait_until

DETECTED, RECOVERED = "abandoned_cart.detected", "abandoned_cart.recovered"


async def live_integration(store: Store, platform: str, settings: dict[str, Any]) -> uuid.UUID:
    data = await add_agents(store, 1, platforms=(platform,), integration_config=settings)
    return next(iter(data.integrations))


class Cycle:
    """Polls with a Poller, then delivers what it enqueued to the receiver."""

    def __init__(self, store: Store, receiver: Scripted, clock: Clock) -> None:
        self.store, self.receiver, self.clock = store, receiver, clock
        self.cfg = config(webhook={"url": receiver.url})

    def poller(self, instance: str = "poller-1") -> Poller:
        return Poller(self.store, lambda: self.cfg, instance_id=instance, clock=self.clock)

    async def run(self, poller: Poller | None = None) -> Any:
        summary, ids = await (poller or self.poller()).run_cycle(force=True)
        expected = len(self.receiver.requests) + len(ids)
        deliverer = Deliverer(self.store, lambda: self.cfg, instance_id="deliverer-1",
                              clock=self.clock)
        task = asyncio.create_task(deliverer.run())
        try:
            await wait_until(lambda: len(self.receiver.requests) >= expected)
        finally:
            deliverer.stop()
            await asyncio.wait_for(task, 10)
        return summary

    def carts(self, event: str = DETECTED) -> list[tuple[str, dict[str, Any]]]:
        """(integration id, cart) of every delivered cart of that event type."""
        out = []
        for _, raw in self.receiver.requests:
            body = json.loads(raw, parse_float=Decimal)
            if body["type"] == event:
                out += [(body["integration"]["id"], cart) for cart in body["abandoned_carts"]]
        return out


def delivered_ids(cycle: Cycle, integration: uuid.UUID, event: str = DETECTED) -> list[str]:
    return [cart["cart_id"] for iid, cart in cycle.carts(event) if iid == str(integration)]
