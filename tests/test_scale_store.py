"""Store-level guarantees for several instances and retention, with an injected `now`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from cartd.db import Outcome, Store
from cartd.polling import Poller
from harness import SLUG, Clock, add_agents, config, delivery_row, enqueue

URL = "http://127.0.0.1:9/hook"
DAY = timedelta(days=1)


async def test_polling_instances_split_the_agents_and_each_is_polled_once_per_interval(store):
    await add_agents(store, 90)
    clock = Clock()
    cfg = config(polling={"interval": "30s"}, platforms={"mock": {"carts_per_hour": 0.25}})
    a, b, c = (Poller(store, lambda: cfg, instance_id=i, clock=clock) for i in "abc")

    async def interval(*pollers: Poller) -> list[int]:
        found = [(await p.run_cycle())[0].agents_found for p in pollers]
        polled = await store.pool.fetch(
            "SELECT agent_id FROM cartd.agent_polls WHERE claimed_at = $1", clock.now)
        assert len(polled) == len({r["agent_id"] for r in polled}) == sum(found)
        clock.advance(seconds=30)
        return found

    assert await interval(a, b, c) == [90, 0, 0]  # a was alone when it claimed
    assert await interval(a, b, c) == [30, 30, 30]  # a sees b and c now
    assert await interval(c, a, b) == [30, 30, 30]
    await c.leave()  # polling stopped on c: a and b take its share at once
    assert await interval(a, b) == [45, 45]
    # b is silent: still counted for two intervals (and 5 s), in case it is just slow.
    assert [await interval(a), await interval(a)] == [[45], [45]]
    assert await interval(a) == [90]  # then no longer: a polls b's share too


async def test_instances_asking_for_shares_at_once_clear_the_dead_ones_without_errors(store):
    await add_agents(store, 12)
    now = Clock().now
    for n in range(20):  # instances that died long ago
        await store.pool.execute("INSERT INTO cartd.instances VALUES ($1, $2)",
                                 f"dead-{n}", now - timedelta(minutes=5))
    shares = await asyncio.gather(*(
        store.agents.poll_share(slug=SLUG, instance=f"i{n}", now=now,
                         live_until=now + timedelta(seconds=65))
        for n in range(6)))
    assert all(2 <= share <= 12 for share in shares)  # 1 to 6 instances seen, 12 agents
    left = {r["id"] for r in await store.pool.fetch("SELECT id FROM cartd.instances")}
    assert left == {f"i{n}" for n in range(6)}


async def test_a_stale_instance_cannot_overwrite_a_delivery_another_took_over(store):
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    claim = dict(lease=timedelta(seconds=10), limit=10, default_url=URL)
    assert [c.id for c in await store.deliveries.claim(instance="a", now=clock.now, **claim)] \
        == [delivery_id]
    clock.advance(seconds=5)  # a's lease holds
    assert await store.deliveries.claim(instance="b", now=clock.now, **claim) == []
    clock.advance(seconds=6)  # a stalled past its lease: b takes the delivery over
    assert len(await store.deliveries.claim(instance="b", now=clock.now, **claim)) == 1
    late = Outcome(delivery_id, "dead", 400, "HTTP 400", None, clock.now)
    assert await store.deliveries.record_outcomes([late], "a") == set()
    done = Outcome(delivery_id, "delivered", 200, None, None, clock.now)
    assert await store.deliveries.record_outcomes([done], "b") == {done.id}
    row = await delivery_row(store, delivery_id)
    assert (row["status"], row["attempts"], row["attempted_by"]) == ("delivered", 1, "b")
    assert row["claimed_by"] is None and row["lease_until"] is None


async def test_claims_skip_excluded_urls_and_unclaim_gives_rows_back_untouched(store):
    clock = Clock()
    held = await enqueue(store, clock.now - timedelta(minutes=1), 3)
    held += await enqueue(store, clock.now, 1, URL)  # the default URL, written out
    other = await enqueue(store, clock.now, 2, "http://127.0.0.1:10/x")
    claim = dict(instance="a", now=clock.now, lease=timedelta(seconds=10), default_url=URL)
    got = await store.deliveries.claim(limit=10, exclude=[URL], **claim)
    assert sorted(c.id for c in got) == sorted(other)
    got = await store.deliveries.claim(limit=10, **claim)
    assert sorted(c.id for c in got) == sorted(held)
    await store.deliveries.unclaim("a", held)
    rows = await store.pool.fetch(
        "SELECT attempts, claimed_by, lease_until FROM cartd.deliveries WHERE id = ANY($1)", held)
    assert [tuple(r) for r in rows] == [(0, None, None)] * 4


async def _add(store: Store, status: str, finished_ago: timedelta, now) -> str:
    delivery_id = f"msg_{uuid.uuid4().hex}"
    await store.pool.execute(
        "INSERT INTO cartd.deliveries (id, type, agent_id, integration_id, platform, body, carts,"
        " status, next_attempt_at, created_at, delivered_at)"
        " VALUES ($1, 'abandoned_cart.detected', $2, $2, 'custom', '\\x7b7d', 1, $3, $4, $5, $6)",
        delivery_id, uuid.uuid4(), status, now - finished_ago, now - finished_ago - DAY,
        now - finished_ago if status == "delivered" else None,
    )
    return delivery_id


async def test_retention_purges_in_batches_and_the_dedupe_memory_outlives_the_payloads(store):
    now = Clock().now
    old_delivered = [await _add(store, "delivered", 8 * DAY, now) for _ in range(5)]
    old_dead = await _add(store, "dead", 9 * DAY, now)
    kept = {await _add(store, "delivered", 2 * DAY, now), await _add(store, "dead", 6 * DAY, now),
            await _add(store, "pending", 30 * DAY, now)}  # pending is never purged
    integration = uuid.uuid4()
    for cart, age in (("c8", 8 * DAY), ("c20", 20 * DAY), ("c1", DAY)):
        await store.pool.execute("INSERT INTO cartd.sent_carts VALUES ($1, $2, $3)",
                                 integration, cart, now - age)
    # retention 7d, carts.max_age 14d: payloads go after 7 days, the memory after 14.
    purged = await store.maintenance.purge(payloads_before=now - 7 * DAY, carts_before=now - 14 * DAY,
                               batch=2)
    assert purged == (len(old_delivered) + 1, 1)
    left = {r["id"] for r in await store.pool.fetch("SELECT id FROM cartd.deliveries")}
    assert left == kept and old_dead not in left
    carts = {r["cart_id"] for r in await store.pool.fetch("SELECT cart_id FROM cartd.sent_carts")}
    assert carts == {"c8", "c1"}
    assert await store.maintenance.purge(payloads_before=now - 7 * DAY, carts_before=now - 14 * DAY) == (0, 0)
