"""Several real `cartd run` processes on one PostgreSQL: work spread, exactly-once carts,
kill -9 of one instance, and a failing destination that opens its breaker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from cartd.db import Store
from harness import (Cartd, Scripted, accounted, add_agents, bodies, cartd_run, carts_received,
                     recorded, scripted_receiver, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite

SMALL = {"mock": {"carts_per_hour": 1}}  # about 23 abandoned carts per store, one webhook


async def instances(stack: AsyncExitStack, tmp: Path, dsn: str, url: str, n: int,
                    **overrides) -> list[Cartd]:
    """`n` started instances, each with its own socket, metrics port and log."""
    started = [await stack.enter_async_context(cartd_run(tmp / f"i{i}", dsn, url, **overrides))
               for i in range(n)]
    await asyncio.gather(*(d.start() for d in started))
    return started


async def instance_id(d: Cartd) -> str:
    return (await d.status())["instance_id"]


async def all_delivered(store: Store) -> bool:
    counts = await store.deliveries.counts()
    return counts["delivered"] > 0 and counts["pending"] == 0 and counts["dead"] == 0


async def test_three_instances_share_300_agents_and_deliver_every_cart_once(store, dsn, tmp_path):
    async with scripted_receiver() as receiver, AsyncExitStack() as stack:
        receiver.default = (200, {}, 0.15)  # a receiver that takes its time: work to share
        fleet = await instances(stack, tmp_path, dsn, receiver.url, 3, platforms=SMALL,
                                polling={"interval": "1s"},
                                webhook={"concurrency": 4, "timeout": "2s"})
        ids = [await instance_id(d) for d in fleet]
        started = time.monotonic()
        await add_agents(store, 300)
        await wait_until(lambda: all_delivered(store), timeout=40)
        await wait_until(lambda: _received_all(receiver, store), timeout=10)
        elapsed = time.monotonic() - started
        assert [await d.terminate() for d in fleet] == [0, 0, 0]
    keys = carts_received(receiver)
    assert len(keys) == len(set(keys)) and set(keys) == await recorded(store)
    assert len(keys) > 300 * 10
    by = Counter(r["attempted_by"] for r in await store.pool.fetch(
        "SELECT attempted_by FROM cartd.deliveries"))
    total = sum(by.values())
    assert set(by) == set(ids)
    assert min(by.values()) >= total / 5, by
    polled = _agents_polled(fleet)
    assert min(polled) >= sum(polled) / 5, polled
    print(f"\n{len(keys)} carts in {total} webhooks in {elapsed:.1f}s;"
          f" webhooks per instance {sorted(by.values())}; agents polled per instance {polled}")


async def _received_all(receiver: Scripted, store: Store) -> bool:
    return set(carts_received(receiver)) == await recorded(store)


def _agents_polled(fleet: list[Cartd]) -> list[int]:
    return [sum(e["agents_found"] for e in d.events("cycle_finished")) for d in fleet]


async def test_kill_9_of_one_instance_its_claims_return_and_the_others_deliver(store, dsn, tmp_path):
    async with scripted_receiver() as receiver, AsyncExitStack() as stack:
        receiver.default = (200, {}, 0.5)  # slow: the victim dies with requests in flight
        # its deliveries come back when their lease (timeout + 10 s) ends; the timeout
        # leaves the others' requests 1.5 s to spare
        fleet = await instances(stack, tmp_path, dsn, receiver.url, 3, platforms=SMALL,
                                polling={"interval": "1s"},
                                webhook={"concurrency": 4, "timeout": "2s"})
        ids = {await instance_id(d): d for d in fleet}
        await add_agents(store, 60)
        holder = await _a_holder_in_flight(store, receiver)
        victim = ids[holder]
        held = {r["id"] for r in await store.pool.fetch(
            "SELECT id FROM cartd.deliveries WHERE claimed_by = $1", holder)}
        await victim.kill()
        killed = time.monotonic()
        await wait_until(lambda: all_delivered(store), timeout=45)
        await wait_until(lambda: accounted(set(carts_received(receiver)), store), timeout=10)
        taken_over = time.monotonic() - killed
        survivors = [d for d in fleet if d is not victim]
        assert [await d.terminate() for d in survivors] == [0, 0]
    rows = await store.pool.fetch(
        "SELECT id, attempted_by FROM cartd.deliveries WHERE id = ANY($1)", list(held))
    assert len(rows) == len(held) and all(r["attempted_by"] not in (holder, None) for r in rows)
    # Nothing lost, and a cart is never detected under two webhook-ids.
    assert await accounted(set(carts_received(receiver)), store)
    ids_of_cart = defaultdict(set)
    for webhook_id, body in bodies(receiver):
        for cart in body["abandoned_carts"] if body["type"] == "abandoned_cart.detected" else ():
            ids_of_cart[(body["integration"]["id"], cart["cart_id"])].add(webhook_id)
    assert all(len(v) == 1 for v in ids_of_cart.values())
    sent = Counter(h["webhook-id"] for h, _ in receiver.requests)
    repeats = {i for i, n in sent.items() if n > 1}
    assert repeats and repeats <= held  # the victim's in-flight requests, sent again
    print(f"\nkilled an instance holding {len(held)} deliveries; all delivered"
          f" {taken_over:.1f}s later; {len(repeats)} repeated with the same webhook-id")


async def _a_holder_in_flight(store: Store, receiver: Scripted) -> str:
    """Wait until some instance holds deliveries with requests in flight; return it."""
    holder: list[str] = []

    async def found() -> bool:
        row = await store.pool.fetchrow(
            "SELECT claimed_by, count(*) AS n FROM cartd.deliveries WHERE claimed_by IS NOT NULL"
            " GROUP BY claimed_by ORDER BY n DESC LIMIT 1")
        if row and row["n"] >= 2 and receiver.active:
            holder.append(row["claimed_by"])
        return bool(holder)

    await wait_until(found, timeout=30)
    return holder[0]


async def test_a_failing_destination_opens_its_breaker_while_a_healthy_one_flows(
        store, dsn, tmp_path):
    async with scripted_receiver() as failing, scripted_receiver() as healthy, \
            cartd_run(tmp_path, dsn, failing.url, platforms=SMALL, polling={"interval": "1s"},
                      webhook={"concurrency": 4, "breaker_failures": 3, "breaker_probe": "1s",
                               "retry_schedule": ["1s"] * 10,
                               "allowed_override_hosts": ["127.0.0.1"]}) as d:
        failing.default = (500, {}, 0.0)
        await d.start()
        await add_agents(store, 8)
        await add_agents(store, 8, settings={"webhook_url": healthy.url})
        await d.wait_metric("cartd_breaker_open", lambda n: n == 1, timeout=20)
        # While open, the failing destination sees one probe a second, not a retry a second
        # for each of its 8 deliveries.
        before = len(failing.requests)
        await asyncio.sleep(3)
        probes = len(failing.requests) - before
        assert 1 <= probes <= 5, probes
        held = await store.pool.fetchval(
            "SELECT count(*) FROM cartd.deliveries WHERE url IS NULL AND status = 'pending'"
            " AND attempts = 0")
        assert held > 0  # due, waiting, not counted as attempts
        await wait_until(lambda: _healthy_done(store), timeout=20)
        lags = await store.pool.fetch(
            "SELECT attempts, delivered_at - created_at AS lag FROM cartd.deliveries"
            " WHERE url IS NOT NULL")
        assert all(r["attempts"] == 1 and r["lag"].total_seconds() < 3 for r in lags)

        failing.default = (200, {}, 0.0)  # it recovers: the next probe closes the breaker
        await d.wait_metric("cartd_breaker_open", lambda n: n == 0)
        await wait_until(lambda: all_delivered(store), timeout=20)
        assert await d.terminate() == 0
    host = failing.url.rsplit("/", 1)[0]
    assert [e["destination"] for e in d.events("breaker_opened")] == [host]
    assert [e["destination"] for e in d.events("breaker_closed")] == [host]
    print(f"\nwhile open: {probes} probes in 3 s; healthy webhooks delivered in"
          f" {max(r['lag'].total_seconds() for r in lags):.2f}s at most")


async def _healthy_done(store: Store) -> bool:
    n = await store.pool.fetchval(
        "SELECT count(*) FILTER (WHERE status <> 'delivered') FROM cartd.deliveries"
        " WHERE url IS NOT NULL")
    total = await store.pool.fetchval("SELECT count(*) FROM cartd.deliveries WHERE url IS NOT NULL")
    return total > 0 and n == 0
