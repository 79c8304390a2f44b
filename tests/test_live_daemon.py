"""`cartd run` as a real subprocess polling live stores on the fake-store server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fakestore import CLIENT_SECRET, CONSUMER_SECRET, CUSTOM_TOKEN, TOKEN, fake_store, make_carts
from harness import Scripted, add_agents, bodies, cartd_run, scripted_receiver, wait_until

FAST = {"polling": {"interval": "1s"}}


def received(receiver: Scripted, event: str) -> list[tuple[str, str, Decimal]]:
    """(platform, cart id, total value) of every cart received in an `event` webhook."""
    return [(b["integration"]["platform"], c["cart_id"], c["total_value"])
            for _, b in bodies(receiver) if b["type"] == event for c in b["abandoned_carts"]]


async def test_the_daemon_delivers_live_carts_and_their_recovery(store, dsn, tmp_path):
    now = datetime.now(UTC)
    async with fake_store() as fake, scripted_receiver() as receiver:
        shops = {name: fake.add(name, make_carts(4, now, first=first, fresh=1, completed=1))
                 for name, first in (("g", 100), ("r", 200), ("w", 300), ("c", 400))}
        for platform, settings in (("shopify", fake.shopify("g")),
                                   ("shopify", fake.shopify("r", api="rest")),
                                   ("woocommerce", fake.woocommerce("w")),
                                   ("custom", fake.custom("c"))):
            await add_agents(store, 1, platforms=(platform,), integration_config=settings)
        async with cartd_run(tmp_path, dsn, receiver.url, **FAST) as d:
            await d.start()
            await wait_until(lambda: len(received(receiver, "abandoned_cart.detected")) >= 16,
                             timeout=30)
            shops["g"].complete(101, datetime.now(UTC))
            shops["w"].complete(302, datetime.now(UTC))
            await wait_until(lambda: len(received(receiver, "abandoned_cart.recovered")) >= 2,
                             timeout=30)
            cycles = (await d.status())["cycles"]  # two more cycles: nothing is sent twice
            await d.wait_status(lambda status: status["cycles"] >= cycles + 2)
            assert await d.terminate() == 0
    detected = received(receiver, "abandoned_cart.detected")
    expected = {(platform, f"{'c' if name == 'c' else ''}{cart.number}", cart.value)
                for name, platform in (("g", "shopify"), ("r", "shopify"), ("w", "woocommerce"),
                                       ("c", "custom"))
                for cart in shops[name].carts[:4]}
    assert sorted(detected) == sorted(expected)
    assert sorted(received(receiver, "abandoned_cart.recovered")) == [
        ("shopify", "101", shops["g"].carts[1].value),
        ("woocommerce", "302", shops["w"].carts[2].value),
    ]
    log = d.log.read_text()
    assert "cycle_finished" in log
    for secret in (TOKEN, CONSUMER_SECRET, CUSTOM_TOKEN):
        assert secret not in log


async def test_a_client_credentials_store_keeps_delivering_across_token_expiries(
        store, dsn, tmp_path):
    async with fake_store() as fake, scripted_receiver() as receiver:
        shop = fake.add("app", [], token_seconds=1)
        await add_agents(store, 1, platforms=("shopify",),
                         integration_config=fake.shopify_client("app"))
        async with cartd_run(tmp_path, dsn, receiver.url, **FAST) as d:
            await d.start()
            for round_ in range(4):  # a token lives 1 s: three expire on the way
                # Idle just over an hour, changed after the cursor: abandoned now.
                shop.carts += make_carts(2, datetime.now(UTC) + timedelta(minutes=59),
                                         first=100 + 10 * round_)
                await wait_until(lambda: len(received(receiver, "abandoned_cart.detected"))
                                 >= 2 * (round_ + 1), timeout=20)
                issued = len(shop.issued)
                if round_ < 3:
                    await wait_until(lambda: len(shop.issued) > issued, timeout=10)
            assert await d.terminate() == 0
    assert len(shop.issued) >= 4
    assert sorted(cart for _, cart, _ in received(receiver, "abandoned_cart.detected")) == [
        str(100 + 10 * r + n) for r in range(4) for n in range(2)]
    log = d.log.read_text()
    assert "shopify_token_granted" in log and "integration_failed" not in log
    for secret in (CLIENT_SECRET, *shop.issued):
        assert secret not in log
