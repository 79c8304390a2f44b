"""Never remind a buyer, and fresh or not at all (README "What the receiver sees when a
cart completes"): carts that complete leave pending deliveries, a delivery left empty is
withdrawn, `recovered` never goes for a cart the receiver never got nor before its
`detected`, and detected deliveries expire after `webhook.max_delivery_age`. Real
PostgreSQL, real stores and receivers on 127.0.0.1, a real `cartd run`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from cartd import outbox
from cartd.db import Store
from cartd.delivery import Deliverer
from cartd.polling import Poller
from cartshop import cart, complete, shops
from harness import (DETECTED, FAST_RETRIES, RECOVERED, SECRET, Clock, LateReceiver, bodies,
                     cartd_run, config, delivering, metric, running_daemon, scripted_receiver,
                     serving, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite


async def deliveries(store: Store) -> dict[str, dict]:
    return {r["id"]: dict(r) for r in await store.pool.fetch(
        "SELECT id, integration_id, type, status, carts, attempts, stale, hold_for, last_error"
        " FROM cartd.deliveries")}


async def test_a_cart_that_completes_leaves_its_pending_delivery_and_an_empty_one_is_withdrawn(
        store, dsn, tmp_path):
    receiver = LateReceiver()  # down: every attempt is refused
    async with shops() as shop, cartd_run(tmp_path, dsn, receiver.url,
                                          polling={"interval": "1s"}, webhook=FAST_RETRIES) as d:
        shop.carts["three"] = [cart("a1", price="10.10"), cart("a2", price="20.25", quantity=3),
                               cart("a3", price="5.00")]
        shop.carts["one"] = [cart("b1")]
        _, three = await shop.agent(store, "three")
        _, one = await shop.agent(store, "one")
        await d.start()
        await wait_until(lambda: _attempted(store, 2), timeout=30)
        complete(shop.carts["three"][2])  # a3 and b1 are bought while the receiver is down
        complete(shop.carts["one"][0])
        await wait_until(lambda: _rebuilt(store), timeout=30)
        await receiver.up()
        try:
            await wait_until(lambda: len(receiver.requests) == 1, timeout=30)
            cycles = (await d.status())["cycles"]
            complete(shop.carts["three"][0])  # a1 was delivered: its recovered event goes
            await wait_until(lambda: len(receiver.requests) == 2, timeout=30)
            # two more cycles see a3 and b1 completed again: still nothing for them
            await d.wait_status(lambda status: status["cycles"] >= cycles + 2, timeout=30)
            code, withdrawn = await d.actl("deliveries", "--status", "withdrawn")
            scraped = await d.scrape()
        finally:
            await receiver.close()
    rows = await deliveries(store)
    [(sent_id, sent), (recovered_id, back)] = bodies(receiver)
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
    first = next(r for r in rows.values() if r["integration_id"] == three and r["type"] == DETECTED)
    assert sent_id == first["id"] and rows[sent_id]["attempts"] > 1  # the same webhook-id
    assert sent["type"] == DETECTED
    assert [c["cart_id"] for c in sent["abandoned_carts"]] == ["a1", "a2"]
    assert sent["recovery_analytics"] == {
        "total_carts": 2, "total_value": Decimal("80.95"), "platform": "custom",
        "currency": "USD", "total_items": 5, "average_cart_value": Decimal("40.48")}
    assert back["type"] == RECOVERED and [c["cart_id"] for c in back["abandoned_carts"]] == ["a1"]
    [empty] = [r for r in rows.values() if r["integration_id"] == one]
    assert empty["status"] == "withdrawn" and empty["last_error"].startswith("withdrawn")
    assert empty["id"] not in {i for i, _ in bodies(receiver)}
    assert code == 0 and [w["id"] for w in withdrawn] == [empty["id"]]
    assert metric(scraped, 'cartd_deliveries_total{outcome="withdrawn"}') == 1
    assert recovered_id != sent_id


async def _attempted(store: Store, count: int) -> bool:
    rows = (await deliveries(store)).values()
    return len(rows) == count and all(r["attempts"] >= 1 for r in rows)


async def _rebuilt(store: Store) -> bool:
    rows = (await deliveries(store)).values()
    return (sorted(r["status"] for r in rows) == ["pending", "withdrawn"]
            and any(r["carts"] == 2 and not r["stale"] for r in rows))


@asynccontextmanager
async def cycling(store: Store, cfg, clock: Clock, shop) -> AsyncIterator[tuple[Poller, Deliverer]]:
    """A shop `s` with carts c1 and c2, a Poller and a running Deliverer on `clock`."""
    shop.carts["s"] = [cart("c1", now=clock.now), cart("c2", now=clock.now)]
    await shop.agent(store, "s")
    poller = Poller(store, lambda: cfg, instance_id="p", clock=clock)
    async with delivering(store, cfg, instance_id="d", clock=clock) as deliverer:
        yield poller, deliverer


class Holding:
    """A receiver that holds each request until the test gives it an answer."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: asyncio.Queue[int] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(json.loads(await request.read(), parse_float=Decimal))
        return web.Response(status=await self.answers.get())

    def carts(self) -> list[tuple[str, list[str]]]:
        return [(b["type"], [c["cart_id"] for c in b["abandoned_carts"]]) for b in self.requests]


