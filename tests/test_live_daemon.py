"""`cartd run` as a real subprocess polling live stores on the fake-store server."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import yaml

from fakestore import CLIENT_SECRET, CONSUMER_SECRET, CUSTOM_TOKEN, TOKEN, fake_store, make_carts
from helpers import Scripted, add_agents, scripted_receiver, wait_until
from test_daemon import daemon


def live_config(tmp_path: Path, dsn: str, url: str) -> Path:
    config = tmp_path / "cartd.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "var"), "database": {"dsn": dsn},
        "polling": {"interval": "1s"}, "webhook": {"url": url},
        "control": {"socket": str(tmp_path / "cartd.sock")}, "metrics": {"listen": ""},
        "logging": {"format": "json"}, "shutdown_timeout": "5s",
    }))
    return config


def received(receiver: Scripted, event: str) -> list[tuple[str, str, Decimal]]:
    out = []
    for _, raw in receiver.requests:
        body = json.loads(raw, parse_float=Decimal)
        if body["type"] == event:
            out += [(body["integration"]["platform"], c["cart_id"], c["total_value"])
                    for c in body["abandoned_carts"]]
    return out


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
        async with daemon(live_config(tmp_path, dsn, receiver.url)) as process:
            await wait_until(lambda: len(received(receiver, "abandoned_cart.detected")) >= 16,
                             timeout=30)
            shops["g"].complete(101, datetime.now(UTC))
            shops["w"].complete(302, datetime.now(UTC))
            await wait_until(lambda: len(received(receiver, "abandoned_cart.recovered")) >= 2,
                             timeout=30)
            await asyncio.sleep(2)  # a few more cycles: nothing is sent twice
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10) == 0
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
    log = (tmp_path / "cartd.log").read_text()
    assert "cycle_finished" in log
    for secret in (TOKEN, CONSUMER_SECRET, CUSTOM_TOKEN):
        assert secret not in log


async def test_a_client_credentials_store_keeps_delivering_across_token_expiries(
        store, dsn, tmp_path):
    async with fake_store() as fake, scripted_receiver() as receiver:
        shop = fake.add("app", [], token_seconds=1)
        await add_agents(store, 1, platforms=("shopify",),
                         integration_config=fake.shopify_client("app"))
        async with daemon(live_config(tmp_path, dsn, receiver.url)) as process:
            for round_ in range(4):  # a token lives 1 s: three expire on the way
                # Idle just over an hour, changed after the cursor: abandoned now.
                shop.carts += make_carts(2, datetime.now(UTC) + timedelta(minutes=59),
                                         first=100 + 10 * round_)
                await wait_until(lambda: len(received(receiver, "abandoned_cart.detected"))
                                 >= 2 * (round_ + 1), timeout=20)
                issued = len(shop.issued)
                if round_ < 3:
                    await wait_until(lambda: len(shop.issued) > issued, timeout=10)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10) == 0
    assert len(shop.issued) >= 4
    assert sorted(cart for _, cart, _ in received(receiver, "abandoned_cart.detected")) == [
        str(100 + 10 * r + n) for r in range(4) for n in range(2)]
    log = (tmp_path / "cartd.log").read_text()
    assert "shopify_token_granted" in log and "integration_failed" not in log
    for secret in (CLIENT_SECRET, *shop.issued):
        assert secret not in log
