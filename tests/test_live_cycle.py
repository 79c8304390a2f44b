"""Whole cycles against live stores on the fake-store server: the Poller fetches and
records, the Deliverer posts to a receiver. These are issue 4's "Done means"."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from structlog.testing import capture_logs

from fakestore import CONSUMER_SECRET, CUSTOM_TOKEN, TOKEN, Shop, make_carts
from harness import RECOVERED, Clock, Pipeline, config, live_integration

pytestmark = pytest.mark.reliability  # part of the fault-injection suite


def shop_ids(shop: Shop, platform: str) -> list[str]:
    prefix = "c" if platform == "custom" else ""
    return [f"{prefix}{c.number}" for c in shop.carts]


async def test_every_platform_delivers_each_abandoned_cart_once_with_exact_totals(
    store, fake, receiver
):
    clock = Clock()
    now = clock.now
    shops = {
        "graphql": (fake.add("graphql", make_carts(3, now, first=100, fresh=1, completed=1)),
                    "shopify", fake.shopify("graphql"), 2),
        "rest": (fake.add("rest", make_carts(4, now, first=200, fresh=1, completed=1)),
                 "shopify", fake.shopify("rest", api="rest"), 2),
        "woo": (fake.add("woo", make_carts(6, now, first=300, fresh=1, completed=1)),
                "woocommerce", fake.woocommerce("woo"), 3),
        "custom": (fake.add("custom", make_carts(4, now, first=400, fresh=1, completed=1)),
                   "custom", fake.custom("custom"), 2),
    }
    integrations = {name: await live_integration(store, platform, settings)
                    for name, (_, platform, settings, _) in shops.items()}
    cycle = Pipeline(store, receiver, clock)
    summary = await cycle.run()
    assert summary.integration_errors == 0 and summary.integrations_processed == 4

    for name, (shop, platform, _, pages) in shops.items():
        assert len(shop.requests) == pages, name
        by_id = dict(zip(shop_ids(shop, platform), shop.carts))
        sent = cycle.delivered_ids(integrations[name])
        abandoned = [cid for cid, c in by_id.items()
                     if c.completed is None and now - c.updated > timedelta(hours=1)]
        assert sorted(sent) == sorted(abandoned) and len(abandoned) == len(shop.carts) - 2, name
        for iid, cart in cycle.carts():
            if iid == str(integrations[name]):
                assert cart["total_value"] == by_id[cart["cart_id"]].value
                for item in cart["items"]:
                    assert item["line_total"] == item["unit_price"] * item["quantity"]
    for _, raw in receiver.requests:
        body = json.loads(raw, parse_float=Decimal)
        assert body["integration"]["mode"] == "live"
        analytics = body["recovery_analytics"]
        assert analytics["total_value"] == sum(c["total_value"] for c in body["abandoned_carts"])
    assert summary.recovery_value == {"USD": sum(
        (c.value for shop, *_ in shops.values() for c in shop.carts
         if c.completed is None and now - c.updated > timedelta(hours=1)), Decimal(0))}

    clock.advance(minutes=30)
    again = await cycle.run()
    assert again.carts_new == 0 and again.integration_errors == 0
    assert len(cycle.carts()) == sum(len(s.carts) - 2 for s, *_ in shops.values())


async def test_a_429_is_waited_out_and_a_401_store_fails_alone(store, fake, receiver):
    clock = Clock()
    slow = fake.add("slow", make_carts(2, clock.now, first=100))
    slow.faults.append((429, {"Retry-After": "1"}, {"errors": "Exceeded 2 calls per second"}))
    throttled = fake.add("throttled", make_carts(2, clock.now, first=200))
    throttled.faults.append((200, {}, {"errors": [{"message": "Throttled",
                                                    "extensions": {"code": "THROTTLED"}}],
                                       "extensions": {"cost": {
                                           "requestedQueryCost": 52, "throttleStatus": {
                                               "maximumAvailable": 2000, "currentlyAvailable": 2,
                                               "restoreRate": 100}}}}))
    fake.add("locked", make_carts(2, clock.now, first=300))
    fake.add("denied", make_carts(2, clock.now, first=400))
    slow_id = await live_integration(store, "shopify", fake.shopify("slow", api="rest"))
    throttled_id = await live_integration(store, "shopify", fake.shopify("throttled"))
    await live_integration(store, "woocommerce", fake.woocommerce("locked", secret="cs_wrong_secret"))
    await live_integration(store, "shopify", fake.shopify("denied", token="shpat_wrong_token"))
    cycle = Pipeline(store, receiver, clock)
    started = time.monotonic()
    with capture_logs() as logs:
        summary = await cycle.run()
    assert time.monotonic() - started >= 1.0
    assert summary.integration_errors == 2 and summary.integrations_processed == 2
    assert sorted(cycle.delivered_ids(slow_id)) == ["100", "101"]
    assert sorted(cycle.delivered_ids(throttled_id)) == ["200", "201"]
    assert len(slow.requests) == 2 and len(throttled.requests) == 2
    failures = [entry for entry in logs if entry["event"] == "integration_failed"]
    assert sorted(entry["platform"] for entry in failures) == ["shopify", "woocommerce"]
    text = json.dumps(logs, default=str)
    assert "HTTP 401" in text and "woocommerce_rest_cannot_view" in text
    for secret in (TOKEN, CONSUMER_SECRET, CUSTOM_TOKEN, "cs_wrong_secret", "shpat_wrong_token"):
        assert secret not in text


async def test_a_store_that_makes_cartd_wait_holds_one_fetch_slot_not_the_others(
        store, fake, receiver):
    clock = Clock()
    slow = fake.add("slow", make_carts(2, clock.now, first=100))
    slow.faults.append((429, {"Retry-After": "1"}, {"errors": "Exceeded 2 calls per second"}))
    slow_id = await live_integration(store, "shopify", fake.shopify("slow", api="rest"))
    # The slow store's integration comes first in its agent's list (ordered by id).
    first = uuid.UUID(int=1)
    await store.pool.execute("UPDATE agent_integrations SET id = $1 WHERE id = $2", first, slow_id)
    agent = await store.pool.fetchval("SELECT agent_id FROM agent_integrations WHERE id = $1", first)
    fast = []
    for n in range(4):
        fast.append(fake.add(f"fast{n}", make_carts(2, clock.now, first=200 + 10 * n)))
        await store.pool.execute(
            "INSERT INTO agent_integrations (id, agent_id, platform, config)"
            " VALUES ($1, $2, 'shopify', $3)",
            uuid.uuid4(), agent, fake.shopify(f"fast{n}", api="rest"))
    cycle = Pipeline(store, receiver, clock)
    cycle.cfg = config(webhook={"url": receiver.url}, polling={"source_concurrency": 2})
    summary = await cycle.run()
    assert summary.integrations_processed == 5 and summary.carts_new == 10
    retried_at = slow.requests[1]["at"]
    assert all(shop.requests[0]["at"] < retried_at for shop in fast)
    assert sorted(cycle.delivered_ids(first)) == ["100", "101"]


@pytest.mark.parametrize("platform, api", [
    ("shopify", "graphql"), ("shopify", "rest"), ("woocommerce", None), ("custom", None),
])
async def test_a_delivered_cart_that_completes_sends_one_recovered_event(
    store, fake, receiver, platform, api
):
    clock = Clock()
    shop = fake.add("s", make_carts(3, clock.now, first=500))
    settings = {"shopify": lambda: fake.shopify("s", api=api or "graphql"),
                "woocommerce": lambda: fake.woocommerce("s"),
                "custom": lambda: fake.custom("s")}[platform]()
    integration = await live_integration(store, platform, settings)
    cycle = Pipeline(store, receiver, clock)
    await cycle.run()
    assert len(cycle.delivered_ids(integration)) == 3

    clock.advance(minutes=20)
    shop.complete(501, clock.now)
    clock.advance(hours=1)
    summary = await cycle.run()
    assert summary.carts_recovered == 1
    clock.advance(hours=1)
    await cycle.run()
    recovered = [cart for iid, cart in cycle.carts(RECOVERED) if iid == str(integration)]
    assert [cart["cart_id"] for cart in recovered] == [shop_ids(shop, platform)[1]]
    assert recovered[0]["recovered_at"].endswith("Z")
    assert len(cycle.delivered_ids(integration)) == 3
    if platform == "woocommerce":
        assert shop.statuses_seen[0] == "pending,failed,checkout-draft"
        assert shop.statuses_seen[-1] == "pending,failed,checkout-draft,processing,completed,on-hold"


async def test_a_crash_between_fetching_and_recording_rereads_the_same_carts(
    store, fake, receiver, monkeypatch
):
    clock = Clock()
    shop = fake.add("s", make_carts(2, clock.now, first=600))
    integration = await live_integration(store, "shopify", fake.shopify("s"))
    cycle = Pipeline(store, receiver, clock)
    await cycle.run()
    assert sorted(cycle.delivered_ids(integration)) == ["600", "601"]

    clock.advance(hours=2)
    shop.carts += make_carts(2, clock.now, first=700)
    record = store.outbox.record
    calls = 0

    async def crash_once(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the process died here")
        return await record(**kwargs)

    monkeypatch.setattr(store.outbox, "record", crash_once)
    with pytest.raises(ConnectionError):
        await cycle.poller("dies").run_cycle(force=True)
    assert await store.pool.fetchval("SELECT count(*) FROM cartd.deliveries") == 1

    clock.advance(minutes=2)  # the dead instance's lease runs out
    await cycle.run(cycle.poller("restarted"))
    assert sorted(cycle.delivered_ids(integration)) == ["600", "601", "700", "701"]
    crashed, restarted = (r["json"]["variables"]["query"].split(" AND ")[0]
                          for r in shop.requests[-2:])
    assert crashed == restarted  # the cursor did not move past the lost carts