@pytest.mark.parametrize("answer", [200, 503])
async def test_a_cart_completing_while_its_delivery_is_in_flight_waits_for_that_attempt(
        store, answer):
    """The claim came first, so the attempt goes with the cart. Delivered: the cart's
    recovered event follows it. Failed: the cart leaves the delivery and no event goes."""
    clock = Clock()
    holding = Holding()
    app = web.Application()
    app.router.add_post("/webhook", holding.handle)
    async with shops() as shop, serving(app) as root:
        cfg = config(webhook={"url": f"{root}/webhook", **FAST_RETRIES})
        async with cycling(store, cfg, clock, shop) as (poller, deliverer):
            try:
                [detected] = (await poller.run_cycle(force=True))[1]
                deliverer.wake()
                await wait_until(lambda: holding.requests)  # the attempt is in flight
                complete(shop.carts["s"][0])
                clock.advance(seconds=1)
                await poller.run_cycle(force=True)
                rows = await deliveries(store)
                [held] = [r for r in rows.values() if r["type"] == RECOVERED]
                assert held["hold_for"] == detected and rows[detected]["stale"]
                holding.answers.put_nowait(answer)
                holding.answers.put_nowait(200)
                await wait_until(lambda: _attempt_recorded(store, detected))
                await outbox.refresh(store, clock())
                clock.advance(seconds=2)  # a retry is due
                deliverer.wake()
                await wait_until(lambda: len(holding.requests) == 2)
                await wait_until(lambda: _all_finished(store))
            finally:
                for _ in range(3):  # no request stays held, whatever happened
                    holding.answers.put_nowait(200)
    rows = await deliveries(store)
    if answer == 200:
        assert holding.carts() == [(DETECTED, ["c1", "c2"]), (RECOVERED, ["c1"])]
        assert rows[held["id"]]["status"] == "delivered"
    else:
        assert holding.carts() == [(DETECTED, ["c1", "c2"]), (DETECTED, ["c2"])]
        assert rows[held["id"]]["status"] == "withdrawn"
    assert rows[detected]["status"] == "delivered"


async def _attempt_recorded(store: Store, delivery_id: str) -> bool:
    return await store.pool.fetchval(
        "SELECT attempts >= 1 AND claimed_by IS NULL FROM cartd.deliveries WHERE id = $1",
        delivery_id)


async def _all_finished(store: Store) -> bool:
    return all(r["status"] != "pending" for r in (await deliveries(store)).values())


