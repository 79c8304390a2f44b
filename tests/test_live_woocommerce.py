"""WooCommerce live stores on the fake store through whole cycles on a real PostgreSQL:
issue 12's "Done means" 3 (on-hold recoveries; orders that change during a read)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from structlog.testing import capture_logs

from fakestore import CONSUMER_KEY, CONSUMER_SECRET, FakeStore, make_carts
from harness import RECOVERED, Clock, Pipeline, live_integration


async def test_an_order_put_on_hold_after_its_cart_was_delivered_is_one_recovery(
        store, fake: FakeStore, receiver):
    clock = Clock()
    shop = fake.add("woo", make_carts(3, clock.now, first=500))
    integration = await live_integration(store, "woocommerce", fake.woocommerce("woo"))
    cycle = Pipeline(store, receiver, clock)
    await cycle.run()
    assert sorted(cycle.delivered_ids(integration)) == ["500", "501", "502"]

    clock.advance(minutes=20)
    shop.complete(501, clock.now, status="on-hold")  # paid by bank transfer: not yet paid
    for _ in range(3):
        clock.advance(minutes=30)
        await cycle.run()
    recovered = [c for iid, c in cycle.carts(RECOVERED) if iid == str(integration)]
    assert [c["cart_id"] for c in recovered] == ["501"]
    assert recovered[0]["order_id"] == "501"
    assert sorted(cycle.delivered_ids(integration)) == ["500", "501", "502"]
    assert "on-hold" in shop.statuses_seen[-1].split(",")


async def test_orders_changed_between_pages_are_each_delivered_once(store, fake: FakeStore, receiver):
    clock = Clock()
    shop = fake.add("busy", make_carts(12, clock.now, first=600), page_size=3)
    # The oldest change first: 611 (idle 2 h 11 min) ... 600 (2 h).
    oldest_first = [c.number for c in sorted(shop.carts, key=lambda c: c.updated)]

    def change_orders(page: int) -> None:
        """After the first page: one order already read and one not yet read change."""
        if page == 1 and len(shop.requests) == 1:
            for number in (oldest_first[1], oldest_first[7]):
                shop.cart(number).updated = clock.now - timedelta(minutes=65)

    shop.on_page = change_orders
    integration = await live_integration(store, "woocommerce", fake.woocommerce("busy"))
    cycle = Pipeline(store, receiver, clock)
    summary = await cycle.run()
    assert summary.integration_errors == 0
    sent = Counter(cycle.delivered_ids(integration))
    assert sorted(sent) == [str(n) for n in range(600, 612)] and set(sent.values()) == {1}
    asked = [r["query"] for r in shop.requests]
    assert {(q["orderby"], q["order"]) for q in asked} == {("modified", "asc")}
    clock.advance(minutes=30)
    again = await cycle.run()
    assert again.carts_new == 0 and len(cycle.delivered_ids(integration)) == 12


async def test_more_orders_of_one_second_than_a_page_are_neither_skipped_nor_repeated(
        store, fake: FakeStore, receiver):
    clock = Clock()
    carts = make_carts(10, clock.now, first=700)
    for cart in carts[2:9]:  # seven orders changed in the same second, pages of three
        cart.updated = clock.now - timedelta(hours=3)
    shop = fake.add("ties", carts, page_size=3)
    integration = await live_integration(store, "woocommerce", fake.woocommerce("ties"))
    cycle = Pipeline(store, receiver, clock)
    await cycle.run()
    assert sorted(cycle.delivered_ids(integration)) == [str(n) for n in range(700, 710)]
    pages = [(r["query"]["modified_after"], r["query"]["page"]) for r in shop.requests]
    assert len(pages) == len(set(pages))  # no request was asked twice


async def test_credentials_can_travel_as_query_parameters_and_stay_out_of_the_logs(
        store, fake: FakeStore, receiver):
    clock = Clock()
    shop = fake.add("stripped", make_carts(2, clock.now, first=800))
    integration = await live_integration(store, "woocommerce",
                                         fake.woocommerce("stripped", auth="query"))
    fake.add("wrong", make_carts(1, clock.now, first=900))
    await live_integration(store, "woocommerce",
                           fake.woocommerce("wrong", secret="cs_wrong_0123456789", auth="query"))
    cycle = Pipeline(store, receiver, clock)
    with capture_logs() as logs:
        summary = await cycle.run()
    assert summary.integration_errors == 1
    assert sorted(cycle.delivered_ids(integration)) == ["800", "801"]
    sent = shop.requests[0]
    assert "Authorization" not in sent["headers"]
    assert (sent["query"]["consumer_key"], sent["query"]["consumer_secret"]) == (
        CONSUMER_KEY, CONSUMER_SECRET)
    text = json.dumps(logs, default=str)
    assert "woocommerce_rest_cannot_view" in text
    assert CONSUMER_SECRET not in text and "cs_wrong_0123456789" not in text
