"""Shopify live stores on the fake store (which executes the queries against the Admin
schema, charges their cost to a leaky bucket and expires granted tokens), through whole
cycles on a real PostgreSQL: issue 12's "Done means" 1 and 2."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from cartd.sources import shopify_live
from fakestore import CLIENT_SECRET, Bucket, FakeCart, FakeStore
from harness import Clock, Pipeline, config, live_integration

LONG_LINES = 120


def big_store(now: Any, count: int, *, first: int = 1,
              idle: timedelta = timedelta(hours=2)) -> list[FakeCart]:
    """`count` checkouts idle `idle` or more, one in a hundred with LONG_LINES lines."""
    carts = []
    for n in range(count):
        lines = LONG_LINES if n % 100 == 7 else 1 + n % 3
        updated = now - idle - timedelta(seconds=n)
        carts.append(FakeCart(first + n, f"buyer{first + n}@example.com",
                              [(f"Product {k}", 1 + k % 2, f"{3 + k % 7}.25") for k in range(lines)],
                              created=updated - timedelta(minutes=30), updated=updated))
    return carts


async def cycles_until(cycle: Pipeline, integration: uuid.UUID, expected: int,
                       limit: int) -> int:
    """Run cycles (30 s apart) until `expected` carts were delivered; returns how many ran."""
    for ran in range(1, limit + 1):
        summary = await cycle.run()  # returns once its deliveries reached the receiver
        assert summary.integration_errors == 0
        recorded = await cycle.store.pool.fetchval(
            "SELECT count(*) FROM cartd.sent_carts WHERE integration_id = $1", integration)
        if recorded >= expected:
            return ran
        cycle.clock.advance(seconds=30)
    raise AssertionError(f"not all delivered after {limit} cycles")


async def test_a_store_of_twenty_thousand_checkouts_is_delivered_once_with_every_line(
        store, fake: FakeStore, receiver):
    clock = Clock()
    carts = big_store(clock.now, 20_000)
    # A cost-enforcing bucket, restored fast so that the test is quick; 2,000 points.
    shop = fake.add("big", carts, page_size=250,
                    bucket=Bucket(maximum=2000, restore_rate=1_000_000, available=2000))
    integration = await live_integration(store, "shopify", fake.shopify("big"))
    cycle = Pipeline(store, receiver, clock)
    # A long interval: only the 200-request budget ends a cycle's read, so the figures are
    # exact whatever the machine's speed.
    cycle.cfg = config(webhook={"url": receiver.url}, polling={"interval": "10m"})

    ran = await cycles_until(cycle, integration, len(carts), limit=60)

    assert ran > 1  # the read went on where each cycle's budget stopped it
    delivered = {cart["cart_id"]: cart for iid, cart in cycle.carts() if iid == str(integration)}
    assert Counter(cycle.delivered_ids(integration)).most_common(1)[0][1] == 1
    assert len(delivered) == len(carts)
    for fake_cart in carts:
        sent = delivered[str(fake_cart.number)]
        assert len(sent["items"]) == len(fake_cart.lines)
        assert sent["total_value"] == fake_cart.value
    account = shop.accounting
    assert account.throttled == 0 and account.refused == 0  # the bucket never ran dry
    # The figures README "Connecting stores" gives for this store.
    assert account.requests == 772 and round(account.actual / 1000) == 397
    assert await store.pool.fetchval("SELECT resume FROM cartd.sources") is None
    clock.advance(minutes=1)
    again = await cycle.run()
    assert again.carts_new == 0 and again.integration_errors == 0


async def test_integrations_of_one_shop_share_its_bucket_and_never_empty_it(
        store, fake: FakeStore, receiver):
    clock = Clock()
    # 1,000 points restored at 5,000/s: each page of 35 checkouts needs 983 of them.
    shop = fake.add("shared", big_store(clock.now, 150), page_size=250,
                    bucket=Bucket(maximum=1000, restore_rate=5000, available=1000))
    first = await live_integration(store, "shopify", fake.shopify("shared"))
    second = await live_integration(store, "shopify", fake.shopify("shared", version="2025-10"))
    cycle = Pipeline(store, receiver, clock)
    summary = await cycle.run()
    assert summary.integration_errors == 0 and summary.carts_new == 300
    assert len(set(cycle.delivered_ids(first))) == len(set(cycle.delivered_ids(second))) == 150
    assert shop.accounting.throttled == 0 and shop.accounting.requests >= 2 * 5


async def test_a_read_out_of_time_resumes_after_its_last_complete_checkout(
        store, fake: FakeStore, receiver):
    clock = Clock()
    # 1,000 points restored at 2,000/s and a 0.5 s budget: a few pages a cycle.
    shop = fake.add("slow", big_store(clock.now, 200), page_size=250,
                    bucket=Bucket(maximum=1000, restore_rate=2000, available=1000))
    integration = await live_integration(store, "shopify", fake.shopify("slow"))
    cycle = Pipeline(store, receiver, clock)
    cycle.cfg = config(webhook={"url": receiver.url}, polling={"interval": "1s"})
    with capture_logs() as logs:
        await cycle.run()
    resume = await store.pool.fetchval("SELECT resume FROM cartd.sources")
    sent = cycle.delivered_ids(integration)
    assert 0 < len(sent) < 200 and resume["after_id"] == max(map(int, sent))
    assert any(e["event"] == "store_read_continues_next_cycle" for e in logs)
    first_cycle = len(shop.requests)
    clock.advance(seconds=30)
    await cycles_until(cycle, integration, 200, limit=30)
    assert sorted(map(int, cycle.delivered_ids(integration))) == list(range(1, 201))
    assert shop.accounting.throttled == 0
    window = shop.requests[0]["json"]["variables"]["query"]
    resumed = shop.requests[first_cycle]["json"]["variables"]["query"]
    assert resumed == f"{window} AND id:>{resume['after_id']}"  # the same window, further on


async def test_a_connection_is_left_before_its_object_limit_and_the_window_goes_on(
        store, fake: FakeStore, receiver, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(shopify_live, "CONNECTION_LIMIT", 100)
    shop = fake.add("deep", big_store(clock.now, 200), page_size=250, connection_limit=100,
                    bucket=Bucket(restore_rate=200_000))
    integration = await live_integration(store, "shopify", fake.shopify("deep"))
    cycle = Pipeline(store, receiver, clock)
    summary = await cycle.run()
    assert summary.integration_errors == 0
    assert sorted(map(int, cycle.delivered_ids(integration))) == list(range(1, 201))
    starts = [r["json"]["variables"] for r in shop.requests
              if "query" in r["json"]["variables"] and r["json"]["variables"]["after"] is None]
    # Two pages of 35 a connection (a third would pass 100 objects): 70, 140, 200.
    assert len(starts) == 3 and all("AND id:>" in v["query"] for v in starts[1:])


async def test_nulls_the_schema_allows_are_delivered_not_skipped(store, fake: FakeStore, receiver):
    clock = Clock()
    carts = big_store(clock.now, 3)
    carts[0].customer = False
    carts[1].lines = [(None, 1, "4.00"), ("Mug", 2, "3.00")]
    carts[2].bare_lines = True
    fake.add("nulls", carts)
    # An app without protected customer data approval: customers null, and an error.
    fake.add("unapproved", big_store(clock.now, 2, first=10), customer_data=False)
    integration = await live_integration(store, "shopify", fake.shopify("nulls"))
    unapproved = await live_integration(store, "shopify", fake.shopify("unapproved"))
    cycle = Pipeline(store, receiver, clock)
    cycle.cfg = config(webhook={"url": receiver.url}, carts={"require_contact": False})
    summary = await cycle.run()
    assert summary.integration_errors == 0
    assert sorted(cycle.delivered_ids(unapproved)) == ["10", "11"]
    sent = {c["cart_id"]: c for iid, c in cycle.carts() if iid == str(integration)}
    assert sent["1"]["customer"] == {"id": None, "email": None, "first_name": None,
                                     "last_name": None, "phone": None, "accepts_marketing": False}
    assert [i["title"] for i in sent["2"]["items"]] == ["SKU-1", "Mug"]
    assert sent["3"]["items"][0] | {"title": None} == {
        "product_id": None, "variant_id": None, "sku": None, "title": None, "quantity": 1,
        "unit_price": Decimal("3.25"), "line_total": Decimal("3.25")}


async def test_client_credentials_are_granted_renewed_after_a_401_and_never_shown(
        store, fake: FakeStore, receiver):
    clock = Clock()
    shop = fake.add("app", big_store(clock.now, 4))
    integration = await live_integration(store, "shopify", fake.shopify_client("app"))
    fake.add("refused", big_store(clock.now, 2, first=100))
    await live_integration(store, "shopify", fake.shopify_client("refused", secret="shpss_wrong"))
    cycle = Pipeline(store, receiver, clock)
    with capture_logs() as logs:
        summary = await cycle.run()
        assert summary.integration_errors == 1 and len(shop.issued) == 1
        shop.granted.clear()  # the store revoked the token: the next request gets a 401
        clock.advance(minutes=5)
        shop.carts += big_store(clock.now, 2, first=50, idle=timedelta(minutes=61))
        summary = await cycle.run()
    assert summary.integration_errors == 1 and len(shop.issued) == 2
    assert sorted(map(int, cycle.delivered_ids(integration))) == [1, 2, 3, 4, 50, 51]
    grant = shop.requests[0]
    assert grant["path"] == "/app/admin/oauth/access_token" and grant["form"] == {
        "grant_type": "client_credentials", "client_id": "fake_client_id_0123",
        "client_secret": CLIENT_SECRET}
    failures = [e for e in logs if e["event"] == "integration_failed"]
    assert {e["error"] for e in failures} == {
        "client credentials grant failed: HTTP 401 from 127.0.0.1: unauthorized, check the "
        "credentials: invalid_client: Client authentication failed"}
    text = json.dumps(logs, default=str)
    for secret in (CLIENT_SECRET, "shpss_wrong", *shop.issued):
        assert secret not in text