async def test_a_detected_delivery_expires_after_max_delivery_age_and_a_recovered_one_retries(
        store, dsn, tmp_path):
    clock = Clock()
    async with shops() as shop, scripted_receiver() as receiver:
        shop.carts["s"] = [cart("x", now=clock.now)]
        await shop.agent(store, "s")
        cfg = config(database={"dsn": dsn}, polling={"enabled": False},
                     webhook={"url": receiver.url},
                     control={"socket": str(tmp_path / "ctl.sock")}, metrics={"listen": ""})
        async with running_daemon(cfg, clock) as daemon:
            await daemon.run_once()  # x delivered
            receiver.default = (503, {}, 0.0)  # the receiver fails from now on
            complete(shop.carts["s"][0])
            shop.carts["s"].append(cart("y", now=clock.now))
            clock.advance(minutes=1)
            await daemon.run_once()  # recovered x and detected y, both failing
            rows = await deliveries(store)
            [fresh] = [i for i, r in rows.items() if r["type"] == DETECTED and r["status"] == "pending"]
            [back] = [i for i, r in rows.items() if r["type"] == RECOVERED]
            clock.advance(hours=23, minutes=59)
            await wait_until(lambda: _attempts_of(store, back, 2), timeout=15)
            assert (await deliveries(store))[fresh]["status"] == "pending"  # not yet 24 h
            clock.advance(minutes=2)
            await wait_until(lambda: _status_of(store, fresh, "dead"), timeout=15)
            attempts = (await deliveries(store))[fresh]["attempts"]
            clock.advance(hours=10)  # every retry of both is due many times over
            await wait_until(lambda: _attempts_of(store, back, 3), timeout=15)
    rows = await deliveries(store)
    assert rows[fresh]["last_error"].startswith("expired: not delivered within 24h")
    assert rows[fresh]["attempts"] == attempts  # never sent again
    assert rows[back]["status"] == "pending" and rows[back]["last_error"].startswith("HTTP 503")


async def _attempts_of(store: Store, delivery_id: str, n: int) -> bool:
    return (await deliveries(store))[delivery_id]["attempts"] >= n


async def _status_of(store: Store, delivery_id: str, status: str) -> bool:
    return (await deliveries(store))[delivery_id]["status"] == status


async def test_a_replay_leaves_out_carts_that_completed_and_a_purged_dead_delivery_silences_its_carts(
        store):
    clock = Clock()
    async with shops() as shop, scripted_receiver() as receiver:
        receiver.default = (422, {}, 0.0)  # rejected: dead at once
        cfg = config(webhook={"url": receiver.url})
        async with cycling(store, cfg, clock, shop) as (poller, deliverer):
            [dead] = (await poller.run_cycle(force=True))[1]
            await wait_until(lambda: _status_of(store, dead, "dead"))
            complete(shop.carts["s"][0])
            clock.advance(seconds=1)
            summary, made = await poller.run_cycle(force=True)
            assert made == [] and summary.carts_recovered == 0  # c1 never reached anyone
            receiver.default = (200, {}, 0.0)
            assert await store.deliveries.replay(dead, clock()) == "dead"
            await outbox.refresh(store, clock())
            deliverer.wake()
            await wait_until(lambda: _status_of(store, dead, "delivered"))
    _, last = bodies(receiver)[-1]
    assert [c["cart_id"] for c in last["abandoned_carts"]] == ["c2"]
    assert last["recovery_analytics"]["total_carts"] == 1
    # retention: the carts' memory stays while a delivery holds them; a purged dead
    # delivery silences its carts, so none of them gets a recovered event later
    day = timedelta(days=1)
    assert await store.maintenance.purge(payloads_before=clock() - day, carts_before=clock() + day) == (0, 0)
    await store.pool.execute("UPDATE cartd.deliveries SET status = 'dead'")
    assert await store.maintenance.purge(payloads_before=clock() + day, carts_before=clock() - day) == (1, 0)
    silenced = await store.pool.fetch("SELECT cart_id FROM cartd.sent_carts WHERE silenced")
    assert [r["cart_id"] for r in silenced] == ["c2"]
    assert await store.maintenance.purge(payloads_before=clock() + day, carts_before=clock() + day) == (0, 2)
